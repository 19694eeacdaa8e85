"""ONNX quantization with ONNX Runtime's own tools: quant_pre_process, quantize_static (QDQ),
quantize_dynamic, and the float16 converter."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Iterable

import onnx

from edgekit.errors import ConversionError
from edgekit.targets import QuantSpec


def host_has_vnni() -> bool:
    """x86 VNNI decides whether ORT's u8s8 kernels can saturate (see reduce_range)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve_reduce_range(setting: str) -> tuple[bool, str]:
    if setting in ("true", "false"):
        return setting == "true", "set by the target"
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686") and not host_has_vnni():
        return True, ("auto: this x86 host has no VNNI, where ONNX Runtime's u8s8 kernels saturate "
                      "with 8-bit per-channel weights; 7-bit weights avoid it")
    return False, "auto: 8-bit weights (host has VNNI or is not x86)"


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol: get_next() until None."""

    def __init__(self, samples: Iterable[dict]):
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def _preprocess(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation, not a requirement
        onnx.save(onnx.load(str(src)), str(dst))


def quantize(src: Path, dst: Path, q: QuantSpec, samples: Iterable[dict] | None, work: Path) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    try:
        if q.mode == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
            return {"tool": "onnxruntime.transformers.float16", "keep_io_types": True}
        pre = work / "preprocessed.onnx"
        _preprocess(src, pre)
        reduce_range, why = resolve_reduce_range(q.reduce_range)
        if q.mode == "dynamic":
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=q.per_channel, reduce_range=reduce_range,
                             op_types_to_quantize=list(q.op_types) or None)
            return {"tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "int8", "op_types": list(q.op_types) or "all",
                    "per_channel": q.per_channel, "reduce_range": reduce_range, "reduce_range_reason": why}
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
        act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "uint16": QuantType.QUInt16, "int16": QuantType.QInt16}[q.activation_type]
        extra = {"CalibTensorRangeSymmetric": False}
        if q.activation_bits == 16 or q.activation_type.endswith("16"):
            extra["UseQDQContribOps"] = True
        quantize_static(str(pre), str(dst), _Reader(samples or []), quant_format=QuantFormat.QDQ,
                        per_channel=q.per_channel, reduce_range=reduce_range, activation_type=act,
                        weight_type=QuantType.QInt8, calibrate_method=methods[q.calib_method], extra_options=extra,
                        op_types_to_quantize=list(q.op_types) or None)
        return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": q.per_channel,
                "op_types": list(q.op_types) or "all",
                "activation_type": q.activation_type, "weight_type": "int8", "calib_method": q.calib_method,
                "reduce_range": reduce_range, "reduce_range_reason": why}
    except ConversionError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:240]
        raise ConversionError(f"ONNX Runtime quantization failed: {type(exc).__name__}: {first}", "run with --debug for the log") from exc
