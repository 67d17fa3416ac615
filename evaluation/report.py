"""report.html (one self-contained page) and report.md, rendered from an :class:`Evaluation`.

The HTML page needs nothing but itself: figures are PNG data URIs, the style sheet is inline, there
is no script, no web font and no external address; a Content-Security-Policy forbids any fetch but
data: images. Sections follow EVALUATION.md: headline table, learning curves, one panel per
hospital, per-finding heatmaps, the data picture, the network, the run's configuration.

``render_report(run_dir)`` is the network view (every site); ``render_report(run_dir, site="n3")``
is that hospital's own report (its model on its own test patients, over time, against pooled and on
the global test set where the run has them), written as ``report_n3.html`` etc.
A run with a single site (a deployment) gets the hospital view under the plain names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from evaluation import plots
from evaluation.compute import REFERENCE, Evaluation, evaluate_run, write_metrics
from evaluation.metrics import CI_LEVEL, DEFAULT_RESAMPLES, MIN_POSITIVES, LabelCounts
from evaluation.privacy import redact_config, redact_text
from evaluation.rundata import GLOBAL, load_run, local_testset
from hospitalnet import __version__
from hospitalnet.labels import LABELS
from hospitalnet.rundir import atomic_write_bytes

log = logging.getLogger(__name__)

MINUS = "\u2212"
NA = "n/a"


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    metrics_csv: Path
    summary_json: Path


# --- formatting (one place, so HTML and Markdown agree) ----------------------------------------


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def fmt_auroc(v: Any) -> str:
    return f"{float(v):.3f}" if _finite(v) else NA


def fmt_gap(v: Any, minus: str = MINUS) -> str:
    if not _finite(v):
        return NA
    v = float(v)
    if round(v, 3) == 0:
        return "0.000"
    return f"+{v:.3f}" if v > 0 else f"{minus}{abs(v):.3f}"


def fmt_ci(lo: Any, hi: Any) -> str:
    return f"{float(lo):.3f}\u2013{float(hi):.3f}" if _finite(lo) and _finite(hi) else ""


def fmt_seconds(v: Any) -> str:
    if not _finite(v):
        return "not recorded"
    s = float(v)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(round((s % 3600) / 60)):02d} min"


def fmt_started(v: Any) -> str:
    """ISO time stamp -> "2025-01-02 03:04 UTC" (as written when it does not parse)."""
    if not v:
        return "not recorded"
    try:
        t = datetime.fromisoformat(str(v))
    except ValueError:
        return redact_text(v)
    if t.tzinfo is not None:
        return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M")


def fmt_bytes(v: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{int(v)} B"


def fmt_int(v: Any) -> str:
    return f"{int(v):,}" if _finite(v) else NA


def cell(text: str, title: str = "", cls: str = "") -> dict[str, str]:
    """A table cell: shown text, hover explanation, CSS class (na / unreliable / ref ...)."""
    return {"text": text, "title": title, "cls": cls}


def auroc_cell(row: Any) -> dict[str, str]:
    """An AUROC with its interval and counts on hover; n/a or a dagger where honesty needs it."""
    counts = LabelCounts(int(row["n"]), int(row["n_pos"]), int(row["n_neg"]))
    tally = f"n={counts.n}, positives={counts.n_pos}, negatives={counts.n_neg}"
    if not _finite(row["auroc"]):
        return cell(NA, f"{counts.undefined_reason or 'undefined'} ({tally})", "na")
    ci = fmt_ci(row["ci_low"], row["ci_high"])
    title = f"{tally}" + (f"; 95% CI {ci}" if ci else "")
    if counts.unreliable:
        return cell(
            fmt_auroc(row["auroc"]) + "\u2020",
            f"unreliable: fewer than {MIN_POSITIVES} positive cases; {title}",
            "unreliable",
        )
    return cell(fmt_auroc(row["auroc"]), title)


def macro_cell(entry: dict[str, Any] | None, with_ci: bool = False) -> dict[str, str]:
    if not entry or entry.get("macro_auroc") is None:
        return cell(NA, "undefined: no finding has both positive and negative cases", "na")
    ci = fmt_ci(entry.get("ci_low"), entry.get("ci_high"))
    excluded = entry.get("n_excluded", 0)
    title = f"mean over {entry['n_defined']} findings"
    if excluded:
        title += f"; {excluded} excluded as undefined"
    if ci:
        title += f"; 95% CI {ci}"
    text = fmt_auroc(entry["macro_auroc"])
    if with_ci and ci:
        text += f" ({ci})"
    return cell(text, title, "excluded" if excluded else "")


def gap_cell(v: Any, what: str = "") -> dict[str, str]:
    if not _finite(v):
        return cell(NA, "undefined: AUROC undefined for this model or for pooled", "na")
    cls = "neg" if v < -0.0005 else ("pos" if v > 0.0005 else "")
    return cell(fmt_gap(v), what or "AUROC minus pooled AUROC on the same test set", cls)


# --- context -----------------------------------------------------------------------------------


def _figure(png: bytes | None, alt: str, caption: str) -> dict[str, Any] | None:
    if png is None:
        return None
    return {"src": plots.data_uri(png), "alt": alt, "caption": caption}


def _headline_rows(ev: Evaluation) -> list[dict[str, Any]]:
    rows = []
    for method in plots.order_methods(ev.methods):
        s = ev.summary["methods"][method]
        ref = method == REFERENCE
        worst = s["worst_site"]
        rows.append(
            {
                "method": plots.method_name(method),
                "key": method,
                "colour": plots.method_colours(ev.methods)[method],
                "reference": ref,
                "mean": cell(
                    fmt_auroc(s["mean_site_macro_auroc"]),
                    "mean over hospitals of each hospital model's macro AUROC",
                ),
                "worst": cell(
                    NA if worst is None else f"{fmt_auroc(s['worst_site_macro_auroc'])}",
                    "" if worst is None else f"lowest hospital: {worst}",
                    "na" if worst is None else "",
                ),
                "worst_site": "" if worst is None else worst,
                "local": cell(
                    fmt_auroc(s["mean_site_local_macro_auroc"]),
                    "mean over hospitals of the macro AUROC on its own test patients",
                ),
                "gap": cell("reference", "the pooled model itself", "ref")
                if ref
                else gap_cell(s["gap_to_pooled"], "mean over hospitals of (macro AUROC - pooled)"),
                "wall": fmt_seconds(s["wall_seconds"]),
            }
        )
    return rows


def _key_sentence(ev: Evaluation) -> str | None:
    """One plain sentence with the headline claim, made only of numbers computed here."""
    ref = ev.summary["methods"].get(REFERENCE)
    parts = []
    for method in plots.order_methods(ev.methods):
        if method == REFERENCE:
            continue
        s = ev.summary["methods"][method]
        if s["mean_site_macro_auroc"] is None:
            continue
        text = f"{plots.method_name(method).split(' (')[0]} {fmt_auroc(s['mean_site_macro_auroc'])}"
        if s["gap_to_pooled"] is not None:
            text += f" ({fmt_gap(s['gap_to_pooled'])} vs pooled)"
        parts.append(text)
    if not parts:
        return None
    where = "the shared global test set" if GLOBAL in ev.run.testsets else "their own test patients"
    sentence = f"Mean macro AUROC of the hospitals' models on {where}: " + "; ".join(parts) + "."
    if ref and ref["mean_site_macro_auroc"] is not None:
        sentence += f" The pooled model reaches {fmt_auroc(ref['mean_site_macro_auroc'])}."
    return sentence


def _per_site_table(ev: Evaluation) -> dict[str, Any]:
    """Hospital x method macro AUROC on the headline test set (and own test set)."""
    methods = plots.order_methods(ev.methods)
    rows = []
    for site in plots.order_sites(ev.sites):
        cells = []
        for m in methods:
            per = ev.summary["methods"][m]["per_site"][site]
            cells.append(macro_cell(per.get(ev.headline_testset(site))))
            if local_testset(site) in per and ev.headline_testset(site) != local_testset(site):
                cells.append(macro_cell(per.get(local_testset(site))))
        rows.append({"site": site, "cells": cells})
    has_local = any(local_testset(s) in ev.run.testsets for s in ev.sites) and (
        GLOBAL in ev.run.testsets
    )
    return {
        "methods": [plots.method_name(m).split(" (")[0] for m in methods],
        "sub": ["global", "own"]
        if has_local
        else ["global" if GLOBAL in ev.run.testsets else "own"],
        "rows": rows,
    }


def _label_table(
    ev: Evaluation, method: str, sites: Sequence[str], local: bool
) -> dict[str, Any] | None:
    """Finding x hospital AUROC cells of one method (CI and counts on hover); None if empty."""
    m = ev.metrics[ev.metrics["method"] == method].set_index(["site", "testset", "label"])
    if local:
        sites = [s for s in sites if local_testset(s) in ev.run.testsets]
    if not sites:
        return None
    rows = []
    for label in LABELS:
        cells = []
        for site in sites:
            testset = local_testset(site) if local else ev.headline_testset(site)
            found = (site, testset, label) in m.index
            cells.append(auroc_cell(m.loc[(site, testset, label)]) if found else cell(NA, "", "na"))
        rows.append({"label": label.replace("_", " "), "cells": cells})
    where = "each hospital's own test patients" if local else _testset_words(ev)
    return {"where": where, "sites": [s for s in sites], "rows": rows}


def _label_tables(ev: Evaluation, sites: Sequence[str]) -> list[dict[str, Any]]:
    """Per method: the finding x hospital table on the headline test set and on own test sets."""
    out = []
    for method in plots.order_methods(ev.methods):
        tables = [_label_table(ev, method, sites, local=False)]
        if GLOBAL in ev.run.testsets:
            tables.append(_label_table(ev, method, sites, local=True))
        out.append({"method": plots.method_name(method), "tables": [t for t in tables if t]})
    return out


def _testset_words(ev: Evaluation) -> str:
    return "shared global test set" if GLOBAL in ev.run.testsets else "own test patients"


def _testset_counts(ev: Evaluation, testset: str) -> list[dict[str, Any]]:
    data = ev.run.testsets[testset]
    rows = []
    for j, label in enumerate(LABELS):
        y = data.labels[:, j]
        known = y[~np.isnan(y)]
        counts = LabelCounts(int(known.size), int((known == 1).sum()), int((known == 0).sum()))
        note = counts.undefined_reason or (
            f"unreliable (< {MIN_POSITIVES} positives)" if counts.unreliable else ""
        )
        rows.append(
            {
                "label": label.replace("_", " "),
                "n": counts.n,
                "pos": counts.n_pos,
                "neg": counts.n_neg,
                "note": note,
                "cls": "na" if counts.undefined_reason else ("unreliable" if note else ""),
            }
        )
    return rows


def _data_rows(ev: Evaluation, sites: Sequence[str]) -> list[dict[str, Any]]:
    info = (ev.run.data or {}).get("sites") or {}
    rows = []
    for site in plots.order_sites(sites):
        d = info.get(site)
        if not d:
            continue
        views = d.get("views") or {}
        rows.append(
            {
                "site": site,
                "description": redact_text(d.get("description", "")),
                "loader": redact_text(d.get("loader", "")),
                "train": fmt_int(d.get("train_images")),
                "test": fmt_int(d.get("test_images")),
                "patients": fmt_int(d.get("patients")),
                "views": ", ".join(f"{redact_text(k)} {fmt_int(v)}" for k, v in views.items()),
                "jsd": f"{float(d['jsd']):.3f}" if _finite(d.get("jsd")) else NA,
            }
        )
    return rows


def _network_tables(ev: Evaluation, sites: Sequence[str] | None) -> list[dict[str, Any]]:
    """Per method with messages: one row per link (only links touching ``sites`` if given)."""
    stats = (ev.run.network or {}).get("methods") or {}
    out = []
    for method in plots.order_methods([m for m in stats if m in ev.methods]):
        s = stats[method] or {}
        rows = []
        for e in s.get("edges") or []:
            a, b = str(e.get("a")), str(e.get("b"))
            if sites is not None and a not in sites and b not in sites:
                continue
            msgs = e.get("messages") or {}
            sent = e.get("bytes") or {}
            active = e.get("active_at_end")
            rows.append(
                {
                    "link": f"{redact_text(a)}\u2013{redact_text(b)}",
                    "msg_ab": fmt_int(msgs.get(f"{a}->{b}", 0)),
                    "msg_ba": fmt_int(msgs.get(f"{b}->{a}", 0)),
                    "bytes": fmt_bytes(float(sum(sent.values()))),
                    "dropped": fmt_int(e.get("dropped", 0)),
                    "stale": fmt_int(e.get("stale", 0)),
                    "duplicates": fmt_int(e.get("duplicates", 0)),
                    "rejected": fmt_int(e.get("rejected", 0)),
                    "inactive_events": fmt_int(e.get("inactive_events", 0)),
                    "active": "yes" if active is not False else "no",
                    "cls": "inactive" if active is False else "",
                }
            )
        if rows:
            out.append(
                {
                    "method": plots.method_name(method),
                    "rows": rows,
                    "dead": ", ".join(redact_text(x) for x in s.get("dead_sites") or []),
                    "isolated": ", ".join(redact_text(x) for x in s.get("isolated_sites") or []),
                }
            )
    return out


def _run_info(ev: Evaluation) -> dict[str, Any]:
    info = ev.run.info
    versions = info.versions.model_dump(exclude_none=True) if info.versions else {}
    per_method = info.wall_seconds.per_method
    return {
        "rows": [
            ("Seed", str(ev.run.seed)),
            ("Mode", redact_text(ev.run.mode)),
            ("Hospitals", ", ".join(s for s in plots.order_sites(ev.run.sites))),
            ("Methods", ", ".join(plots.order_methods(ev.methods))),
            ("Started", fmt_started(info.started)),
            ("Device", redact_text(info.device or "not recorded")),
            ("Command", redact_text(info.command or "not recorded")),
            ("Wall time (total)", fmt_seconds(info.wall_seconds.total)),
            (
                "Confidence intervals",
                f"{int(CI_LEVEL * 100)}% percentile bootstrap over patients, "
                f"{ev.n_resamples} resamples, seeded from the run seed",
            ),
        ],
        "wall": [
            (plots.method_name(m), fmt_seconds(per_method.get(m)))
            for m in plots.order_methods(ev.methods)
        ],
        "versions": [(redact_text(k), redact_text(v)) for k, v in versions.items()],
        "config": redact_config(ev.run.config_text) if ev.run.config_text is not None else None,
    }


def _common(ev: Evaluation, title: str) -> dict[str, Any]:
    return {
        "title": title,
        "version": __version__,
        "min_positives": MIN_POSITIVES,
        "ci_level": int(CI_LEVEL * 100),
        "n_resamples": ev.n_resamples,
        "has_reference": ev.reference is not None,
        "has_global": GLOBAL in ev.run.testsets,
        "run": _run_info(ev),
        "meta": {
            "methods": ", ".join(plots.order_methods(ev.methods)),
            "seed": ev.run.seed,
            "started": fmt_started(ev.run.info.started),
            "wall": fmt_seconds(ev.summary.get("wall_seconds_total")),
        },
        "legend_methods": [
            {"name": plots.method_name(m), "colour": c, "dashed": m == REFERENCE}
            for m, c in plots.method_colours(ev.methods).items()
        ],
    }


def network_context(ev: Evaluation) -> dict[str, Any]:
    """Everything the network view of the template shows."""
    sites = plots.order_sites(ev.sites)
    heatmaps = []
    for method in plots.order_methods(ev.methods):
        heatmaps.append(_figure(plots.auroc_heatmap(ev, method), f"AUROC heatmap {method}", ""))
    gaps = [
        _figure(plots.gap_heatmap(ev, m), f"gap heatmap {m}", "")
        for m in plots.order_methods(ev.methods)
    ]
    net = ev.run.network
    return _common(ev, "Federated chest X-ray evaluation") | {
        "view": "network",
        "n_sites": len(sites),
        "sites_upper": list(sites),
        "key_sentence": _key_sentence(ev),
        "headline": _headline_rows(ev),
        "per_site": _per_site_table(ev),
        "fig_curves": _figure(plots.learning_curves(ev), "learning curves", ""),
        "fig_loss": _figure(plots.loss_curves(ev), "training loss", ""),
        "fig_hospitals": _figure(plots.hospital_panels(ev), "per-hospital curves", ""),
        "fig_heatmaps": [f for f in heatmaps if f],
        "fig_gaps": [f for f in gaps if f],
        "fig_local_macro": _figure(plots.local_macro_heatmap(ev), "local macro heatmap", ""),
        "label_tables": _label_tables(ev, sites),
        "global_counts": _testset_counts(ev, GLOBAL) if GLOBAL in ev.run.testsets else None,
        "fig_sizes": _figure(plots.data_sizes(ev.run.data, sites), "images per hospital", ""),
        "fig_prevalence": _figure(plots.prevalence_heatmap(ev.run.data, sites), "prevalence", ""),
        "data_rows": _data_rows(ev, sites),
        "has_data": ev.run.data is not None,
        "fig_topology": _figure(plots.network_panels(net, ev.methods, sites), "network", ""),
        "fig_traffic": _figure(plots.edge_traffic(net, ev.methods), "bytes per link", ""),
        "network_tables": _network_tables(ev, None),
        "has_network": net is not None,
        "topology_kind": redact_text(((net or {}).get("topology") or {}).get("kind", "")),
    }


def _site_headline(ev: Evaluation, site: str) -> list[dict[str, Any]]:
    rows = []
    colours = plots.method_colours(ev.methods)
    for method in plots.order_methods(ev.methods):
        per = ev.summary["methods"][method]["per_site"][site]
        own = per.get(local_testset(site))
        shared = per.get(GLOBAL)
        ref = method == REFERENCE
        rows.append(
            {
                "method": plots.method_name(method),
                "colour": colours[method],
                "reference": ref,
                "own": macro_cell(own, with_ci=True)
                if own
                else cell(NA, "no local test set", "na"),
                "own_gap": cell("reference", "", "ref")
                if ref
                else gap_cell((own or {}).get("gap_to_pooled")),
                "global": macro_cell(shared, with_ci=True)
                if shared
                else cell(NA, "no shared global test set in this run", "na"),
                "global_gap": cell("reference", "", "ref")
                if ref
                else gap_cell((shared or {}).get("gap_to_pooled")),
                "wall": fmt_seconds(ev.summary["methods"][method]["wall_seconds"]),
            }
        )
    return rows


def _site_label_rows(ev: Evaluation, site: str, testset: str) -> dict[str, Any] | None:
    m = ev.metrics[(ev.metrics["site"] == site) & (ev.metrics["testset"] == testset)]
    if m.empty:
        return None
    methods = plots.order_methods([x for x in ev.methods if x in set(m["method"])])
    rows = []
    for label in LABELS:
        lr = m[m["label"] == label].set_index("method")
        first = lr.iloc[0]
        counts = LabelCounts(int(first["n"]), int(first["n_pos"]), int(first["n_neg"]))
        cells = []
        for method in methods:
            r = lr.loc[method]
            a = auroc_cell(r)
            ci = fmt_ci(r["ci_low"], r["ci_high"])
            cells.append(a | {"ci": ci})
            if ev.reference and method != REFERENCE:
                cells.append(gap_cell(r["gap_to_pooled"]) | {"ci": ""})
        rows.append(
            {
                "label": label.replace("_", " "),
                "n": counts.n,
                "pos": counts.n_pos,
                "neg": counts.n_neg,
                "note": counts.undefined_reason
                or (f"unreliable (< {MIN_POSITIVES} positives)" if counts.unreliable else ""),
                "cells": cells,
            }
        )
    heads = []
    for method in methods:
        heads.append(plots.method_name(method).split(" (")[0])
        if ev.reference and method != REFERENCE:
            heads.append("gap")
    where = "shared global test set" if testset == GLOBAL else "own test patients"
    return {"testset": testset, "where": where, "heads": heads, "rows": rows}


def site_context(ev: Evaluation, site: str) -> dict[str, Any]:
    """Everything a hospital's own report shows."""
    tables = [
        t
        for t in (
            _site_label_rows(ev, site, local_testset(site)),
            _site_label_rows(ev, site, GLOBAL),
        )
        if t
    ]
    label_figs = [
        _figure(
            plots.site_labels(ev, site, t),
            f"AUROC per finding ({t})",
            f"Dots: AUROC of each method's model of {site}; whiskers: {int(CI_LEVEL * 100)}% "
            f"confidence interval (bootstrap over patients); hollow diamonds: pooled model. "
            f"\u2020 fewer than {MIN_POSITIVES} positive cases; n/a: undefined.",
        )
        for t in ev.run.testsets_for(site)
    ]
    return _common(ev, f"Hospital {site}: model evaluation") | {
        "view": "site",
        "site": site,
        "headline": _site_headline(ev, site),
        "fig_site_curves": _figure(plots.site_curves(ev, site), "curves", ""),
        "fig_site_labels": [f for f in label_figs if f],
        "site_tables": tables,
        "fig_site_prevalence": _figure(plots.site_prevalence(ev.run.data, site), "prevalence", ""),
        "data_rows": _data_rows(ev, [site]),
        "has_data": ev.run.data is not None,
        "network_tables": _network_tables(ev, [site]),
        "has_network": ev.run.network is not None,
    }


