"""Parse the output of TFLite's benchmark_model (older and newer formats).

Older:  `Average inference timings in us: Warmup: 146161, Init: 4452, no stats: 137722`
        (or `..., Inference: 79760.9`)
Newer:  `Inference timings in us: Init: 17187, First inference: 3512391, Warmup (avg): 3.51239e+06,
        Inference (avg): 2.95034e+06`
        `Peak memory footprint (MB): init=4.92969 overall=138.809`
        (older builds: `Memory footprint delta from the start of the tool (MB): init=... overall=...`)
Both:   `count=50 first=... curr=... min=... max=... avg=... std=... [p5=... median=... p95=...]`
        lines, the last being the timed runs.
Lines may carry prefixes (`INFO: `, logcat's `I tflite  : `, timestamps): they are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgekit.errors import DeviceError

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_NEW = re.compile(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, Warmup \(avg\): {_NUM}, Inference \(avg\): {_NUM}")
_OLD = re.compile(rf"Average inference timings in us: Warmup: {_NUM}, Init: {_NUM}, (?:no stats|Inference): {_NUM}")
_COUNT = re.compile(rf"count=(\d+)(?: first={_NUM})? curr={_NUM}(?: min={_NUM})?(?: max={_NUM})?(?: avg={_NUM})?(?: std={_NUM})?"
                    rf"(?: p5={_NUM})?(?: median={_NUM})?(?: p95={_NUM})?")
_PEAK = re.compile(rf"(?:Peak memory footprint|Memory footprint delta from the start of the tool) \(MB\): init={_NUM} overall={_NUM}")
_PEAK_MON = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}")


@dataclass
class BenchmarkModelResult:
    format: str  # "new" | "old"
    init_ms: float
    first_ms: float | None
    warmup_avg_ms: float | None
    avg_ms: float
    runs: int | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    std_ms: float | None = None
    median_ms: float | None = None
    p5_ms: float | None = None
    p95_ms: float | None = None
    peak_mem_mb: float | None = None
    init_mem_mb: float | None = None
    extra: dict = field(default_factory=dict)


def _ms(us: str | None) -> float | None:
    return None if us is None else float(us) / 1000.0


def parse(text: str) -> BenchmarkModelResult:
    """Raises DeviceError naming what is missing when the output has no timing summary."""
    new, old = _NEW.search(text), _OLD.search(text)
    if new:
        res = BenchmarkModelResult("new", _ms(new[1]), _ms(new[2]), _ms(new[3]), _ms(new[4]))
    elif old:
        res = BenchmarkModelResult("old", _ms(old[2]), None, _ms(old[1]), _ms(old[3]))
    else:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        raise DeviceError(f"benchmark_model printed no timing summary; last line: {tail[0][:200]}",
                          "check the binary matches the device (arm64 vs arm) and the model runs there")
    counts = list(_COUNT.finditer(text))
    if counts:
        c = counts[-1]  # the timed runs come after the warm-up line
        res.runs = int(c[1])
        res.min_ms, res.max_ms, res.std_ms = _ms(c[4]), _ms(c[5]), _ms(c[7])
        res.p5_ms, res.median_ms, res.p95_ms = _ms(c[8]), _ms(c[9]), _ms(c[10])
    mem = list(_PEAK.finditer(text))
    if mem:
        res.init_mem_mb, res.peak_mem_mb = float(mem[-1][1]), float(mem[-1][2])
    mon = _PEAK_MON.search(text)
    if mon:
        res.peak_mem_mb = float(mon[1])
    return res
