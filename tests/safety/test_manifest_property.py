"""Every reader of an artifact folder, fed random and mutated manifests: it succeeds or raises one
EdgekitError line; it never fails another way, and never opens a file outside the folder (issue 9,
classes 5 and 9)."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VICTIM = "victim-outside"
_OPENED: list[str] = []
_WATCH = [False]


def _audit(event, args):
    if _WATCH[0] and event == "open" and args and VICTIM in str(args[0]):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one only records while _WATCH is on

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                      st.sampled_from([f"../{VICTIM}/model.tflite", f"/tmp/{VICTIM}/model.tflite", "model.tflite", "..", ".",
                                       "model.onnx", "x/../model.tflite", "", "int8", "NCHW", "NHWC", "float32", "int64"]))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), kids, max_size=4)), max_leaves=12)

PATHS = [("file",), ("format",), ("inputs",), ("outputs",), ("inputs", 0), ("outputs", 0), ("inputs", 0, "shape"),
         ("inputs", 0, "shape", 0), ("inputs", 0, "dtype"), ("inputs", 0, "layout"), ("inputs", 0, "source_shape"),
         ("inputs", 0, "quantization"), ("inputs", 0, "quantization", "scale"), ("inputs", 0, "quantization", "zero_point"),
         ("outputs", 0, "shape"), ("outputs", 0, "quantization", "scale"), ("outputs", 0, "dtype"), ("target",),
         ("target", "name"), ("target", "quant"), ("target", "format"), ("model",), ("model", "name"), ("model", "source"),
         ("validation",), ("validation", "status"), ("size_bytes",), ("sha256",), ("schema",), ("calibration",), ("warnings",)]


def _set(doc, path, value):
    cur = doc
    for k in path[:-1]:
        if isinstance(cur, dict) and k in cur:
            cur = cur[k]
        elif isinstance(cur, list) and isinstance(k, int) and k < len(cur):
            cur = cur[k]
        else:
            return doc
    if isinstance(cur, dict):
        cur[path[-1]] = value
    elif isinstance(cur, list) and isinstance(path[-1], int) and path[-1] < len(cur):
        cur[path[-1]] = value
    return doc


def _delete(doc, path):
    cur = doc
    for k in path[:-1]:
        if isinstance(cur, (dict, list)) and (k in cur if isinstance(cur, dict) else isinstance(k, int) and k < len(cur)):
            cur = cur[k]
        else:
            return doc
    if isinstance(cur, dict):
        cur.pop(path[-1], None)
    return doc


mutation = st.one_of(st.tuples(st.just("set"), st.sampled_from(PATHS), json_value),
                     st.tuples(st.just("del"), st.sampled_from(PATHS), st.none()))
document = st.one_of(st.tuples(st.just("whole"), json_value), st.tuples(st.just("mutate"), st.lists(mutation, min_size=1, max_size=4)))


@pytest.fixture(scope="module")
def world(digits_int8, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    art = root / "art"
    shutil.copytree(digits_int8, art)
    victim = root / VICTIM
    victim.mkdir()
    shutil.copy(art / "model.tflite", victim / "model.tflite")
    base = json.loads((art / "manifest.json").read_text())
    return art, base


def _readers(art: Path):
    from edgekit import runtime
    from edgekit.artifact import check_artifact
    from edgekit.measure import _artifact_files
    from edgekit.report import collect
    from edgekit.targets import load_target

    return {"runtime.load": lambda: runtime.load(art), "check_artifact": lambda: check_artifact(art),
            "bench files": lambda: _artifact_files(art), "target from artifact": lambda: load_target(str(art)),
            "report": lambda: collect([art])}


@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=document)
def test_every_manifest_reader_fails_in_one_line_or_succeeds(world, doc):
    from edgekit.errors import EdgekitError

    art, base = world
    kind, payload = doc
    if kind == "whole":
        data = payload
    else:
        data = copy.deepcopy(base)
        for op, path, value in payload:
            data = _set(data, path, value) if op == "set" else _delete(data, path)
    (art / "manifest.json").write_text(json.dumps(data, allow_nan=True))
    _OPENED.clear()
    for name, read in _readers(art).items():
        _WATCH[0] = True
        try:
            read()
        except EdgekitError as exc:
            assert "\n" not in str(exc), (name, str(exc))
        except Exception as exc:  # noqa: BLE001 - exactly what must not happen
            pytest.fail(f"{name}: {type(exc).__name__}: {exc} on manifest {json.dumps(data)[:400]}")
        finally:
            _WATCH[0] = False
        assert not _OPENED, f"{name} opened {_OPENED} outside the artifact folder"


def test_the_unchanged_manifest_reads(world):
    art, base = world
    (art / "manifest.json").write_text(json.dumps(base))
    for name, read in _readers(art).items():
        read()
