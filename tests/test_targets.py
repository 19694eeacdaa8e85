import pytest

from edgekit.errors import TargetError
from edgekit.targets import list_targets, load_target

REQUIRED = ["onnx-fp32", "onnx-fp16", "onnx-dynamic", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8"]


def test_catalogue_has_every_required_target():
    names = {t.name for t in list_targets()}
    assert set(REQUIRED) <= names


def test_int8_targets_are_static_per_channel_with_calibration():
    for name in ("onnx-int8", "tflite-int8"):
        t = load_target(name)
        assert t.quant.mode == "static" and t.quant.per_channel and t.quant.needs_calibration
    assert load_target("tflite-int8").io_dtype == "int8"


def test_typo_suggests_the_closest_name():
    with pytest.raises(TargetError, match="did you mean 'tflite-int8'"):
        load_target("tflite-in8")


def test_user_target_file_in_working_directory(in_tmp):
    (in_tmp / "targets").mkdir()
    (in_tmp / "targets" / "my-int8.toml").write_text(
        'format = "onnx"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "ort"\ncalib_method = "minmax"\n')
    t = load_target("my-int8")
    assert t.format == "onnx" and t.quant.calib_method == "minmax"
    assert "my-int8" in {x.name for x in list_targets()}


@pytest.mark.parametrize("body,match", [
    ('format = "coreml"\nprecision = "fp32"\n', "format"),
    ('format = "onnx"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "aeq"\n', "backend"),
    ('format = "onnx"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "ort"\ncalib_method = "histogram"\n', "calib_method"),
    ('format = "onnx"\nprecision = "fp32"\nspeed = "fast"\n', "unknown field"),
    ('format = "onnx"\nprecision = \n', "TOML"),
])
def test_bad_target_files_name_the_problem(in_tmp, body, match):
    p = in_tmp / "bad.toml"
    p.write_text(body)
    with pytest.raises(TargetError, match=match):
        load_target(str(p))
