"""The report card: artifact folders (manifest.json) and `edgekit bench/eval --json` results gathered into
one table (one row per artifact and device), written as Markdown and as a self-contained HTML page whose
plots are inline SVG drawn with matplotlib (imported here only, when a plot is drawn)."""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from edgekit.artifact import sha256
from edgekit.errors import UsageError
from edgekit.runtime.manifest import MANIFEST, Manifest, read_manifest

RESULT_COMMANDS = ("bench", "eval")
_GIVE = "give artifact folders from `edgekit convert` (or folders holding them) and JSON files from `edgekit bench/eval --json`"
COLUMNS = ("model", "target", "verdict", "device", "size", "× fp32 params", "accuracy", "accuracy from", "top-1 agree", "SQNR dB",
           "p50 ms", "p90 ms", "p99 ms", "artifact")


@dataclass
class Row:
    """One artifact on one device (device None: not benched). Units are in the field names."""

    model: str
    target: str
    artifact: str
    device: str | None = None
    format: str = ""
    precision: str = ""
    sha256: str = ""
    size_bytes: int | None = None
    size_vs_fp32_params: float | None = None
    accuracy: float | None = None
    accuracy_source: str = ""  # "eval" | "validation"
    top1_agreement: float | None = None
    sqnr_db: float | None = None
    validation_status: str = ""
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    runs: int | None = None
    samples_ms: list[float] | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "samples_ms"}


@dataclass
class _Entry:
    """Everything known about one artifact: its manifest (None if only results name it), evals, benches by device."""

    ref: str
    manifest: Manifest | None = None
    evals: list[dict] = field(default_factory=list)
    benches: dict[str, dict] = field(default_factory=dict)


# ------------------------------------------------------------------ reading


_FIX = "fix or remove the file, or pass only the folders and files to report on"
_LIMIT = 1e15  # beyond any size in bytes, latency in ms or run count a result can hold


class _Malformed(Exception):
    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")


def _shown(v) -> str:
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:40] + "…")
    if isinstance(v, (bool, int, float)) or v is None:
        return json.dumps(v) if not isinstance(v, int) or abs(v) <= _LIMIT else "a huge number"
    return "a list" if isinstance(v, list) else "an object" if isinstance(v, dict) else type(v).__name__


def _string(d: dict, key: str, where: str, required: bool = False) -> None:
    v = d.get(key)
    if v is None and not required:
        return
    if not isinstance(v, str):
        raise _Malformed(f"{where}{key}", "is missing" if v is None else f"is {_shown(v)}, not text")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _Malformed(f"{where}{key}", "is not valid text (a lone surrogate)") from None


def _number(v, where: str, integer: bool = False, minimum: float = -_LIMIT) -> None:
    """A finite JSON number in [minimum, 1e15] (NaN, Infinity, true/false and strings are refused); None passes."""
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise _Malformed(where, f"is {_shown(v)}, not {'an integer' if integer else 'a number'}")
    if (isinstance(v, float) and not math.isfinite(v)) or not minimum <= v <= _LIMIT:
        raise _Malformed(where, f"is {_shown(v)}, out of range")


def _object(d: dict, key: str, where: str, required: bool = False) -> dict:
    v = d.get(key)
    if v is None and not required:
        return {}
    if not isinstance(v, dict):
        raise _Malformed(f"{where}{key}", "is missing" if v is None else f"is {_shown(v)}, not an object")
    return v


