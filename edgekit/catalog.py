"""Where the data catalogues live: targets/, calibration/ (and devices/) as *.toml files.

Shipped files come from the repository checkout (editable install) or from the wheel, where
they are packaged as edgekit._<kind>. Users add or override entries with ./<kind>/*.toml in
their working directory, or with directories named in an environment variable.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def data_dirs(kind: str, env_var: str | None = None) -> list[Path]:
    """Lookup order for <kind>/*.toml; a later directory overrides an earlier one's entry of the same name."""
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file() and (repo / kind).is_dir():
        shipped = repo / kind
    else:
        shipped = Path(str(resources.files(f"edgekit._{kind}")))
    dirs = [shipped]
    if env_var and os.environ.get(env_var):
        dirs += [Path(p) for p in os.environ[env_var].split(os.pathsep) if p]
    local = Path.cwd() / kind
    if local.is_dir() and local.resolve() != shipped.resolve():
        dirs.append(local)
    return dirs


def toml_catalogue(kind: str, env_var: str | None = None) -> dict[str, Path]:
    """name (file stem) -> path, across data_dirs(kind)."""
    found: dict[str, Path] = {}
    for d in data_dirs(kind, env_var):
        for p in sorted(d.glob("*.toml")):
            found[p.stem] = p
    return found


def read_toml(path: Path, error: type[Exception], what: str) -> dict:
    """A catalogue entry as a dict (its `name` defaults to the file stem); `error` on bad TOML."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}", "fix the TOML syntax") from None
    data.setdefault("name", Path(path).stem)
    return data


# Scalar fields are checked by their annotation (a bool is not a number; an int is a float).
_SCALAR_CHECKS = {str: lambda v: isinstance(v, str),
                  int: lambda v: isinstance(v, int) and not isinstance(v, bool),
                  float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                  bool: lambda v: isinstance(v, bool)}


def build(cls, data: dict, where: str, error: type[Exception]):
    """cls(**data) for a dataclass, naming unknown fields instead of a TypeError."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise error(f"{where}: unknown field(s) {', '.join(unknown)}", f"known fields: {', '.join(sorted(names - {'source'}))}")
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        want = hints.get(key)
        ok = _SCALAR_CHECKS.get(want)
        if ok is not None and not ok(value):
            raise error(f"{where}: {key} = {value!r} is not a {want.__name__}", f"write {key} as a {want.__name__}")
    return cls(**data)
