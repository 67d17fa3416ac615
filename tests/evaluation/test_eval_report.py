import base64
import io
import json
import re

import pandas as pd
import pytest
from fakerun import make_fake_run
from PIL import Image
from test_eval_compute import _tiny_run

from evaluation.formatting import fmt_gap, fmt_seconds
from evaluation.report import render_report
from hospitalnet.cli import main

IMG = re.compile(r"<img\b[^>]*>")
SRC = re.compile(r'src="([^"]*)"')


def _html(paths):
    return paths.html.read_text(encoding="utf-8")


def _assert_self_contained(html: str) -> int:
    """No address outside the page; every image an embedded PNG that decodes. Returns #images."""
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "url(" not in html
    assert not re.search(r"""(src|href)=["']?/""", html)
    for href in re.findall(r'href="([^"]*)"', html):
        assert href.startswith("#") or href == "data:,", href
    images = IMG.findall(html)
    for tag in images:
        (src,) = SRC.findall(tag)
        assert src.startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert png.format == "PNG" and png.width > 100 and png.height > 100
        png.verify()
    return len(images)


def test_network_report_is_one_self_contained_page(rendered):
    html = _html(rendered.network)
    assert _assert_self_contained(html) >= 10
    assert "Content-Security-Policy" in html


def test_sections_follow_the_evaluation_note(rendered):
    html = _html(rendered.network)
    order = ["headline", "curves", "hospitals", "findings", "calibration", "data", "network", "run"]
    positions = [html.index(f'<section id="{name}"') for name in order]
    assert positions == sorted(positions)


def test_headline_table_shows_the_summary(rendered):
    html = _html(rendered.network)
    summary = json.loads(rendered.network.summary_json.read_text())
    table = html[
        html.index('id="headline-table"') : html.index("</table>", html.index("headline-table"))
    ]
    for name in ("ECL (edge-consensus)", "Gossip-SGD", "FedAvg", "Pooled (all data in one place)"):
        assert name in table
    ecl = summary["methods"]["ecl"]
    assert f"{ecl['mean_site_macro_auroc']:.3f}" in table
    assert fmt_gap(ecl["gap_to_pooled"]) in table
    assert f"{ecl['worst_site_macro_auroc']:.3f}" in table
    assert "reference" in table
    assert fmt_seconds(ecl["wall_seconds"]) in table
    # pooled is the last row of the table, shown as the reference
    assert table.rindex("<tr") == table.index('<tr class="reference"')


def test_undefined_and_unreliable_are_marked(rendered):
    html = _html(rendered.network)
    assert 'title="undefined: no positive cases' in html
    assert "unreliable: fewer than 10 positive cases" in html
    assert "\u2020" in html


def test_markdown_has_the_same_tables(rendered):
    md = rendered.network.markdown.read_text(encoding="utf-8")
    summary = json.loads(rendered.network.summary_json.read_text())
    assert md.index("## 1. Headline") < md.index("## 4. AUROC per finding") < md.index("## 8. Run")
    ecl_row = next(line for line in md.splitlines() if line.startswith("| ECL (edge-consensus) |"))
    assert f"{summary['methods']['ecl']['mean_site_macro_auroc']:.3f}" in ecl_row
    assert "| n/a |" in md
    # every table row has as many cells as its header
    for block in re.split(r"\n\n", md):
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines:
            widths = {len(re.findall(r"(?<!\\)\|", ln)) for ln in lines}
            assert len(widths) == 1, block
    assert "<redacted path>" in md and "```yaml" in md


def test_site_report_is_restricted_to_the_hospital(rendered):
    html = _html(rendered.site)
    assert _assert_self_contained(html) >= 3
    assert "Hospital n3" in html
    metrics = pd.read_csv(rendered.site.metrics_csv)
    assert set(metrics["site"]) == {"n3"}
    assert set(metrics["testset"]) == {"global", "local_n3"}
    summary = json.loads(rendered.site.summary_json.read_text())
    assert summary["sites"] == ["n3"]
    assert "local_n5" not in rendered.site.summary_json.read_text()
    # its links only, and its own test set's per-finding table with intervals
    assert "n2\u2013n3" in html and "n5\u2013n6" not in html
    assert "AUROC per finding (own test patients)" in html
    assert rendered.site.html.name == "report_n3.html"
    md = rendered.site.markdown.read_text()
    assert md.startswith("# Hospital n3")


def test_deployment_run_gets_the_hospital_view(tmp_path):
    make_fake_run(tmp_path, sites=["n3"], methods=["ecl"], with_global=False, n_local=30)
    paths = render_report(tmp_path, n_resamples=20)
    html = _html(paths)
    _assert_self_contained(html)
    assert paths.html.name == "report.html"
    assert "Hospital n3" in html and "not part of this run" in html


def test_minimal_run_without_descriptive_files(tmp_path):
    paths = render_report(_tiny_run(tmp_path).root, n_resamples=10)
    html = _html(paths)
    _assert_self_contained(html)
    assert "data.json was not recorded" in html and "network.json was not recorded" in html
    assert "config.yaml was not recorded" in html
    assert "No evaluation points were stored" in html


def test_cli_report_prints_the_path(tmp_path, capsys):
    make_fake_run(tmp_path, n_global=60, n_local=20)
    assert main(["report", str(tmp_path), "--site", "n1", "--resamples", "10"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report_n1.html")


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    make_fake_run(tmp_path, n_global=60, n_local=20)
    (tmp_path / "predictions" / "fedavg.npz").unlink()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hospitalnet: error:") and "fedavg.npz" in err
    assert len(err.splitlines()) == 1
    assert main(["report", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize(
    "value, text",
    [(0.0123, "+0.012"), (-0.0456, "\u22120.046"), (0.0, "0.000"), (float("nan"), "n/a")],
)
def test_gap_format(value, text):
    assert fmt_gap(value) == text