def _check_result(data: dict) -> None:
    """Every field the report reads has the type it needs: text is text, numbers are finite and in range.
    Fields the report does not read are left alone."""
    items = [(f"results[{i}].", r) for i, r in enumerate(data["results"])] if data["command"] == "bench" else [("", data)]
    for where, r in items:
        for key in ("artifact", "target", "device", "status", "error", "runner"):
            _string(r, key, where, required=key == "artifact")
        _number(r.get("size_bytes"), f"{where}size_bytes", integer=True, minimum=0)
        _number(r.get("samples"), f"{where}samples", integer=True, minimum=0)
        if data["command"] == "eval":
            metrics = _object(r, "metrics", where, required=True)
            for key in ("top1", "top1_agreement", "sqnr_db"):
                _number(metrics.get(key), f"{where}metrics.{key}")
            continue
        if r.get("eval"):  # bench --eval-data: the accuracy on the device that benched it
            ev = _object(r, "eval", where)
            _number(ev.get("samples"), f"{where}eval.samples", integer=True, minimum=0)
            metrics = _object(ev, "metrics", f"{where}eval.", required=True)
            for key in ("top1", "top1_agreement", "sqnr_db"):
                _number(metrics.get(key), f"{where}eval.metrics.{key}")
        if r.get("stats") is not None:
            stats = _object(r, "stats", where)
            for key in ("p50_ms", "p90_ms", "p99_ms"):
                _number(stats.get(key), f"{where}stats.{key}", minimum=0)
            _number(stats.get("runs"), f"{where}stats.runs", integer=True, minimum=0)
        samples = r.get("samples_ms")
        if samples is not None:
            if not isinstance(samples, list):
                raise _Malformed(f"{where}samples_ms", f"is {_shown(samples)}, not a list of numbers")
            for i, v in enumerate(samples):
                if v is None:
                    raise _Malformed(f"{where}samples_ms[{i}]", "is null, not a number")
                _number(v, f"{where}samples_ms[{i}]", minimum=0)


def _read_result(path: Path, shown: str | None = None) -> dict | None:
    """A bench/eval result written by `--json`, None for any other JSON; unreadable or malformed JSON is an error
    whose message names the file as the user gave it (`shown`) and the field that is wrong."""
    shown = shown or str(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {shown}: {exc.strerror or exc}", _FIX) from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {shown}: not UTF-8 text", _FIX) from None
    except RecursionError:
        raise UsageError(f"cannot read {shown}: JSON nested too deeply", _FIX) from None
    except ValueError as exc:  # JSONDecodeError, or an integer literal of thousands of digits
        problem = (str(exc).splitlines() or ["?"])[0]
        raise UsageError(f"cannot read {shown}: not valid JSON ({problem[:120]})", _FIX) from None
    if not isinstance(data, dict) or data.get("command") not in RESULT_COMMANDS:
        return None
    items = data.get("results") if data["command"] == "bench" else [data]
    if not isinstance(items, list) or not all(isinstance(r, dict) and isinstance(r.get("artifact"), str) for r in items):
        raise UsageError(f"{shown} is an `edgekit {data['command']}` result without the artifacts it measured",
                         f"re-run `edgekit {data['command']} ... --json {path.name}`")
    try:
        _check_result(data)
    except _Malformed as exc:
        raise UsageError(f"{shown} is not a well-formed `edgekit {data['command']}` result: {exc}",
                         f"re-run `edgekit {data['command']} ... --json {path.name}`, or {_FIX}") from None
    return data


def _scan(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, dict]]]:
    """(artifact folders, [(json file, result)]) under `paths`; hidden folders (staging, .git) are skipped."""
    folders: list[Path] = []
    files: dict[Path, tuple[bool, str]] = {}  # json file -> (named explicitly (so it must be a result), its path as the user wrote it)
    for given in map(str, paths):
        p = Path(given)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(given):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                if MANIFEST in filenames:
                    folders.append(Path(dirpath))
                files.update({Path(dirpath) / f: (False, os.path.join(dirpath, f))
                              for f in sorted(filenames) if f.endswith(".json") and f != MANIFEST})
        elif p.name == MANIFEST:
            folders.append(p.parent)
        elif p.is_file() and p.suffix == ".json":
            files[p] = (True, given)
        else:
            raise UsageError(f"{'not a folder or .json file' if p.exists() else 'no such file or folder'}: {given}", _GIVE)
    results = []
    for f in sorted(files, key=lambda f: (f.stat().st_mtime, str(f))):  # later measurements override earlier ones
        named, shown = files[f]
        result = _read_result(f, shown)
        if result is None and named:
            raise UsageError(f"{shown} is not an `edgekit bench` or `edgekit eval` result", _GIVE)
        if result is not None:
            results.append((f, result))
    return list(dict.fromkeys(folders)), results


