"""Issue 9, class 9 (report and output paths): bad input is one line and exit 2, never an internal error.

- A malformed `edgekit bench/eval --json` file given to `edgekit report` (wrong types, missing keys, a list where an
  object belongs, not UTF-8, huge numbers, NaN, absurd nesting or names) is refused naming the file as given.
- Every command's --json (and report's --html, --markdown, and its default report.html) that is a folder or cannot
  be written is refused before any work starts."""

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from _common import one_line_error
from conftest import run_cli

import edgekit

SRC = str(Path(edgekit.__file__).resolve().parents[1])  # the subprocess runs the edgekit this test imported


def cli(*args, cwd):
    return run_cli(*args, cwd=cwd, env={"PYTHONPATH": SRC})


def _bench(doc, **change) -> bytes:
    (one,) = doc["results"]
    item = {**one, **change}
    for k in [k for k, v in change.items() if v is _DROP]:
        del item[k]
    return json.dumps({**doc, "results": [item]}).encode()


def _with_stats(doc, **change) -> bytes:
    (one,) = doc["results"]
    return _bench(doc, stats={**one["stats"], **change})


_DROP = object()
_EVAL = {"command": "eval", "artifact": "gone", "target": "t", "device": "local", "data": "digits", "samples": 10}

CASES = {
    "stats-p50-is-text": (lambda d: _with_stats(d, p50_ms="fast"), "stats.p50_ms"),
    "samples-hold-text": (lambda d: _bench(d, samples_ms=[0.1, "x"]), "samples_ms[1]"),
    "device-is-a-list": (lambda d: _bench(d, device=["local"]), "device"),
    "size-is-huge": (lambda d: _bench(d, size_bytes=10**400), "size_bytes"),
    "integer-of-5000-digits": (lambda d: _bench(d).replace(b'"size_bytes": ', b'"size_bytes": ' + b"9" * 5000 + b", \"x\": "), "not valid JSON"),
    "p50-is-NaN": (lambda d: _with_stats(d, p50_ms=float("nan")), "stats.p50_ms"),
    "p90-is-Infinity": (lambda d: _with_stats(d, p90_ms=float("inf")), "stats.p90_ms"),
    "samples-hold-NaN": (lambda d: _bench(d, samples_ms=[0.1, float("nan")]), "samples_ms[1]"),
    "eval-without-metrics": (lambda d: json.dumps(_EVAL).encode(), "metrics"),
    "eval-metrics-is-a-list": (lambda d: json.dumps({**_EVAL, "metrics": [0.9]}).encode(), "metrics"),
    "eval-top1-is-text": (lambda d: json.dumps({**_EVAL, "metrics": {"top1": "90%"}}).encode(), "metrics.top1"),
    "eval-samples-is-text": (lambda d: json.dumps({**_EVAL, "samples": "ten", "metrics": {"top1": 0.9}}).encode(), "samples"),
    "artifact-name-too-long-for-a-path": (lambda d: _bench(d, artifact="a" * 5000), None),
    "target-is-a-lone-surrogate": (lambda d: _bench(d, target="\ud800"), "target"),
    "nested-too-deeply": (lambda d: b"[" * 100_000 + b"]" * 100_000, "nested"),
    "not-utf8": (lambda d: _bench(d).replace(b'"local"', b'"l\xe9cal"'), "UTF-8"),
    "truncated": (lambda d: _bench(d)[:200], "not valid JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_result_is_one_line_and_exit_2(bench_doc, in_tmp, case):
    make, field = CASES[case]
    (in_tmp / "in dir").mkdir()
    (in_tmp / "in dir" / "bench.json").write_bytes(make(bench_doc))
    r = cli("report", "./in dir/bench.json", "--markdown", "r.md", "--json", "r.json", cwd=in_tmp)
    if case == "artifact-name-too-long-for-a-path":  # not an error: a name that is no path here is shown from the results
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return
    one_line_error(r, "./in dir/bench.json", *([field] if field else []))  # the path as the user wrote it, and what is wrong
    assert not (in_tmp / "r.md").exists() and not (in_tmp / "r.json").exists()


def test_a_folder_of_results_names_the_bad_file_by_the_path_given(bench_doc, in_tmp):
    (in_tmp / "runs").mkdir()
    (in_tmp / "runs" / "b.json").write_bytes(_with_stats(bench_doc, p99_ms=True))
    one_line_error(cli("report", "./runs/", "--markdown", "r.md", cwd=in_tmp), "./runs/b.json", "stats.p99_ms")


# ---------------------------------------------------------------- output paths, checked before any work

DIR = "results dir"  # an existing folder given where a file belongs

EVERY_COMMAND = {  # arguments that would otherwise fail at once (so the old code, which checks late, is quick too)
    "convert": ["convert", "missing.pt"],
    "targets": ["targets"],
    "bench": ["bench", "missing-artifact"],
    "eval": ["eval", "missing-artifact", "--data", "digits"],
    "diagnose": ["diagnose", "missing-artifact"],
    "devices": ["devices", "--no-probe"],
    "doctor": ["doctor"],
    "report": ["report", "missing"],
    "qat": ["qat", "missing.pt", "--data", "digits", "--out", "o.pt2"],
    "prune": ["prune", "missing.pt", "--data", "digits", "--structured", "0.5", "--out", "o.pt2"],
    "distill": ["distill", "--teacher", "missing.pt", "--data", "digits", "--out", "o.pt2"],
    "lowrank": ["lowrank", "missing.pt", "--data", "digits", "--out", "o.pt2"],
}


@pytest.mark.parametrize("command", list(EVERY_COMMAND))
def test_every_json_output_that_is_a_folder_is_refused_first(in_tmp, command):
    (in_tmp / DIR).mkdir()
    one_line_error(cli(*EVERY_COMMAND[command], "--json", DIR, cwd=in_tmp), f"--json {DIR}: is a folder")
    assert [p.name for p in in_tmp.iterdir()] == [DIR] and not any((in_tmp / DIR).iterdir())


@pytest.mark.parametrize("option", ["--html", "--markdown"])
def test_report_pages_that_are_folders_are_refused_first(bench_doc, in_tmp, option):
    (in_tmp / DIR).mkdir()
    (in_tmp / "bench.json").write_bytes(_bench(bench_doc))
    r = cli("report", "bench.json", option, DIR, cwd=in_tmp)
    one_line_error(r, option, DIR)
    assert r.stdout == ""  # refused before the report was made


def test_convert_refuses_a_json_folder_before_converting(in_tmp):
    (in_tmp / DIR).mkdir()
    t0 = time.monotonic()
    r = cli("convert", "--target", "tflite-int8", "--json", DIR + "/", cwd=in_tmp)
    one_line_error(r, f"--json {DIR}/")
    assert time.monotonic() - t0 < 15 and "export" not in r.stderr and not (in_tmp / "out").exists()


@contextlib.contextmanager
def read_only_folder(path: Path, files: dict[str, bytes]):
    """A tmpfs at `path` holding `files`, then remounted read-only (writes fail even for root); unmounted afterwards."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        for name, data in files.items():
            (path / name).write_bytes(data)
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_unwritable_outputs_are_refused_before_any_work(bench_doc, in_tmp):
    (in_tmp / "afile").write_text("x")
    with read_only_folder(in_tmp / "ro", {"bench.json": _bench(bench_doc)}):
        # a read-only file system: --json of a conversion, report's pages, and report.html by default in the folder given
        r = cli("convert", "--target", "tflite-int8", "--json", "ro/r.json", cwd=in_tmp)
        one_line_error(r, "--json ro/r.json", "Read-only file system")
        assert "export" not in r.stderr and not (in_tmp / "out").exists()
        for args, needle in [(["report", "bench.json", "--markdown", "ro/r.md"], "--markdown ro/r.md"),
                             (["report", "ro"], "ro/report.html")]:
            r = cli(*args, cwd=in_tmp)
            one_line_error(r, needle, "Read-only file system")
            assert r.stdout == ""
        # a folder on the way that is a file
        r = cli("bench", "missing-artifact", "--json", "afile/sub/b.json", cwd=in_tmp)
        one_line_error(r, "--json afile/sub/b.json", "is not a folder")
        r = cli("targets", "--json", "/dev/null", cwd=in_tmp)  # replacing it would put a file where the device was
        one_line_error(r, "--json /dev/null", "not a regular file")
