"""What the report shows, as template context: the network view and one hospital's view.

Both :mod:`evaluation.report` templates (HTML and Markdown) render these dictionaries; numbers
are formatted here once (:mod:`evaluation.formatting`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation import plots
from evaluation.compute import REFERENCE, Evaluation
from evaluation.formatting import (
    NA,
    auroc_cell,
    cell,
    finite,
    fmt_auroc,
    fmt_bytes,
    fmt_ci,
    fmt_gap,
    fmt_int,
    fmt_seconds,
    fmt_started,
    gap_cell,
    macro_cell,
)
from evaluation.metrics import CI_LEVEL, MIN_POSITIVES, LabelCounts
from evaluation.privacy import redact_config, redact_text
from evaluation.report_calibration import calibration_context
from evaluation.rundata import GLOBAL, local_testset
from hospitalnet import __version__
from hospitalnet.labels import LABELS


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
                "jsd": f"{float(d['jsd']):.3f}" if finite(d.get("jsd")) else NA,
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
        "calibration": calibration_context(ev),
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
        "calibration": calibration_context(ev, site),
        "fig_site_prevalence": _figure(plots.site_prevalence(ev.run.data, site), "prevalence", ""),
        "data_rows": _data_rows(ev, [site]),
        "has_data": ev.run.data is not None,
        "network_tables": _network_tables(ev, [site]),
        "has_network": ev.run.network is not None,
    }