class _Index:
    """Artifacts by folder and sha256; finds the one a result names (by path, then file hash, then folder name)."""

    def __init__(self, folders: list[Path]):
        self.entries: dict[Path, _Entry] = {}
        self.orphans: dict[str, _Entry] = {}  # results naming an artifact that is not here
        self.by_sha: dict[str, Path] = {}
        for f in folders:
            self._add(f)

    def _add(self, folder: Path) -> Path:
        key = folder.resolve()
        if key not in self.entries:
            manifest = read_manifest(folder)
            self.entries[key] = _Entry(str(folder), manifest)
            self.by_sha[manifest.sha256] = key
        return key

    def _folder(self, folder: Path, file: str | None = None) -> Path | None:
        if not (folder / MANIFEST).is_file():
            return None
        key = self._add(folder)
        return key if file is None or self.entries[key].manifest.file == file else None

    def _find(self, ref: str, json_file: Path) -> Path | None:
        # The path as given to bench/eval: relative to where they ran (usually here) or to the JSON file.
        for cand in dict.fromkeys((Path(ref), json_file.parent / ref)):
            try:
                if cand.is_dir():
                    found = self._folder(cand)
                elif cand.is_file():  # a bare model file: its artifact folder, or any artifact with the same bytes
                    found = self._folder(cand.parent, cand.name) or self.by_sha.get(sha256(cand))
                else:
                    continue
            except (OSError, ValueError):  # a name too long for a path, a NUL in it: not a file we can find
                continue
            if found:
                return found
        name = Path(ref).parent.name if Path(ref).suffix in (".tflite", ".onnx") else Path(ref).name
        same = [k for k in self.entries if k.name == name]
        return same[0] if len(same) == 1 else None

    def entry_for(self, ref: str, json_file: Path) -> _Entry:
        key = self._find(ref, json_file)
        return self.entries[key] if key else self.orphans.setdefault(ref, _Entry(ref))

    def all(self) -> list[_Entry]:
        return [*self.entries.values(), *self.orphans.values()]


# ------------------------------------------------------------------ rows


def _ratio(manifest: Manifest | None) -> float | None:
    if manifest is None or not manifest.param_bytes_fp32 or not manifest.size_bytes:
        return None
    return manifest.size_bytes / manifest.param_bytes_fp32


def _first(*values):
    return next((v for v in values if v is not None), None)


def _base_row(e: _Entry) -> Row:
    """The artifact's row before any latency: from its manifest, the best eval (most samples), else the results alone."""
    m, seen = e.manifest, [*e.benches.values(), *e.evals]
    v = m.validation.to_dict() if m is not None and m.validation else {}
    ev = max(e.evals, key=lambda r: r.get("samples") or 0)["metrics"] if e.evals else {}
    acc = _first(ev.get("top1"), v.get("accuracy"))
    return Row(model=(m.model_name if m is not None else "") or "?", artifact=e.ref,
               target=_first(m.target.get("name") if m is not None else None, *(r.get("target") for r in seen), "?"),
               format=m.format if m is not None else "", precision=m.precision if m is not None else "",
               sha256=m.sha256 if m is not None else "",
               size_bytes=_first(m.size_bytes if m is not None else None, *(r.get("size_bytes") for r in seen)), size_vs_fp32_params=_ratio(m),
               accuracy=acc, accuracy_source="" if acc is None else "eval" if ev.get("top1") is not None else "validation",
               top1_agreement=_first(ev.get("top1_agreement"), v.get("top1_agreement")),
               sqnr_db=_first(ev.get("sqnr_db"), v.get("sqnr_db")), validation_status=v.get("status", ""))


def _consistency(e: _Entry) -> dict | None:
    """For an artifact validated on devices (`convert --validate-on`): each place's verdict, its top-1 agreement with the
    float model, and top-1 agreement between every pair of places on the same held-out samples (edgekit.ondevice)."""
    from edgekit.ondevice import agreement_matrix

    v = e.manifest.validation if e.manifest is not None else None
    devices = [d for d in ((v.figures.get("devices") or []) if v else []) if d.get("status") != "error"]
    if not devices:
        return None
    host = v.figures.get("measured_on") or {}
    places = [{"place": f"host ({host.get('arch', '?')})", "status": v.figures.get("host_status", v.status),
               "runtime": f"{host.get('runtime', '')} {host.get('runtime_version', '')}".strip(),
               "top1_agreement_fp32": v.figures.get("top1_agreement"), "top1": host.get("top1")}]
    places += [{"place": f"{d['device']} ({d.get('arch', '?')})", "status": d["status"],
                "runtime": f"{d.get('runtime', '')} {d.get('runtime_version', '')}".strip(),
                "top1_agreement_fp32": (d.get("figures") or {}).get("top1_agreement"), "top1": d.get("top1")} for d in devices]
    matrix = agreement_matrix({p["place"]: p["top1"] for p in places if p["top1"]})
    return {"model": e.manifest.model_name or "?", "target": e.manifest.target_name, "artifact": e.ref,
            "samples": len(places[0]["top1"] or []), "places": [{k: x for k, x in p.items() if k != "top1"} for p in places],
            "agreement": matrix}


