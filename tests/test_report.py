"""edgekit report: real artifacts, bench and eval results through the real CLI, and the HTML page rendered in
Debian's headless chromium (the table's rows and the plots' marks must be on the page, and on the screenshot)."""

import json
import re
import shutil
import subprocess

import pytest
from conftest import run_cli

import edgekit
from edgekit.report import collect

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed: run scripts/setup-chromium.sh")


@pytest.fixture(scope="module")
def results(digits_int8, tmp_path_factory):
    """int8 (shared fixture, elsewhere) and fp32 artifacts, benched and evaluated by the CLI from a results folder."""
    root = tmp_path_factory.mktemp("report") / "results"
    edgekit.convert(target="tflite-fp32", out_dir=root / "digits fp32")
    # As users name them: the int8 folder by absolute path, the fp32 model file relative to where bench ran.
    r = run_cli("bench", digits_int8, "digits fp32/model.tflite", "--device", "local", "--runs", "20", "--warmup", "2",
                "--json", "bench.json", cwd=root)
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", digits_int8, "--data", "digits", "--json", "eval.json", cwd=root)
    assert r.returncode == 0, r.stderr
    return root, digits_int8


@pytest.fixture(scope="module")
def report_files(results):
    root, int8 = results
    out = root.parent / "report"
    r = run_cli("report", root, int8, "--html", out / "report.html", "--markdown", out / "report.md", "--json", out / "report.json",
                cwd=root.parent)  # elsewhere than bench ran: relative artifact paths resolve from the JSON's folder
    assert r.returncode == 0, r.stderr
    assert "tflite-int8" in r.stdout and "tflite-fp32" in r.stdout  # the terminal table
    return out


def _md_rows(text: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    return {r["target"]: r for r in rows}


def test_markdown_and_json_join_bench_and_eval_to_their_artifacts(results, report_files):
    root, _ = results
    bench = {r["target"]: r for r in json.loads((root / "bench.json").read_text())["results"]}
    top1 = json.loads((root / "eval.json").read_text())["metrics"]["top1"]
    fp32_manifest = json.loads((root / "digits fp32" / "manifest.json").read_text())
    md = _md_rows((report_files / "report.md").read_text())
    assert set(md) == {"tflite-int8", "tflite-fp32"}
    i8, f32 = md["tflite-int8"], md["tflite-fp32"]
    assert i8["model"] == f32["model"] == "digits-cnn" and i8["device"] == f32["device"] == "local"
    assert i8["accuracy"] == f"{top1:.1%}" and i8["accuracy from"] == "eval"
    assert f32["accuracy from"] == "validation" and f32["accuracy"] == f"{fp32_manifest['validation']['accuracy']:.1%}"
    assert float(i8["× fp32 params"]) < 0.35 and float(f32["× fp32 params"]) > 0.95
    assert float(f32["p50 ms"]) > 0 and float(i8["p99 ms"]) >= float(i8["p50 ms"])
    rows = {r["target"]: r for r in json.loads((report_files / "report.json").read_text())["rows"]}
    assert rows["tflite-int8"]["latency_p50_ms"] == bench["tflite-int8"]["stats"]["p50_ms"]
    # bench named the fp32 model *file* (target "tflite"): joined to its folder, and so to its manifest
    assert rows["tflite-fp32"]["latency_p50_ms"] == bench["tflite"]["stats"]["p50_ms"]
    assert rows["tflite-fp32"]["sha256"] == fp32_manifest["sha256"] and rows["tflite-fp32"]["size_bytes"] == fp32_manifest["size_bytes"]
    assert rows["tflite-int8"]["accuracy"] == top1


def test_results_alone_find_their_artifacts(results):
    root, _ = results
    rep = collect([root / "bench.json", root / "eval.json"])
    assert sorted(r.target for r in rep.rows) == ["tflite-fp32", "tflite-int8"] and not rep.notes
    assert all(r.model == "digits-cnn" and r.latency_p50_ms for r in rep.rows)


def _chromium(page, *args) -> subprocess.CompletedProcess:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={page.parent / 'chromium'}",
            *args, page.as_uri()]
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _section(dom: str, pattern: str) -> str:
    m = re.search(pattern, dom, re.DOTALL)
    assert m, f"{pattern} not on the page"
    return m.group(1)


