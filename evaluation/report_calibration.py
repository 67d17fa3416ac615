"""The report's calibration section, for the network and the hospital view, HTML and Markdown.

Numbers come from ``summary.json`` (:func:`evaluation.compute.build_summary`); the figure from
:func:`evaluation.plots.reliability_diagram`.
"""

from __future__ import annotations

from typing import Any

from evaluation import plots
from evaluation.calibration import ECE_BINS, METRIC_NAMES, METRICS
from evaluation.compute import REFERENCE, Evaluation
from evaluation.formatting import MINUS, cell, score_cell, score_gap_cell
from evaluation.rundata import GLOBAL
from hospitalnet.labels import LABELS


def _gap(entry: dict[str, Any] | None, reference: bool) -> dict[str, str]:
    return (
        cell("reference", "the pooled model itself", "ref") if reference else score_gap_cell(entry)
    )


def _heads(with_gap: bool, suffix: str = "") -> list[str]:
    heads = []
    for name in METRICS:
        heads.append(METRIC_NAMES[name] + suffix)
        if with_gap:
            heads.append("gap to pooled")
    return heads


def _method_rows(ev: Evaluation, site: str | None) -> list[dict[str, Any]]:
    """Per method: each score and its gap to pooled (a hospital's model, or the hospitals' mean)."""
    colours = plots.method_colours(ev.methods)
    rows = []
    for method in plots.order_methods(ev.methods):
        s = ev.summary["methods"][method]
        reference = method == REFERENCE
        cells = []
        for name in METRICS:
            if site is None:
                c = s["calibration"][name]
                value = score_cell({"value": c["mean_site"]})
                if c["worst_site"]:
                    value["title"] = f"worst hospital: {c['worst_site']} "
                    value["title"] += f"({c['worst_site_value']:.3f})"
                cells.append(value)
            else:
                c = s["per_site"][site][ev.headline_testset(site)]["calibration"][name]
                cells.append(score_cell(c, with_ci=True))
            if ev.reference:
                cells.append(_gap(c, reference))
        rows.append(
            {
                "method": plots.method_name(method),
                "colour": colours[method],
                "reference": reference,
                "cells": cells,
            }
        )
    return rows


def _site_tables(ev: Evaluation) -> list[dict[str, Any]]:
    """Per score: hospital x method, with each method's gap to pooled next to it."""
    methods = plots.order_methods(ev.methods)
    heads = []
    for m in methods:
        heads.append(plots.method_name(m).split(" (")[0])
        if ev.reference and m != REFERENCE:
            heads.append("gap")
    tables = []
    for name in METRICS:
        rows = []
        for site in plots.order_sites(ev.sites):
            cells = []
            for m in methods:
                per = ev.summary["methods"][m]["per_site"][site][ev.headline_testset(site)]
                cells.append(score_cell(per["calibration"][name]))
                if ev.reference and m != REFERENCE:
                    cells.append(score_gap_cell(per["calibration"][name]))
            rows.append({"site": site, "cells": cells})
        tables.append(
            {
                "name": f"{METRIC_NAMES[name]} per hospital",
                "first": "Hospital",
                "heads": heads,
                "rows": rows,
            }
        )
    return tables


def _finding_table(ev: Evaluation) -> dict[str, Any] | None:
    """Finding x method: mean over hospitals of the Brier score's gap to pooled (and the score)."""
    if not ev.reference:
        return None
    m = ev.metrics
    headline = [t == ev.headline_testset(s) for s, t in zip(m["site"], m["testset"])]
    means = m[headline].groupby(["method", "label"])[["brier", "brier_gap_to_pooled"]].mean()
    methods = [x for x in plots.order_methods(ev.methods) if x != REFERENCE]
    rows = []
    for label in LABELS:
        ref = means.loc[(REFERENCE, label), "brier"]
        cells = [score_cell({"value": ref})]
        for method in methods:
            gap = means.loc[(method, label), "brier_gap_to_pooled"]
            cells.append(score_gap_cell({"gap_to_pooled": gap}))
        rows.append({"site": label.replace("_", " "), "cells": cells})
    heads = ["Pooled"] + [plots.method_name(x).split(" (")[0] + " gap" for x in methods]
    return {
        "name": "Brier score per finding (mean over hospitals)",
        "first": "Finding",
        "heads": heads,
        "rows": rows,
    }


def calibration_context(ev: Evaluation, site: str | None = None) -> dict[str, Any]:
    """The section's context: the network's (``site`` None) or one hospital's model."""
    sites = list(ev.sites) if site is None else [site]
    where = "shared global test set" if GLOBAL in ev.run.testsets else "own test patients"
    png = plots.reliability_diagram(ev, sites)
    return {
        "where": where,
        "ece_bins": ECE_BINS,
        "heads": _heads(ev.reference is not None),
        "rows": _method_rows(ev, site),
        "site_tables": _site_tables(ev) + [t for t in [_finding_table(ev)] if t]
        if site is None
        else [],
        "fig": None
        if png is None
        else {"src": plots.data_uri(png), "alt": "reliability diagrams", "caption": ""},
    }


def _text(c: dict[str, str]) -> str:
    return c["text"].replace(MINUS, "-")


def calibration_markdown(cal: dict[str, Any], network: bool) -> dict[str, Any]:
    """The section's tables as plain rows for report.md."""
    return {
        "where": cal["where"],
        "ece_bins": cal["ece_bins"],
        "scope": "mean over hospitals" if network else "this hospital's model (95% CI)",
        "methods": {
            "head": ["Method", *cal["heads"]],
            "rows": [[r["method"], *(_text(c) for c in r["cells"])] for r in cal["rows"]],
        },
        "site_tables": [
            {
                "title": t["name"],
                "table": {
                    "head": [t["first"], *t["heads"]],
                    "rows": [[r["site"], *(_text(c) for c in r["cells"])] for r in t["rows"]],
                },
            }
            for t in cal["site_tables"]
        ],
    }