def consistency_lines(c: dict) -> list[str]:
    """One line per place: verdict, agreement with the float model, with each other place; loud where places disagree."""
    out = []
    for p in c["places"]:
        others = ", ".join(f"{q} {a:.1%}" for q, a in c["agreement"].get(p["place"], {}).items())
        fp32 = "-" if p["top1_agreement_fp32"] is None else f"{p['top1_agreement_fp32']:.1%}"
        out.append(f"{c['model']} {c['target']} on {p['place']}, {p['runtime']}: {_verdict(p['status'])}, top-1 as fp32 {fp32}"
                   + (f"; as {others}" if others else "") + f" ({c['samples']} samples)")
    return out


def _place(device: str | None) -> str:
    """This machine has several names: a bench on the "local" device and an eval run here ("host", or none) are one place."""
    return "local" if device in (None, "", "host", "local") else device


def _on_device(base: Row, e: _Entry, device: str) -> Row:
    """The row's accuracy from an eval measured on `device` itself when there is one (the device's accuracy next to
    its latency: "eval"); else the artifact's best eval, named by the device it ran on ("eval on host")."""
    mine = [r for r in e.evals if _place(r.get("device")) == _place(device)]
    if not mine:
        if base.accuracy_source == "eval":
            other = max(e.evals, key=lambda r: r.get("samples") or 0).get("device") or "?"
            return replace(base, accuracy_source=f"eval on {other}")
        return base
    ev = max(mine, key=lambda r: r.get("samples") or 0)["metrics"]
    own = ev.get("top1") is not None
    return replace(base, accuracy=ev["top1"] if own else base.accuracy, accuracy_source="eval" if own else base.accuracy_source,
                   top1_agreement=_first(ev.get("top1_agreement"), base.top1_agreement), sqnr_db=_first(ev.get("sqnr_db"), base.sqnr_db))


def _rows(e: _Entry) -> list[Row]:
    base = _base_row(e)
    if not e.benches:
        return [base]
    return [replace(_on_device(base, e, dev), device=dev, latency_p50_ms=b["stats"].get("p50_ms"), latency_p90_ms=b["stats"].get("p90_ms"),
                    latency_p99_ms=b["stats"].get("p99_ms"), runs=b["stats"].get("runs"), samples_ms=b.get("samples_ms"))
            for dev, b in e.benches.items()]


def _attach(index: _Index, json_file: Path, result: dict, notes: list[str]) -> None:
    if result["command"] == "eval":
        index.entry_for(result["artifact"], json_file).evals.append(result)
        return
    for b in result["results"]:
        if b.get("status", "ok") != "ok" or not isinstance(b.get("stats"), dict):
            notes.append(f"{json_file.name}: bench of {b['artifact']} on {b.get('device', '?')} failed: {b.get('error') or 'no figures'}")
            continue
        entry = index.entry_for(b["artifact"], json_file)
        entry.benches[b.get("device", "?")] = b
        if b.get("eval"):
            entry.evals.append({"command": "eval", "artifact": b["artifact"], "device": b.get("device", "?"), **b["eval"]})
        if not b.get("samples_ms"):
            notes.append(f"{json_file.name}: {b['artifact']} on {b.get('device', '?')} has no raw samples ({b.get('runner', '')} runner): not in the latency plot")


# ------------------------------------------------------------------ the report


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _ms(v: float | None) -> str:
    return _num(v, "{:.3f}" if v is not None and v < 10 else "{:.1f}")


def _verdict(status: str) -> str:
    """The convert-time verdict, loud when it is not ok: a failed artifact never reads as an ordinary row."""
    return {"": "-", "ok": "ok", "warn": "warn", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}.get(status, status)


def size_text(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1048576:,.1f} MiB"


