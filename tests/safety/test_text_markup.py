"""Issue 9, class 8: user text is text. Paths, target and device names printed by the CLI are not rich markup
('[b]', '[/x]') or emoji codes, and control characters do not reach the terminal; names in the report's plots are
not matplotlib mathtext; the Markdown report lets no HTML through and keeps its table whole."""

import json
import re
from pathlib import Path

import pytest
from _common import one_line_error
from conftest import run_cli

import edgekit
from edgekit.report import COLUMNS

# The subprocess runs the edgekit this test imported (a worktree's, when the test runs there), not the installed one.
SRC = str(Path(edgekit.__file__).resolve().parents[1])


def cli(*args, cwd):
    return run_cli(*args, cwd=cwd, env={"PYTHONPATH": SRC})


@pytest.mark.parametrize("args,given", [
    (["convert", "no[/such].pt"], "no[/such].pt"),  # a closing tag that matches nothing: rich's MarkupError
    (["convert", "--calib", "cal[b].npy"], "cal[b].npy"),  # '[b]' eaten as bold: the wrong file named
    (["convert", "--calib", "c :thumbs_up: [red]x[/red].npy"], "c :thumbs_up: [red]x[/red].npy"),  # an emoji code, a style
    (["convert", "--weights", "w[/]x.pt"], "w[/]x.pt"),
    (["convert", "--target", "nope[/bold]"], "nope[/bold]"),
    (["eval", "art[/i]", "--data", "digits"], "art[/i]"),
    (["report", "gone[/x]"], "gone[/x]"),
])
def test_errors_print_the_users_text_as_given(in_tmp, args, given):
    one_line_error(cli(*args, cwd=in_tmp), given)


def test_control_characters_do_not_reach_the_terminal(in_tmp):
    line = one_line_error(cli("convert", "m\x1b[31mred\x07.pt", cwd=in_tmp), "m\\x1b[31mred\\x07.pt")
    assert "\x1b" not in line and "\x07" not in line


# ---------------------------------------------------------------- the report: names from bench/eval JSON

MARKUP = ["x[/bold]", "[bold red]loud[/]", "y :thumbs_up: [/]"]
MATH = ["$\\foo{$", "$x^2$ and $y$", "_hidden", "<img src=x onerror=alert(1)>"]
MARKDOWN = ["<img src=x onerror=alert(1)>", "a|b", "tab & <b>", "*em* [link](javascript:x) `c` $m$"]


def named(doc: dict, folder: Path, names: list[str]) -> Path:
    """The bench result once per name, as target and device, for artifacts that are not here (rows from the results alone)."""
    (one,) = doc["results"]
    results = [{**one, "artifact": f"gone-{i}", "target": name, "device": name} for i, name in enumerate(names)]
    path = folder / "bench.json"
    path.write_text(json.dumps({**doc, "results": results}))
    return path


def test_report_table_prints_names_as_given(bench_doc, in_tmp):
    r = cli("report", named(bench_doc, in_tmp, MARKUP), "--markdown", "r.md", "--json", "r.json", cwd=in_tmp)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    rows = json.loads((in_tmp / "r.json").read_text())["rows"]
    assert sorted(x["target"] for x in rows) == sorted(MARKUP)
    target, device = COLUMNS.index("target"), COLUMNS.index("device")
    # Compared without whitespace: rich wraps a long cell wherever it likes; the markup must be there, character for character.
    assert sorted(column(r.stdout, target)) == sorted(column(r.stdout, device)) == sorted(map(squeeze, MARKUP))


def squeeze(text: str) -> str:
    return "".join(text.split())


def column(table: str, index: int) -> list[str]:
    """A column of rich's table as printed, cells wrapped over several lines joined again (whitespace dropped)."""
    cells = []
    for ln in table.splitlines():
        if ln.startswith("│"):
            parts = [p.strip() for p in ln.split("│")[1:-1]]
            if parts[0]:
                cells.append(squeeze(parts[index]))
            else:
                cells[-1] += squeeze(parts[index])
    return cells


def test_plots_draw_names_as_text_not_mathtext(bench_doc, in_tmp):
    for i in (0, 2):  # accuracy for two of them, so they are in the scatter (and its legend) too
        doc = {"command": "eval", "artifact": f"gone-{i}", "target": MATH[i], "samples": 10, "metrics": {"top1": 0.9 - i / 10}}
        (in_tmp / f"eval{i}.json").write_text(json.dumps(doc))
    r = cli("report", named(bench_doc, in_tmp, MATH), "eval0.json", "eval2.json", "--html", "r.html", cwd=in_tmp)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    page = (in_tmp / "r.html").read_text()
    svg_text = set(re.findall(r"<text[^>]*>([^<]*)</text>", page))
    assert "$\\foo{$" in svg_text and "$x^2$ and $y$" in svg_text  # literally, as the labels of the boxes and the scatter
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    legend = page[page.index('<g id="legend_1">'):]
    legend = legend[:legend.index("</svg>")]
    assert "$\\foo{$" in legend and "_hidden<" in legend  # matplotlib leaves labels starting with '_' out of a legend


def test_markdown_lets_no_html_through_and_keeps_the_table_whole(bench_doc, in_tmp):
    r = cli("report", named(bench_doc, in_tmp, MARKDOWN), "--markdown", "r.md", cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    md = (in_tmp / "r.md").read_text()
    assert "<img" not in md and "<b>" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md and "tab &amp; &lt;b&gt;" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    widths = {len(re.split(r"(?<!\\)\|", ln)) for ln in rows}
    assert len(rows) == 2 + len(MARKDOWN) and len(widths) == 1, rows  # every row has the header's cells: escaped pipes
    assert "a\\|b" in md
    assert "\\*em\\* \\[link\\](javascript:x) \\`c\\` \\$m\\$" in md  # no emphasis, link, code or math: the name as written


def test_compress_summary_prints_names_as_given(monkeypatch, tmp_path):
    """The qat/prune/distill/lowrank summary: the model source, notes and the next command are text."""
    import io

    from rich.console import Console

    import edgekit.cli
    from edgekit.compress.commands import _finish

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(edgekit.cli, "OUT", Console(file=out, width=200))
    monkeypatch.setattr(edgekit.cli, "ERR", Console(file=err, width=200))
    saved = tmp_path / "m[b]x.pt2"
    saved.write_bytes(b"x")

    class Result:
        report = {"source": "net[/x].py:build", "params_before": 10, "params_after": 5, "param_ratio": 0.5,
                  "val": {"samples": 3}, "val_accuracy_before": 0.9, "val_accuracy_after": 0.8, "notes": ["layer conv[/b] kept"],
                  "outputs": {"lo[/i]gits": {"kind": "class", "learns": "labels", "weight": 1.0, "figure": "accuracy", "before": 0.9,
                                             "after": 0.8}},
                  "history": [], "method": "prune [dim]x[/dim]"}

        def save(self, out):
            return saved

        def to_json(self):
            return {}

    _finish("prune", Result(), str(saved), None, "edgekit convert {out} --target t{x}[/b]")
    assert "net[/x].py:build" in out.getvalue() and "prune [dim]x[/dim]" in out.getvalue()
    assert "lo[/i]gits [class] accuracy vs labels" in out.getvalue() and "80.00%" in out.getvalue()
    assert "layer conv[/b] kept" in err.getvalue()
    assert f"wrote {saved}" in err.getvalue() and f"edgekit convert {saved} --target t{{x}}[/b]" in err.getvalue()
