"""The artifact: a folder holding the model file and manifest.json (plus the quantizer recipe,
the tools' log and edgekit's ownership record). Written atomically: everything lands in a hidden
staging folder beside the destination, which is swapped into place only when complete, and an
existing folder is replaced only if edgekit wrote everything in it."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgekit import __version__
from edgekit._util import HOST, check_terminated, pid_alive
from edgekit.errors import ArtifactError, UsageError
from edgekit.runtime.manifest import MANIFEST, Manifest, model_file, read_manifest


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
    manifest: Manifest

    @classmethod
    def load(cls, folder: str | Path) -> "Artifact":
        return cls(Path(folder), read_manifest(folder))

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.file

    @property
    def target(self) -> str:
        return self.manifest.target_name

    @property
    def size_bytes(self) -> int:
        return self.manifest.size_bytes

    @property
    def validation(self) -> dict:
        return self.manifest.validation.to_dict() if self.manifest.validation else {}

    def load_runtime(self, num_threads: int | None = None):
        from edgekit import runtime

        return runtime.load(self.path, num_threads)

    def to_json(self) -> dict:
        return {"path": str(self.path), **self.manifest.to_dict()}


# ---------------------------------------------------------------------------- owning what we write
#
# edgekit replaces an output folder only when everything in it is listed in the ownership record
# (OWNED) that edgekit wrote last into it; anything else there makes it refuse. Staging folders are
# hidden siblings named with this host and pid and hold a marker, so a later run can tell a dead
# run's leftovers (and only those) and sweep them.

OWNED = ".edgekit-files"
_STAGING_MARK = ".edgekit-staging"
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.edgekit-(?P<kind>staging|old)-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_STEP_HOOK = None  # tests: called with each commit step's name (to kill the process between steps)


def _step(name: str) -> None:
    if _STEP_HOOK is not None:
        _STEP_HOOK(name)


def _staging_prefix(dest: Path) -> str:
    """Hidden, beside dest, named with this host and pid: what sweep_stale recognises."""
    return f".{dest.name}.edgekit-staging-{HOST}-{os.getpid()}-"


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()}


def owned_files(folder: Path) -> set[str] | None:
    """The files edgekit recorded writing into `folder`, or None if it holds no readable record."""
    try:
        record = json.loads((folder / OWNED).read_text())
        files = record["files"]
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            return set(files) | {OWNED}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_owned(folder: Path) -> None:
    files = sorted(_listing(folder) - {OWNED, _STAGING_MARK})
    (folder / OWNED).write_text(json.dumps({"edgekit": __version__, "files": files}, indent=1) + "\n")


def _remove_owned(folder: Path) -> bool:
    """Remove what the record lists (and the record), then the folder if nothing else is left."""
    owned = owned_files(folder) or set()
    for rel in sorted(owned - {OWNED}, key=lambda r: -r.count("/")):
        p = folder / rel
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    (folder / OWNED).unlink(missing_ok=True)
    (folder / _STAGING_MARK).unlink(missing_ok=True)
    try:
        folder.rmdir()
        return True
    except OSError:
        return False


def _renameat2(src: Path, dst: Path, flags: int) -> int:
    """0 on success, else errno. ENOSYS where libc or the kernel lacks renameat2."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return errno.ENOSYS
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return 0
    return ctypes.get_errno()


def sweep_stale(parent: Path) -> list[Path]:
    """Remove staging folders of dead edgekit runs of this host in `parent` (only those that carry our
    marker); put back an old artifact that a run killed mid-swap (two-rename fallback) left aside."""
    swept = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return swept
    for p in entries:
        m = _STAGING_RE.match(p.name)
        if not m or m["host"] != HOST or pid_alive(int(m["pid"])) or p.is_symlink() or not p.is_dir():
            continue
        if m["kind"] == "staging" and (p / _STAGING_MARK).is_file():
            shutil.rmtree(p, ignore_errors=True)
            swept.append(p)
        elif m["kind"] == "staging" and owned_files(p) is not None and _remove_owned(p):
            swept.append(p)  # killed after writing its record, or an old artifact left at our name by an exchange
        elif m["kind"] == "old" and owned_files(p) is not None:
            dest = parent / m["name"]
            if not dest.exists():
                with contextlib.suppress(OSError):
                    os.rename(p, dest)  # the swap died between its renames: the old artifact goes back
            elif _remove_owned(p):
                swept.append(p)
    return swept