# --- Markdown ----------------------------------------------------------------------------------


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(esc(h) for h in head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _md_cell(c: dict[str, str]) -> str:
    return c["text"].replace(MINUS, "-")


_MD_LEGEND = (
    f"`n/a` = undefined (no positive or no negative case; left out of the macro average). "
    f"`\u2020` = fewer than {MIN_POSITIVES} positive cases (unreliable). "
    "Gap = AUROC minus the pooled model's AUROC on the same test set (negative = worse)."
)


def network_markdown(ev: Evaluation, ctx: dict[str, Any]) -> str:
    out = [f"# {ctx['title']}", ""]
    if ctx["key_sentence"]:
        out += [ctx["key_sentence"].replace(MINUS, "-"), ""]
    out += [
        "## 1. Headline",
        "",
        _md_table(
            [
                "Method",
                "Mean hospital macro AUROC",
                "Worst hospital",
                "Mean gap to pooled",
                "Mean macro AUROC on own test patients",
                "Wall time",
            ],
            [
                [
                    r["method"],
                    _md_cell(r["mean"]),
                    f"{_md_cell(r['worst'])} ({r['worst_site']})"
                    if r["worst_site"]
                    else _md_cell(r["worst"]),
                    _md_cell(r["gap"]),
                    _md_cell(r["local"]),
                    r["wall"],
                ]
                for r in ctx["headline"]
            ],
        ),
        "",
        _MD_LEGEND,
        "",
    ]
    ps = ctx["per_site"]
    head = ["Hospital"] + [f"{m} ({sub})" for m in ps["methods"] for sub in ps["sub"]]
    out += [
        "### Macro AUROC per hospital",
        "",
        _md_table(head, [[r["site"]] + [_md_cell(c) for c in r["cells"]] for r in ps["rows"]]),
        "",
    ]
    curve_rows = []
    methods = plots.order_methods(ev.methods)
    ks = sorted({p["k"] for m in methods for p in ev.summary["methods"][m]["curve"]})
    for k in ks:
        row: list[str] = [str(k)]
        epochs = ""
        for m in methods:
            p = next((p for p in ev.summary["methods"][m]["curve"] if p["k"] == k), None)
            row.append(fmt_auroc(p["mean_site_macro_auroc"]) if p else "")
            if p and p["epochs"] is not None and not epochs:
                epochs = f"{p['epochs']:g}"
        curve_rows.append([row[0], epochs] + row[1:])
    if curve_rows:
        out += [
            "## 2. Learning curves (mean hospital macro AUROC)",
            "",
            _md_table(
                ["Eval point", "Epochs"] + [plots.method_name(m) for m in methods], curve_rows
            ),
            "",
        ]
    out += ["## 4. AUROC per finding", ""]
    for group in ctx["label_tables"]:
        for t in group["tables"]:
            out += [
                f"### {group['method']}: {t['where']}",
                "",
                _md_table(
                    ["Finding"] + t["sites"],
                    [[r["label"]] + [_md_cell(c) for c in r["cells"]] for r in t["rows"]],
                ),
                "",
            ]
    if ctx["global_counts"]:
        out += [
            "### Global test set: cases per finding",
            "",
            _md_table(
                ["Finding", "n", "positives", "negatives", "note"],
                [
                    [r["label"], str(r["n"]), str(r["pos"]), str(r["neg"]), r["note"]]
                    for r in ctx["global_counts"]
                ],
            ),
            "",
        ]
    out += _md_data_network_run(ctx, 5)
    return "\n".join(out) + "\n"


def _md_data_network_run(ctx: dict[str, Any], first: int) -> list[str]:
    """The data, network and run sections, numbered from ``first`` as in the HTML page."""
    out = []
    if ctx["data_rows"]:
        out += [
            f"## {first}. Data",
            "",
            _md_table(
                [
                    "Hospital",
                    "Description",
                    "Loader",
                    "Training images",
                    "Test images",
                    "Patients",
                    "Views",
                    "JSD",
                ],
                [
                    [
                        r["site"],
                        r["description"],
                        r["loader"],
                        r["train"],
                        r["test"],
                        r["patients"],
                        r["views"],
                        r["jsd"],
                    ]
                    for r in ctx["data_rows"]
                ],
            ),
            "",
        ]
    if ctx["network_tables"]:
        out += [f"## {first + 1}. Network", ""]
        for t in ctx["network_tables"]:
            out += [
                f"### {t['method']}",
                "",
                _md_table(
                    [
                        "Link",
                        "msgs a\u2192b",
                        "msgs b\u2192a",
                        "bytes",
                        "dropped",
                        "stale",
                        "duplicates",
                        "rejected",
                        "inactive events",
                        "active at end",
                    ],
                    [
                        [
                            r["link"],
                            r["msg_ab"],
                            r["msg_ba"],
                            r["bytes"],
                            r["dropped"],
                            r["stale"],
                            r["duplicates"],
                            r["rejected"],
                            r["inactive_events"],
                            r["active"],
                        ]
                        for r in t["rows"]
                    ],
                ),
                "",
            ]
            if t["dead"] or t["isolated"]:
                out += [
                    f"Dead sites: {t['dead'] or 'none'}; isolated: {t['isolated'] or 'none'}",
                    "",
                ]
    run = ctx["run"]
    out += [
        f"## {first + 2}. Run",
        "",
        _md_table(["", ""], run["rows"]),
        "",
        _md_table(["Method", "Wall time"], run["wall"]),
        "",
    ]
    if run["versions"]:
        out += [_md_table(["Software", "Version"], run["versions"]), ""]
    if run["config"] is not None:
        out += ["```yaml", run["config"].rstrip(), "```", ""]
    return out


def _md_site_curve(ev: Evaluation, site: str) -> list[str]:
    """This hospital's macro AUROC per eval point, one column per method and test set."""
    c = ev.curves[ev.curves["site"] == site]
    if c.empty:
        return ["## 2. Over time", "", "No evaluation points were stored during training.", ""]
    methods = plots.order_methods([m for m in ev.methods if m in set(c["method"])])
    columns = [
        (m, t)
        for m in methods
        for t in ev.run.testsets_for(site)
        if not c[(c["method"] == m) & (c["testset"] == t)].empty
    ]
    table = c.pivot_table(index="k", columns=["method", "testset"], values="macro_auroc")
    epochs = c.groupby("k")["epochs"].first()
    rows = []
    for k in table.index:
        e = epochs.get(k)
        row = [str(k), "" if e is None or not _finite(e) else f"{e:g}"]
        row += [fmt_auroc(table[col].get(k)) if col in table else NA for col in columns]
        rows.append(row)
    head = ["Eval point", "Epochs"] + [
        f"{plots.method_name(m).split(' (')[0]} ({'global' if t == GLOBAL else 'own'})"
        for m, t in columns
    ]
    return ["## 2. Over time (macro AUROC)", "", _md_table(head, rows), ""]


def site_markdown(ev: Evaluation, ctx: dict[str, Any]) -> str:
    out = [
        f"# {ctx['title']}",
        "",
        "## 1. Headline",
        "",
        _md_table(
            [
                "Method",
                "Macro AUROC, own test patients (95% CI)",
                "Gap to pooled",
                "Macro AUROC, global test set (95% CI)",
                "Gap to pooled",
                "Wall time",
            ],
            [
                [
                    r["method"],
                    _md_cell(r["own"]),
                    _md_cell(r["own_gap"]),
                    _md_cell(r["global"]),
                    _md_cell(r["global_gap"]),
                    r["wall"],
                ]
                for r in ctx["headline"]
            ],
        ),
        "",
        _MD_LEGEND,
        "",
    ]
    out += _md_site_curve(ev, ctx["site"].lower())
    out += ["## 3. Per finding", ""]
    for t in ctx["site_tables"]:
        out += [
            f"### AUROC per finding ({t['where']})",
            "",
            _md_table(
                ["Finding", "n", "positives", "negatives"] + t["heads"] + ["note"],
                [
                    [r["label"], str(r["n"]), str(r["pos"]), str(r["neg"])]
                    + [_md_cell(c) + (f" ({c['ci']})" if c.get("ci") else "") for c in r["cells"]]
                    + [r["note"]]
                    for r in t["rows"]
                ],
            ),
            "",
        ]
    out += _md_data_network_run(ctx, 4)
    return "\n".join(out) + "\n"


# --- entry point -------------------------------------------------------------------------------


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("evaluation", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(ctx: dict[str, Any]) -> str:
    return _environment().get_template("report.html.j2").render(**ctx)


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
        markdown = network_markdown(ev, ctx)
    else:
        ctx = site_context(ev, view_site)
        markdown = site_markdown(ev, ctx)
    atomic_write_bytes(paths.html, render_html(ctx).encode("utf-8"))
    atomic_write_bytes(paths.markdown, markdown.encode("utf-8"))
    log.info("report written to %s", paths.html)
    return paths
