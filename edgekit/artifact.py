"""The artifact: a folder holding the model file and manifest.json (plus the quantizer recipe
and the tools' log). Written atomically: everything lands in a hidden staging folder beside
the destination, which is renamed into place only when complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import ArtifactError, UsageError
from edgekit.runtime import MANIFEST, read_manifest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Artifact:
    path: Path
    manifest: dict

    @classmethod
    def load(cls, folder: str | Path) -> "Artifact":
        return cls(Path(folder), read_manifest(folder))

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["file"]

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def size_bytes(self) -> int:
        return int(self.manifest["size_bytes"])

    @property
    def validation(self) -> dict:
        return self.manifest.get("validation") or {}

    def load_runtime(self, num_threads: int | None = None):
        from edgekit import runtime

        return runtime.load(self.path, num_threads)

    def to_json(self) -> dict:
        return {"path": str(self.path), **self.manifest}


class Staging:
    """A hidden folder beside `dest`; commit() swaps it into place, abort() removes it."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        self.path = self._make(self.dest)

    @staticmethod
    def _make(dest: Path) -> Path:
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"output path {dest} exists and is a file", "choose a folder path for --out")
        if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
            raise UsageError(f"output folder {dest} exists and is not an edgekit artifact", "choose a new or empty folder for --out")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
        except OSError as exc:
            raise UsageError(f"cannot write to {dest.parent}: {exc.strerror or exc}", "choose a writable folder for --out") from None

    @classmethod
    def check(cls, dest: Path) -> None:
        """Fail now, before any conversion, if `dest` could not be written."""
        shutil.rmtree(cls._make(Path(dest)), ignore_errors=True)

    def commit(self) -> Path:
        old = None
        if self.dest.exists():
            old = self.dest.parent / f".{self.dest.name}.old-{os.getpid()}"
            os.replace(self.dest, old)
        os.replace(self.path, self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.dest

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def check_artifact(folder: str | Path) -> Artifact:
    art = Artifact.load(folder)
    if not art.model_path.is_file():
        raise ArtifactError(f"{folder} is missing {art.manifest['file']}", "re-run edgekit convert")
    return art