class Staging:
    """A hidden folder beside `dest`; commit() swaps it into place atomically, abort() removes it."""

    def __init__(self, dest: Path):
        self.given = str(dest)
        self.dest = self._check(Path(dest))
        sweep_stale(self.dest.parent)
        try:
            self.path = Path(tempfile.mkdtemp(dir=self.dest.parent, prefix=_staging_prefix(self.dest)))
        except OSError as exc:
            raise UsageError(f"cannot write to {self.dest.parent}: {exc.strerror or exc}", "choose a writable folder for --out") from None
        try:  # a signal or error before the marker is written would leave a folder no sweep claims: remove it here
            (self.path / _STAGING_MARK).write_text(f"{os.getpid()}\n")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes 0700; an artifact folder is an ordinary folder
        except BaseException as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            if isinstance(exc, OSError):
                raise UsageError(f"cannot write to {self.dest.parent}: {exc.strerror or exc}", "choose a writable folder for --out") from None
            raise

    @staticmethod
    def _check(dest: Path, given: str | None = None) -> Path:
        """The absolute destination, if edgekit may write there; one UsageError line if not."""
        given = given or str(dest)
        absolute = Path(os.path.abspath(dest))
        cwd = Path(os.getcwd())
        if absolute == cwd or absolute in cwd.parents or absolute == Path.home() or absolute.parent == absolute:
            raise UsageError(f"--out {given} is {'the folder you are in' if absolute == cwd else 'a parent of the folder you are in' if absolute in cwd.parents else 'your home folder' if absolute == Path.home() else 'the root folder'}",
                             "edgekit replaces its output folder as a whole: give a new folder, e.g. --out out/net-int8")
        if absolute.is_symlink():
            raise UsageError(f"output path {given} is a link", "give a real folder path for --out")
        if absolute.exists() and not absolute.is_dir():
            raise UsageError(f"output path {given} exists and is not a folder", "choose a folder path for --out")
        if absolute.is_dir():
            try:
                present = _listing(absolute)
            except OSError as exc:
                raise UsageError(f"cannot read output folder {given}: {exc.strerror or exc}", "choose another folder for --out") from None
            if present:
                owned = owned_files(absolute)
                if owned is None:
                    what = "an artifact of an older edgekit (no ownership record)" if MANIFEST in present else "not an edgekit artifact"
                    raise UsageError(f"output folder {given} exists and is {what}",
                                     "choose a new or empty folder for --out; edgekit replaces only folders it wrote")
                foreign = sorted(present - owned)
                if foreign:
                    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                    raise UsageError(f"output folder {given} holds files edgekit did not write ({shown})",
                                     "move them out or choose another folder for --out; edgekit deletes only what it wrote")
        return absolute

    @classmethod
    def check(cls, dest: Path) -> None:
        """Fail now, before any conversion, if `dest` could not be written."""
        absolute = cls._check(Path(dest))
        parent = absolute.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            probe = Path(tempfile.mkdtemp(dir=parent, prefix=_staging_prefix(absolute)))
            probe.rmdir()
        except OSError as exc:
            raise UsageError(f"cannot write to {parent}: {exc.strerror or exc}", "choose a writable folder for --out") from None

    def commit(self) -> Path:
        """Swap the staging folder in. With renameat2(RENAME_EXCHANGE) one atomic step: a kill at any
        instant leaves the complete old or the complete new artifact at dest."""
        check_terminated()
        (self.path / _STAGING_MARK).unlink(missing_ok=True)
        _write_owned(self.path)
        _step("recorded")
        for _ in range(3):
            self._check(self.dest, self.given)  # still ours (or absent) right before the swap
            if not self.dest.exists():
                err = _renameat2(self.path, self.dest, _RENAME_NOREPLACE)
                if err == 0:
                    _step("moved")
                    return self.dest
                if err == errno.EEXIST:
                    continue  # another run committed meanwhile: check what it wrote, then exchange
                if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                    raise ArtifactError(f"cannot move the artifact into {self.given}: {os.strerror(err)}", "check the folder's permissions")
                os.rename(self.path, self.dest)
                _step("moved")
                return self.dest
            err = _renameat2(self.path, self.dest, _RENAME_EXCHANGE)
            if err == 0:
                _step("exchanged")
                _remove_owned(self.path)  # the old artifact now sits at our staging name
                _step("old-removed")
                return self.dest
            if err == errno.ENOENT:
                continue  # removed meanwhile
            if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                raise ArtifactError(f"cannot swap the artifact into {self.given}: {os.strerror(err)}", "check the folder's permissions")
            # no atomic exchange on this filesystem: two renames; a kill between them leaves the old
            # artifact aside under a name the next run puts back (sweep_stale)
            old = self.dest.parent / f".{self.dest.name}.edgekit-old-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.dest, old)
            _step("old-aside")
            os.rename(self.path, self.dest)
            _step("moved")
            _remove_owned(old)
            _step("old-removed")
            return self.dest
        raise ArtifactError(f"another edgekit run keeps writing {self.given} at the same time", "give each run its own --out")

    def abort(self) -> None:
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path, ignore_errors=True)


def check_artifact(folder: str | Path) -> Artifact:
    art = Artifact.load(folder)
    model_file(art.path, art.manifest)
    return art
