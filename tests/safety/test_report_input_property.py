"""Issue 9, class 9 (report input), property-based: random and mutated `edgekit bench/eval --json` documents, started
from real ones, given to `edgekit report` (the CLI's main, in this process) end either in success or in one
EdgekitError line with exit 2; never in an internal error or an exception."""

import copy
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rich.console import Console

import edgekit
import edgekit.cli
from edgekit.errors import EdgekitError
from edgekit.report import collect

SRC = str(Path(edgekit.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def real_docs(digits_int8, tmp_path_factory):
    """A real bench and a real eval result of a small artifact, as written by the CLI."""
    root = tmp_path_factory.mktemp("real-docs")
    env = {"PYTHONPATH": SRC}
    r = run_cli("bench", digits_int8, "--device", "local", "--runs", "5", "--warmup", "1", "--json", "bench.json", cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", digits_int8, "--data", "digits", "--samples", "50", "--json", "eval.json", cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads((root / "bench.json").read_text()), json.loads((root / "eval.json").read_text())


# ---------------------------------------------------------------- documents

_text = st.one_of(st.text(max_size=12), st.sampled_from(["", "[/bold]", "$\\foo{$", "<b>&", "a|b", "\ud800", "x\x00y", "a" * 5000,
                                                         "../../etc", "/", "local", "?", "_x", "\x1b[31m"]))
_numbers = st.one_of(st.integers(), st.sampled_from([0, -1, 10**20, 10**400, 2**63]),
                     st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]))
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _text)
_json = st.recursive(_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_text, kids, max_size=4)),
                     max_leaves=12)


def _paths(doc, prefix=()):
    """Every place in a JSON document, as a key path."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw, docs):
    """A real document with a few places replaced by random JSON, deleted, or wrapped in a list."""
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _paths(doc) if p]
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent = doc
        for k in place[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "replace", "delete", "wrap"]))
        if op == "delete":
            del parent[place[-1]]
        elif op == "wrap":
            parent[place[-1]] = [parent[place[-1]]]
        else:
            parent[place[-1]] = draw(_json)
    return doc


@st.composite
def document(draw, docs):
    """The bytes of a result file: mutated real documents mostly, some random JSON, some broken bytes."""
    kind = draw(st.sampled_from(["mutated"] * 6 + ["random", "result-shaped", "bytes"]))
    if kind == "mutated":
        return json.dumps(draw(mutated(docs))).encode("utf-8", "surrogatepass")
    if kind == "random":
        return json.dumps(draw(_json)).encode("utf-8", "surrogatepass")
    if kind == "result-shaped":
        command = draw(st.sampled_from(["bench", "eval"]))
        body = draw(st.dictionaries(st.sampled_from(["results", "artifact", "metrics", "samples", "target", "device", "stats"]), _json))
        return json.dumps({"command": command, **body}).encode("utf-8", "surrogatepass")
    good = json.dumps(draw(st.sampled_from(docs))).encode()
    cut = draw(st.integers(0, len(good)))
    return good[:cut] + draw(st.binary(max_size=8))


# ---------------------------------------------------------------- the property

def _report(argv: list[str]) -> tuple[int, str, str]:
    """edgekit's main() as the command line runs it, with the terminal captured."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(edgekit.cli, "OUT", Console(file=out, width=200))
        mp.setattr(edgekit.cli, "ERR", Console(file=err, width=200))
        try:
            edgekit.cli.main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _check(data: bytes, folder: Path, html: bool) -> None:
    result = folder / "bench.json"
    result.write_bytes(data)
    outputs = ["--markdown", str(folder / "r.md"), "--json", str(folder / "r.json")] + (["--html", str(folder / "r.html")] if html else [])
    code, out, err = _report(["report", str(result), *outputs])
    lines = err.strip().splitlines()
    event(f"exit {code}")
    if code == 0:
        assert (folder / "r.md").is_file() and json.loads((folder / "r.json").read_text())["rows"] is not None
        return
    assert code == 2, (code, err)
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and errors == lines[-1:] and "internal error" not in err, err
    assert str(result) in errors[0], errors[0]
    # The library says the same: an EdgekitError, nothing else.
    with pytest.raises(EdgekitError):
        collect([result])


_SETTINGS = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                                            HealthCheck.data_too_large])


@settings(_SETTINGS, max_examples=150)
@given(data=st.data())
def test_report_on_random_and_mutated_results_is_success_or_one_line(real_docs, data):
    with tempfile.TemporaryDirectory() as tmp:
        _check(data.draw(document(list(real_docs))), Path(tmp), html=False)


@settings(_SETTINGS, max_examples=25)
@given(data=st.data())
def test_report_pages_with_plots_on_mutated_results(real_docs, data):
    """The same with the HTML page, whose plots take the values and names to matplotlib (fewer examples: slower)."""
    with tempfile.TemporaryDirectory() as tmp:
        _check(data.draw(document(list(real_docs))), Path(tmp), html=True)