def _plot_pixels(png) -> tuple[int, int]:
    """(scatter-marker pixels, box-median pixels): matplotlib's blue at alpha 0.6 over white, its orange."""
    from PIL import Image

    img = Image.open(png).convert("RGB")

    def near(px, ref, tol):
        return all(abs(a - b) <= tol for a, b in zip(px, ref))

    data = list(img.getdata())
    return sum(near(p, (121, 173, 210), 14) for p in data), sum(near(p, (255, 127, 14), 40) for p in data)


@needs_chromium
def test_headless_chromium_shows_the_table_and_the_plots(report_files):
    page = report_files / "report.html"
    text = page.read_text()
    assert "<script" not in text and not re.search(r"""(src|href)=["'](?!#)""", text)  # self-contained: nothing to fetch
    dom = _chromium(page, "--dump-dom").stdout
    table = _section(dom, r'<table id="report-table">(.*?)</table>')
    cells = [re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL)]
    assert sorted(c[1] for c in cells if c) == ["tflite-fp32", "tflite-int8"]
    scatter = _section(dom, r'<figure id="plot-accuracy-latency">(.*?)</figure>')
    marks = sum(g.count("<path") for g in re.findall(r'<g id="PathCollection_\d+">(.*?)</g>', scatter, re.DOTALL))
    assert "<svg" in scatter and marks >= 2, "no scatter marks"
    assert {"tflite-int8", "tflite-fp32", "latency p50 (ms)", "accuracy (%)"} <= set(re.findall(r"<text[^>]*>([^<]*)</text>", scatter))
    boxes = _section(dom, r'<figure id="plot-latency">(.*?)</figure>')
    labels = set(re.findall(r"<text[^>]*>([^<]*)</text>", boxes))
    assert {"tflite-int8", "tflite-fp32", "local: latency over 40 runs"} <= labels
    assert len(re.findall(r'<g id="line2d_\d+">', boxes)) >= 2 * 6  # per box: box, median, 2 whiskers, 2 caps, fliers
    shot = page.parent / "shot.png"
    _chromium(page, "--window-size=1280,4000", f"--screenshot={shot}")
    markers, medians = _plot_pixels(shot)
    assert markers > 300 and medians > 20, f"plots not drawn on the screenshot: {markers} marker px, {medians} median px"


@needs_chromium
def test_without_bench_the_page_says_so_and_shows_no_plot(results, tmp_path):
    _, int8 = results
    page = tmp_path / "page.html"
    r = run_cli("report", int8, "--html", page)
    assert r.returncode == 0, r.stderr
    dom = _chromium(page, "--dump-dom").stdout
    assert "tflite-int8" in _section(dom, r'<table id="report-table">(.*?)</table>')
    assert dom.count('class="missing"') == 2 and "<svg" not in dom
    _chromium(page, "--window-size=1280,4000", f"--screenshot={tmp_path / 'shot.png'}")
    assert _plot_pixels(tmp_path / "shot.png") == (0, 0)  # the pixel check above does tell a plot from none


def test_default_output_is_report_html_in_the_first_folder(results, tmp_path):
    shutil.copytree(results[1], tmp_path / "art")
    r = run_cli("report", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.html").is_file() and "tflite-int8" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("case", ["missing", "empty", "bad-json", "not-a-result"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bench.json").write_text('{"command": "bench", "results": [')
    (tmp_path / "other.json").write_text('{"command": "convert"}')
    arg, expect = {"missing": ("nope", "no such file or folder"), "empty": ("empty", "nothing to report"),
                   "bad-json": ("bad", "cannot read"), "not-a-result": ("other.json", "not an `edgekit bench`")}[case]
    r = run_cli("report", arg, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:") and expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "report.html").exists()
