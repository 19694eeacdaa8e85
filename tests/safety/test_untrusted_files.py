"""Received files are data: a model file, an artifact folder or a manifest never runs code or opens
files outside its folder unless the user says so (issue 9, classes 1, 2 and 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _common import assert_one_line_error, cli, copy_artifact, evil_pt2

NET_PY = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

build.example_input_shape = (1, 1, 8, 8)
'''


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    """A real torch.export archive, saved the ordinary way."""
    import importlib.util

    root = tmp_path_factory.mktemp("pt2")
    (root / "net.py").write_text(NET_PY)
    spec = importlib.util.spec_from_file_location("_safety_net", root / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.build().eval()
    path = root / "net.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 1, 8, 8),)), str(path))
    return path


# ---------------------------------------------------------------------------- class 1: .pt2 payloads

def test_clean_pt2_still_converts(clean_pt2, tmp_path):
    code, out = cli("convert", clean_pt2, "--target", "onnx-fp32", "--out", tmp_path / "a")
    assert code == 0, out
    assert (tmp_path / "a" / "model.onnx").is_file()


@pytest.mark.parametrize("entry", ["convert", "eval-reference", "diagnose-model", "prune"])
def test_pt2_payload_never_runs_without_trust(clean_pt2, tmp_path, digits_int8, entry):
    marker = tmp_path / "pwned"
    evil = evil_pt2(clean_pt2, marker)
    if entry == "convert":
        code, out = cli("convert", evil, "--target", "onnx-fp32", "--out", tmp_path / "a")
    elif entry == "eval-reference":
        code, out = cli("eval", digits_int8, "--data", "digits", "--reference", evil)
    elif entry == "diagnose-model":
        code, out = cli("diagnose", digits_int8, "--model", evil, "--samples", "4")
    else:
        np.savez(tmp_path / "train.npz", x=np.random.default_rng(0).random((16, 1, 8, 8), np.float32), y=np.arange(16) % 10)
        code, out = cli("prune", evil, "--data", tmp_path / "train.npz", "--unstructured", "0.5", "--finetune-epochs", "0", "--out", tmp_path / "p.pt2")
    assert not marker.exists(), f"{entry}: the .pt2's pickled payload ran"
    assert_one_line_error(code, out, 2, "--trust-pickle")


def test_trust_pickle_is_what_allows_pickled_code(clean_pt2, tmp_path):
    """--trust-pickle means exactly this: the file's pickled objects are loaded as torch.export would."""
    from edgekit.sources import load_model

    marker = tmp_path / "ran"
    evil = evil_pt2(clean_pt2, marker)
    try:
        load_model(str(evil), trust_pickle=True)
    except Exception:  # noqa: BLE001 - the payload's return value is not a valid sample input
        pass
    assert marker.exists()


# ---------------------------------------------------------------------------- class 2: diagnose imports

def test_diagnose_never_imports_the_manifests_model(digits_int8, tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nimport torch\nbuild = lambda: torch.nn.Identity()\n")
    m = json.loads((digits_int8 / "manifest.json").read_text())
    art = copy_artifact(digits_int8, tmp_path / "received", model={**m["model"], "source": f"{tmp_path / 'evil.py'}:build"})
    code, out = cli("diagnose", art, "--samples", "4")
    assert not marker.exists(), "diagnose imported the .py named in a received manifest"
    assert_one_line_error(code, out, 2, "--model")


def test_diagnose_of_the_bundled_example_needs_no_model(digits_int8):
    code, out = cli("diagnose", digits_int8, "--samples", "8")
    assert code == 0, out


# ---------------------------------------------------------------------------- class 5: names escape

def test_target_name_with_path_segments_is_refused(tmp_path):
    (tmp_path / "evil.toml").write_text('name = "x/../../../victim"\nformat = "onnx"\nprecision = "fp32"\n')
    code, out = cli("convert", "--target", "evil.toml", "--out-dir", tmp_path / "deep" / "out", cwd=tmp_path)
    assert_one_line_error(code, out, 2, "not a plain name")
    assert not any(p.name.endswith("victim") for p in tmp_path.rglob("*"))


def test_artifact_as_target_with_escaping_name_is_refused(digits_int8, tmp_path):
    m = json.loads((digits_int8 / "manifest.json").read_text())
    art = copy_artifact(digits_int8, tmp_path / "received", target={**m["target"], "name": "../../victim"})
    code, out = cli("convert", "--target", art, "--out-dir", tmp_path / "deep" / "out", cwd=tmp_path)
    assert_one_line_error(code, out, 2)
    assert not any(p.name.endswith("victim") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_manifest_file_outside_the_folder_is_never_opened(digits_int8, tmp_path, where):
    """A manifest whose `file` points elsewhere must not get another model loaded, scored or pushed under its name."""
    from edgekit import runtime
    from edgekit.errors import ArtifactError

    outside = tmp_path / "other"
    outside.mkdir()
    shutil.copy(digits_int8 / "model.tflite", outside / "model.tflite")
    ref = "../other/model.tflite" if where == "relative" else str(outside / "model.tflite")
    art = copy_artifact(digits_int8, tmp_path / "received", file=ref)
    (art / "model.tflite").unlink()
    with pytest.raises(ArtifactError):
        runtime.load(art)
    assert_one_line_error(*cli("bench", art, "--device", "local", "--runs", "2", "--warmup", "0"), 2, "file")
    assert_one_line_error(*cli("eval", art, "--data", "digits"), 2, "file")


def test_model_file_that_is_a_link_out_is_refused(digits_int8, tmp_path):
    from edgekit import runtime
    from edgekit.errors import ArtifactError

    shutil.copy(digits_int8 / "model.tflite", tmp_path / "elsewhere.tflite")
    art = copy_artifact(digits_int8, tmp_path / "received")
    (art / "model.tflite").unlink()
    (art / "model.tflite").symlink_to(tmp_path / "elsewhere.tflite")
    with pytest.raises(ArtifactError, match="link"):
        runtime.load(art)