@dataclass
class Report:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    consistency: list[dict] = field(default_factory=list)  # artifacts validated on several devices: agreement between them

    def label(self, r: Row) -> str:
        return r.target if len({x.model for x in self.rows}) == 1 else f"{r.model} {r.target}"

    def table(self) -> list[list[str]]:
        """The table's cells, one list per row, in COLUMNS order (shared by the terminal, Markdown and HTML)."""
        return [[r.model, r.target, _verdict(r.validation_status), r.device or "-", size_text(r.size_bytes), _num(r.size_vs_fp32_params, "{:.2f}"),
                 _pct(r.accuracy), r.accuracy_source or "-", _pct(r.top1_agreement), _num(r.sqnr_db, "{:.1f}"),
                 _ms(r.latency_p50_ms), _ms(r.latency_p90_ms), _ms(r.latency_p99_ms), r.artifact] for r in self.rows]

    def summary(self) -> str:
        return (f"{len(self.rows)} row(s) from {len(self.sources)} artifact folder(s) and result file(s), {self.created}. Accuracy: top-1 "
                "from `edgekit eval` where there is one, else the convert-time validation; latency from `edgekit bench`.")

    def to_json(self) -> dict:
        return {"created": self.created, "sources": self.sources, "rows": [r.to_json() for r in self.rows], "notes": self.notes,
                "consistency": self.consistency}

    def consistency_lines(self) -> list[str]:
        return [x for c in self.consistency for x in consistency_lines(c)]

    def to_markdown(self) -> str:
        def line(cells) -> str:
            return "| " + " | ".join(md_text(c) for c in cells) + " |"

        out = [f"# edgekit report card\n\n{self.summary()} The plots are in the HTML report.\n",
               line(COLUMNS), line(["---"] * len(COLUMNS)), *map(line, self.table())]
        out += ["", *[f"- {md_text(n)}" for n in self.notes]] if self.notes else []
        if self.consistency:
            out += ["", "## Agreement between devices", "", *[f"- {md_text(x)}" for x in self.consistency_lines()]]
        return "\n".join(out) + "\n"

    def to_html(self) -> str:
        e = html.escape
        head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>\n" for cells in self.table())
        plots = [_figure("plot-accuracy-latency", "Accuracy vs latency", accuracy_latency_svg(self),
                         "no artifact has both an accuracy and a bench latency: run `edgekit bench` (and `edgekit eval`) on the artifacts"),
                 _figure("plot-latency", "Latency distributions per device", latency_svg(self),
                         "no raw latency samples: run `edgekit bench --json` with the python runner")]
        notes = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        agree = "".join(f"<li>{e(x)}</li>" for x in self.consistency_lines())
        summary = re.sub(r"`([^`]+)`", r"<code>\1</code>", e(self.summary()))
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>edgekit report card</title>"
                f"<style>{_CSS}</style></head><body>\n<h1>edgekit report card</h1>\n"
                f"<p class=\"meta\">{summary}</p>\n"
                f"<table id=\"report-table\"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n{''.join(plots)}"
                + (f"<h2>Agreement between devices</h2><ul id=\"consistency\">{agree}</ul>\n" if agree else "")
                + (f"<h2>Notes</h2><ul id=\"notes\">{notes}</ul>\n" if notes else "") + "</body></html>\n")

    def write(self, html: str | Path | None = None, markdown: str | Path | None = None) -> list[Path]:
        """Write the HTML page and/or the Markdown, each atomically; returns the paths written."""
        done = []
        for path, render in ((html, self.to_html), (markdown, self.to_markdown)):
            if path:
                write_text_atomic(Path(path), render())
                done.append(Path(path))
        return done


_MD_SPECIAL = re.compile(r"([\\`*_\[\]$~|])")


def md_text(value) -> str:
    """User text for Markdown, shown as written: no HTML gets through (< > & as entities); the characters that would
    start emphasis, code, a link, math or strike-through, or end a table cell (|), are backslash-escaped; a line break
    cannot end the row or the list item."""
    s = html.escape(str(value), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", s).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


_CSS = ("body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}th{background:#f2f2f2}"
        "td:nth-child(-n+3),td:last-child,th{text-align:left}figure{margin:1em 0}svg{max-width:100%;height:auto}"
        ".missing{color:#a60}.meta{color:#555}")


def _figure(fig_id: str, title: str, svg: str | None, missing: str) -> str:
    content = svg if svg else f"<p class=\"missing\">No plot: {html.escape(missing)}.</p>"
    return f"<h2>{html.escape(title)}</h2>\n<figure id=\"{fig_id}\">{content}</figure>\n"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:  # a lone surrogate from a name: '?', not a crash
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}", "choose a writable path") from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def default_output(first: str | Path) -> Path:
    """Where the HTML goes when no output is named: report.html in the first folder given (beside it for a file)."""
    p = Path(first)
    return (p if p.is_dir() else p.parent) / "report.html"


