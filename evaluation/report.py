"""The report of a run: report.html (one self-contained page) and report.md, from Jinja templates.

``render_report(run_dir)`` is the network view (every site); ``render_report(run_dir, site="n3")``
is that hospital's own report (its model on its own test patients, over time, against pooled and on
the global test set where the run has them), written as ``report_n3.html`` etc. A run with a
single site (a deployment) gets the hospital view under the plain names.

The HTML page needs nothing but itself: figures are PNG data URIs, the style sheet is inline, there
is no script, no web font and no external address; a Content-Security-Policy forbids any fetch but
data: images. Sections follow EVALUATION.md: headline table, learning curves, one panel per
hospital, per-finding heatmaps, calibration (Brier, log loss, ECE and reliability diagrams), the
data picture, the network, the run's configuration. The numbers come from
:mod:`evaluation.compute`, the context from :mod:`evaluation.report_context` (the calibration
section's from :mod:`evaluation.report_calibration`), the Markdown tables from
:mod:`evaluation.report_markdown`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from evaluation.compute import evaluate_run, write_metrics
from evaluation.metrics import DEFAULT_RESAMPLES
from evaluation.report_context import network_context, site_context
from evaluation.report_markdown import network_view, site_view, table_text
from evaluation.rundata import load_run
from hospitalnet.rundir import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    metrics_csv: Path
    summary_json: Path


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("evaluation", "templates"),
        autoescape=select_autoescape(["html.j2", "html"]),  # report.md.j2 is not HTML
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md_table"] = table_text
    return env


def render_html(ctx: dict[str, Any]) -> str:
    return _environment().get_template("report.html.j2").render(**ctx)


def render_markdown(view: str, md: dict[str, Any]) -> str:
    return _environment().get_template("report.md.j2").render(view=view, md=md)


def render_report(
    run_dir: str | Path, site: str | None = None, *, n_resamples: int = DEFAULT_RESAMPLES
) -> ReportPaths:
    """Re-compute every number from the stored predictions and write the report files.

    Parameters
    ----------
    run_dir
        A run directory as written by training (see ``hospitalnet.rundir``).
    site
        None: the whole network (``report.html``, ``report.md``, ``metrics.csv``,
        ``summary.json``); a run with a single site gets that hospital's view under these names.
        A site id such as ``"n3"``: that hospital's own report, written as ``report_n3.html``,
        ``report_n3.md``, ``metrics_n3.csv`` and ``summary_n3.json``.
    n_resamples
        Patient bootstrap resamples per confidence interval (0 = no intervals).
    """
    run = load_run(run_dir)
    ev = evaluate_run(run, None if site is None else [site], n_resamples=n_resamples)
    rd = run.rundir
    if site is None:
        paths = ReportPaths(rd.report_html, rd.report_md, rd.metrics_csv, rd.summary_json)
    else:
        paths = ReportPaths(
            *(
                rd.root / f"{stem}_{site}.{ext}"
                for stem, ext in (
                    ("report", "html"),
                    ("report", "md"),
                    ("metrics", "csv"),
                    ("summary", "json"),
                )
            )
        )
    write_metrics(ev, paths.metrics_csv, paths.summary_json)
    view_site = site if site is not None else (run.sites[0] if len(run.sites) == 1 else None)
    if view_site is None:
        ctx = network_context(ev)
        markdown = render_markdown("network", network_view(ev, ctx))
    else:
        ctx = site_context(ev, view_site)
        markdown = render_markdown("site", site_view(ev, ctx))
    atomic_write_bytes(paths.html, render_html(ctx).encode("utf-8"))
    atomic_write_bytes(paths.markdown, markdown.encode("utf-8"))
    log.info("report written to %s", paths.html)
    return paths
