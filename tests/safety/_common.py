"""Helpers for the safety tests: running the CLI in-process, building hostile files from real ones."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PAYLOAD = '''
import os
class Payload:
    def __init__(self, marker):
        self.marker = marker
    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))
'''


def cli(*args, env: dict | None = None, cwd=None, timeout: float = 600):
    """Run the real `edgekit ARGS` in a subprocess; returns (exit code, stdout + stderr)."""
    import subprocess

    env = dict(env if env is not None else os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])  # the tree under test
    r = subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


def assert_one_line_error(code: int, out: str, expect_code: int = 2, contains: str | None = None) -> str:
    lines = [ln for ln in out.strip().splitlines() if ln.strip().startswith("error:")]
    assert code == expect_code, (code, out)
    assert "Traceback" not in out and "internal error" not in out, out
    assert len(lines) == 1, out
    if contains is not None:
        assert contains in lines[0], lines[0]
    return lines[0]


def one_line_error(proc, *needles: str) -> str:
    """A CompletedProcess that failed with exit 2 and exactly one `error:` line on stderr holding every needle."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and "internal error" not in lines[0], proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def evil_pt2(clean: Path, marker: Path, member: str = "sample_inputs") -> Path:
    """A copy of the real torch.export archive `clean` whose pickled `member` runs `touch MARKER` when
    unpickled by anything but torch.load(weights_only=True)."""
    import torch

    ns: dict = {}
    exec(PAYLOAD, ns)  # a class defined outside any importable module, as an attacker's would be
    payload = ns["Payload"](str(marker))
    buf = io.BytesIO()
    torch.save(((payload,), {}), buf)
    out = clean.with_name(clean.stem + f"-evil-{member}.pt2")
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(out, "w") as zout:
        hit = False
        for info in zin.infolist():
            data = zin.read(info.filename)
            if f"/{member}/" in info.filename and info.filename.endswith(".pt"):
                data, hit = buf.getvalue(), True
            zout.writestr(info, data)
    assert hit, f"{clean} has no {member} member"
    return out


def copy_artifact(src: Path, dst: Path, **changes) -> Path:
    """Copy an artifact folder and change top-level manifest fields (a user 'receiving' it)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for k, v in changes.items():
        m[k] = v
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def python() -> str:
    return sys.executable


def env_with(**extra) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env