def collect(paths: Sequence[str | Path]) -> Report:
    """Gather the artifacts and bench/eval results under `paths` (folders are walked) into a Report."""
    if not paths:
        raise UsageError("nothing to report on", _GIVE)
    folders, results = _scan(paths)
    if not folders and not results:
        raise UsageError(f"nothing to report in {', '.join(map(str, paths))}: no artifact folders (manifest.json) and no bench/eval JSON", _GIVE)
    index, notes = _Index(folders), []
    for json_file, result in results:
        _attach(index, json_file, result, notes)
    notes += [f"{ref}: no artifact folder found for these results; shown from the results alone" for ref in index.orphans]
    rows = [r for e in index.all() for r in _rows(e)]
    rows.sort(key=lambda r: (r.model, r.device or "", -(r.size_bytes or 0), r.target))
    consistency = [c for c in map(_consistency, index.all()) if c is not None]
    return Report(rows, notes, [str(f) for f in folders] + [str(f) for f, _ in results], consistency=consistency)


# ------------------------------------------------------------------ plots (matplotlib, inline SVG)


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    return Figure(figsize=figsize, layout="constrained")


def _plain_text():
    """Labels are user text (targets, devices): no mathtext for '$…$' and no TeX, whatever the user's matplotlibrc says.
    The rc values are read when each Text is made, so the whole figure is built and saved inside this context."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})


def _legend_label(s: str) -> str:
    return "\u200b" + s if s.startswith("_") else s  # matplotlib leaves labels starting with '_' out of the legend


def _svg(fig, name: str) -> str:
    import matplotlib

    buf = io.StringIO()
    # Text stays text (selectable, searchable); the salt keeps element ids unique across the page's SVGs.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):].replace("<svg ", f"<svg role=\"img\" aria-label=\"{name}\" ", 1)


def accuracy_latency_svg(report: Report) -> str | None:
    """Accuracy vs p50 latency, one series per device, marker area proportional to the artifact's size."""
    rows = [r for r in report.rows if r.accuracy is not None and r.latency_p50_ms is not None]
    if not rows:
        return None
    with _plain_text():
        return _accuracy_latency_svg(report, rows)


def _accuracy_latency_svg(report: Report, rows: list[Row]) -> str:
    fig = _new_figure((7.5, 4.5))
    ax = fig.subplots()
    biggest = max(r.size_bytes or 0 for r in rows) or 1
    for device in dict.fromkeys(r.device for r in rows):
        sel = [r for r in rows if r.device == device]
        ax.scatter([r.latency_p50_ms for r in sel], [100 * r.accuracy for r in sel], s=[600 * (r.size_bytes or 0) / biggest for r in sel],
                   alpha=0.6, edgecolors="black", label=_legend_label(device or "?"))
        for r in sel:
            ax.annotate(report.label(r), (r.latency_p50_ms, 100 * r.accuracy), xytext=(7, 5), textcoords="offset points", fontsize=8)
    ax.set(xlabel="latency p50 (ms)", ylabel="accuracy (%)", title="accuracy vs latency (marker area ∝ artifact size)")
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    for handle in ax.legend(title="device").legend_handles:
        handle.set_sizes([60])
    return _svg(fig, "accuracy vs latency")


def latency_svg(report: Report) -> str | None:
    """Box plots of the raw latency samples, one panel per device, one box per artifact."""
    by_device: dict[str, list[Row]] = {}
    for r in report.rows:
        if r.samples_ms:
            by_device.setdefault(r.device or "?", []).append(r)
    if not by_device:
        return None
    with _plain_text():
        return _latency_svg(report, by_device)


def _latency_svg(report: Report, by_device: dict[str, list[Row]]) -> str:
    heights = [0.6 + 0.45 * len(rs) for rs in by_device.values()]
    fig = _new_figure((7.5, 0.6 + sum(heights)))
    axes = fig.subplots(len(by_device), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (device, rows) in zip(axes, by_device.items()):
        ax.boxplot([r.samples_ms for r in rows], orientation="horizontal", tick_labels=[report.label(r) for r in rows],
                   widths=0.6, flierprops={"markersize": 3})
        ax.set(title=f"{device}: latency over {sum(len(r.samples_ms) for r in rows)} runs", xlabel="latency (ms)")
        ax.grid(axis="x", alpha=0.3)
    return _svg(fig, "latency distributions")
