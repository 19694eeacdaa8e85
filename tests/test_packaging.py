"""The wheel carries what an installed edgekit needs: targets, calibration specs, bundled weights."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_targets_specs_and_weights(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    (whl,) = tmp_path.glob("edgekit-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for t in (ROOT / "targets").glob("*.toml"):
        assert f"edgekit/_targets/{t.name}" in names
    for c in (ROOT / "calibration").glob("*.toml"):
        assert f"edgekit/_calibration/{c.name}" in names
    assert "edgekit/examples/digits_cnn.pt" in names
    assert "edgekit/runtime/__init__.py" in names and "edgekit/runtime/backends.py" in names
