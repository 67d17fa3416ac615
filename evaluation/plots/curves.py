"""Performance over training: learning curves, per-hospital panels, loss, one hospital's curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evaluation.compute import REFERENCE, Evaluation
from evaluation.plots.style import (
    INK,
    figure,
    method_colours,
    method_name,
    order_methods,
    order_sites,
    style,
    to_png,
)
from evaluation.rundata import GLOBAL

# --- learning curves ---------------------------------------------------------------------------


def _progress_axis(curves: pd.DataFrame) -> tuple[str, str]:
    """Epochs when recorded, else local steps, else the evaluation point index."""
    for column, label in (
        ("epochs", "epochs (passes over the local data)"),
        ("local_steps", "local steps"),
        ("k", "evaluation point"),
    ):
        if column in curves and curves[column].notna().all():
            return column, label
    return "k", "evaluation point"


def _headline_curves(ev: Evaluation) -> pd.DataFrame:
    c = ev.curves
    if c.empty:
        return c
    keep = np.array(
        [t == ev.headline_testset(s) for s, t in zip(c["site"], c["testset"])], dtype=bool
    )
    return c[keep]


def learning_curves(ev: Evaluation) -> bytes | None:
    """Figure 1: mean (left) and worst (right) hospital macro AUROC against training progress."""
    curves = _headline_curves(ev)
    if curves.empty or curves[curves["method"] != REFERENCE].empty:
        return None
    x, xlabel = _progress_axis(curves)
    colours = method_colours(ev.methods)
    fig = figure(11, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    titles = ("Mean over hospitals", "Worst hospital")
    ref_summary = ev.summary["methods"].get(REFERENCE, {})
    ref_values = (
        ref_summary.get("mean_site_macro_auroc"),
        ref_summary.get("worst_site_macro_auroc"),
    )
    for ax, title, agg, ref_value in zip(axes, titles, ("mean", "min"), ref_values):
        for method in order_methods(ev.methods):
            if method == REFERENCE:
                continue
            rows = curves[curves["method"] == method]
            if rows.empty:
                continue
            g = rows.groupby(x, sort=True)["macro_auroc"].agg(agg)
            ax.plot(
                g.index,
                g.values,
                marker="o",
                markersize=3.5,
                linewidth=2,
                color=colours[method],
                label=method_name(method),
            )
        if REFERENCE in ev.methods:
            ref_rows = curves[curves["method"] == REFERENCE]
            if not ref_rows.empty:
                g = ref_rows.groupby(x, sort=True)["macro_auroc"].agg(agg)
                ax.plot(
                    g.index,
                    g.values,
                    linestyle="--",
                    linewidth=2,
                    color=colours[REFERENCE],
                    label=method_name(REFERENCE),
                )
            elif ref_value is not None:
                ax.axhline(
                    ref_value,
                    linestyle="--",
                    linewidth=2,
                    color=colours[REFERENCE],
                    label=f"{method_name(REFERENCE)}, final",
                )
        style(ax, title, xlabel, "macro AUROC" if agg == "mean" else None)
    testset = "shared global test set" if GLOBAL in ev.run.testsets else "each hospital's test set"
    fig.suptitle(f"Macro AUROC during training ({testset})", fontsize=12, color=INK)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(len(labels), 5),
        frameon=False,
        fontsize=9,
    )
    return to_png(fig)


def hospital_panels(ev: Evaluation) -> bytes | None:
    """Figure 2: one panel per hospital, ECL against the conventional methods over training."""
    curves = _headline_curves(ev)
    if curves.empty:
        return None
    x, xlabel = _progress_axis(curves)
    sites = order_sites(ev.sites)
    colours = method_colours(ev.methods)
    ncols = min(4, len(sites))
    nrows = math.ceil(len(sites) / ncols)
    fig = figure(11, 2.5 * nrows + 0.9)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False))
    axes = axes.ravel()
    for ax, site in zip(axes, sites):
        rows = curves[curves["site"] == site]
        for method in order_methods(ev.methods):
            m_rows = rows[rows["method"] == method].sort_values(x)
            if m_rows.empty:
                continue
            if method == REFERENCE:
                ax.plot(
                    m_rows[x],
                    m_rows["macro_auroc"],
                    linestyle="--",
                    linewidth=1.8,
                    color=colours[method],
                    label=method_name(method),
                )
            else:
                ax.plot(
                    m_rows[x],
                    m_rows["macro_auroc"],
                    linewidth=1.8,
                    marker="o",
                    markersize=2.5,
                    color=colours[method],
                    label=method_name(method),
                )
        if REFERENCE in ev.methods and rows[rows["method"] == REFERENCE].empty:
            final = ev.summary["methods"][REFERENCE]["per_site"][site][ev.headline_testset(site)]
            if final["macro_auroc"] is not None:
                ax.axhline(
                    final["macro_auroc"],
                    linestyle="--",
                    linewidth=1.8,
                    color=colours[REFERENCE],
                    label=f"{method_name(REFERENCE)}, final",
                )
        style(ax, site)
    for ax in axes[len(sites) :]:
        ax.set_visible(False)
    for ax in axes[(nrows - 1) * ncols :]:
        ax.set_xlabel(xlabel, fontsize=9)
    for row in range(nrows):
        axes[row * ncols].set_ylabel("macro AUROC", fontsize=9)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle("Each hospital's model during training", fontsize=12, color=INK)
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(len(labels), 5),
        frameon=False,
        fontsize=9,
    )
    return to_png(fig)


def loss_curves(ev: Evaluation) -> bytes | None:
    """Training loss (mean over the evaluated hospitals) against local steps."""
    colours = method_colours(ev.methods)
    fig = figure(11, 3.4)
    ax = fig.subplots()
    drawn = False
    for method in order_methods(ev.methods):
        history = ev.run.histories.get(method)
        rows = [
            r.model_dump()
            for r in (history.loss if history else [])
            if r.site in ev.sites or method == REFERENCE
        ]
        if not rows:
            continue
        df = pd.DataFrame(rows)
        if not {"local_step", "loss"} <= set(df.columns):
            continue
        g = df.groupby("local_step", sort=True)["loss"].mean()
        ax.plot(
            g.index,
            g.values,
            linewidth=1.6,
            color=colours[method],
            linestyle="--" if method == REFERENCE else "-",
            label=method_name(method),
        )
        drawn = True
    if not drawn:
        return None
    style(ax, "Training loss (mean over hospitals)", "local step", "loss (masked BCE)")
    ax.legend(frameon=False, fontsize=8.5, ncol=3)
    return to_png(fig)


def site_curves(ev: Evaluation, site: str) -> bytes | None:
    """This hospital's macro AUROC during training, on each test set that has curve points."""
    c = ev.curves[ev.curves["site"] == site]
    testsets = [t for t in ev.run.testsets_for(site) if t in set(c["testset"])]
    if not testsets:
        return None
    x, xlabel = _progress_axis(c)
    colours = method_colours(ev.methods)
    fig = figure(11, 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(testsets), sharey=True, squeeze=False)).ravel()
    for ax, testset in zip(axes, testsets):
        rows = c[c["testset"] == testset]
        for method in order_methods(ev.methods):
            mr = rows[rows["method"] == method].sort_values(x)
            if mr.empty:
                continue
            dashed = method == REFERENCE
            ax.plot(
                mr[x],
                mr["macro_auroc"],
                linestyle="--" if dashed else "-",
                marker=None if dashed else "o",
                markersize=3,
                linewidth=2,
                color=colours[method],
                label=method_name(method),
            )
        if REFERENCE in ev.methods and rows[rows["method"] == REFERENCE].empty:
            final = ev.summary["methods"][REFERENCE]["per_site"][site].get(testset) or {}
            if final.get("macro_auroc") is not None:
                ax.axhline(
                    final["macro_auroc"],
                    linestyle="--",
                    linewidth=2,
                    color=colours[REFERENCE],
                    label=f"{method_name(REFERENCE)}, final",
                )
        where = "shared global test set" if testset == GLOBAL else "own test patients"
        style(ax, f"{site} ({where})", xlabel, "macro AUROC")
        ax.legend(frameon=False, fontsize=8.5)
    return to_png(fig)
