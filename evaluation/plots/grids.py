"""Site x finding grids: AUROC and gap heatmaps, local macro AUROC, one hospital's findings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from evaluation.compute import REFERENCE, Evaluation
from evaluation.plots.style import (
    INK,
    UNDEFINED_FILL,
    figure,
    method_colours,
    method_name,
    order_methods,
    order_sites,
    style,
    to_png,
)
from evaluation.rundata import GLOBAL, local_testset
from hospitalnet.labels import LABELS

# --- site x label grids ------------------------------------------------------------------------


def _grid(
    values: np.ndarray,
    undefined: np.ndarray,
    unreliable: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    cmap: str,
    norm: Any,
    colorbar_label: str,
    signed: bool = False,
    width: float = 11.0,
) -> bytes:
    """A heatmap with a value in every cell, undefined cells hatched, unreliable ones daggered."""
    fig = figure(width, 0.34 * len(rows) + 1.75)
    ax = fig.subplots()
    masked = np.ma.masked_invalid(np.where(undefined, np.nan, values))
    cm = matplotlib.colormaps[cmap].with_extremes(bad=UNDEFINED_FILL)
    image = ax.imshow(masked, cmap=cm, norm=norm, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if undefined[i, j] or not np.isfinite(values[i, j]):
                ax.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        fill=False,
                        hatch="///",
                        edgecolor="#9A9A9A",
                        linewidth=0,
                    )
                )
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8.5, color="#444444")
                continue
            v = values[i, j]
            rgba = cm(norm(v))
            light = (0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]) > 0.55
            text = f"{v:+.2f}" if signed else f"{v:.2f}"
            if unreliable[i, j]:
                text += "\u2020"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8.5, color=INK if light else "white"
            )
    ax.set_xticks(
        range(len(cols)), [c.replace("_", " ") for c in cols], rotation=35, ha="right", fontsize=8.5
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=8.5)
    ax.set_title(title, fontsize=11, loc="left", color=INK, fontweight="bold")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if len(rows) > 2:  # a one-row grid prints every value; a squashed colour bar would not help
        bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.01)
        bar.set_label(colorbar_label, fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return to_png(fig)


SHARED_ROW = "ALL (one shared model)"


def _site_label_matrix(ev: Evaluation, method: str, column: str, local: bool):
    """Rows = hospitals n1..n8; one row when the method gave every hospital the same numbers."""
    sites = order_sites(ev.sites)
    m = ev.metrics[ev.metrics["method"] == method]
    values = np.full((len(sites), len(LABELS)), np.nan)
    undefined = np.ones_like(values, dtype=bool)
    unreliable = np.zeros_like(values, dtype=bool)
    for i, site in enumerate(sites):
        testset = local_testset(site) if local else ev.headline_testset(site)
        rows = m[(m["site"] == site) & (m["testset"] == testset)].set_index("label")
        for j, label in enumerate(LABELS):
            if label not in rows.index:
                continue
            r = rows.loc[label]
            values[i, j] = r[column]
            undefined[i, j] = not np.isfinite(r["auroc"])
            unreliable[i, j] = bool(r["unreliable"])
    names = [s for s in sites]
    same = len(sites) > 1 and all(
        np.array_equal(values[0], values[i], equal_nan=True)
        and np.array_equal(undefined[0], undefined[i])
        for i in range(1, len(sites))
    )
    if same:
        return [SHARED_ROW], values[:1], undefined[:1], unreliable[:1]
    return names, values, undefined, unreliable


def auroc_heatmap(ev: Evaluation, method: str, local: bool = False) -> bytes | None:
    """Hospital x label AUROC of one method (global test set, or each site's own when local)."""
    sites, values, undefined, unreliable = _site_label_matrix(ev, method, "auroc", local)
    if undefined.all():
        return None
    where = "each hospital's own test set" if local else testset_words(ev)
    return _grid(
        values,
        undefined,
        unreliable,
        sites,
        LABELS,
        f"{method_name(method)}: AUROC per hospital and finding ({where})",
        "viridis",
        matplotlib.colors.Normalize(0.5, 1.0),
        "AUROC (0.5 = chance)",
    )


def gap_heatmap(ev: Evaluation, method: str, local: bool = False) -> bytes | None:
    """Hospital x label AUROC minus pooled's, diverging around 0 (blue better, red worse)."""
    if ev.reference is None or method == REFERENCE:
        return None
    sites, values, undefined, unreliable = _site_label_matrix(ev, method, "gap_to_pooled", local)
    undefined |= ~np.isfinite(values)
    if undefined.all():
        return None
    # One scale for every method, so equal colours mean equal gaps across the grids.
    m = ev.metrics
    shown_local = local or GLOBAL not in ev.run.testsets
    own = m["testset"].str.startswith("local_") if shown_local else m["testset"] == GLOBAL
    gaps = np.abs(m.loc[own, "gap_to_pooled"].to_numpy(dtype=float))
    limit = max(0.05, float(np.nanmax(gaps, initial=0.0)))
    where = "each hospital's own test set" if local else testset_words(ev)
    return _grid(
        values,
        undefined,
        unreliable,
        sites,
        LABELS,
        f"{method_name(method)} minus pooled: AUROC gap ({where})",
        "RdBu",
        TwoSlopeNorm(0.0, -limit, limit),
        "AUROC gap to pooled (negative = worse)",
        signed=True,
    )


def local_macro_heatmap(ev: Evaluation) -> bytes | None:
    """Hospital x method macro AUROC on each hospital's own test set."""
    sites = [s for s in order_sites(ev.sites) if local_testset(s) in ev.run.testsets]
    if not sites:
        return None
    methods = order_methods(ev.methods)
    macros = ev.macros.set_index(["method", "site", "testset"])
    values = np.array(
        [[macros.loc[(m, s, local_testset(s)), "macro_auroc"] for m in methods] for s in sites],
        dtype=float,
    )
    undefined = ~np.isfinite(values)
    return _grid(
        values,
        undefined,
        np.zeros_like(undefined),
        [s for s in sites],
        [method_name(m).split(" (")[0] for m in methods],
        "Macro AUROC on each hospital's own test patients",
        "viridis",
        matplotlib.colors.Normalize(0.5, 1.0),
        "macro AUROC",
        width=min(11.0, 3.2 + 1.3 * len(methods)),
    )


def testset_words(ev: Evaluation) -> str:
    return "shared global test set" if GLOBAL in ev.run.testsets else "local test set"


def site_labels(ev: Evaluation, site: str, testset: str) -> bytes | None:
    """AUROC per finding with 95% CI whiskers, for every method's model of this hospital."""
    m = ev.metrics[(ev.metrics["site"] == site) & (ev.metrics["testset"] == testset)]
    if m.empty:
        return None
    methods = order_methods([x for x in ev.methods if x in set(m["method"])])
    colours = method_colours(ev.methods)
    fig = figure(11, 0.36 * len(LABELS) + 1.8)
    ax = fig.subplots()
    step = 0.7 / max(1, len(methods))
    ticks = []
    counts = m[m["method"] == methods[0]].set_index("label")
    for label in LABELS:
        r = counts.loc[label]
        mark = "\u2020" if r["unreliable"] else ""
        ticks.append(f"{label.replace('_', ' ')}{mark}  ({int(r['n_pos'])}/{int(r['n'])})")
    for i, method in enumerate(methods):
        rows = m[m["method"] == method].set_index("label")
        y = np.arange(len(LABELS)) + (i - (len(methods) - 1) / 2) * step
        v = np.array([rows.loc[lab, "auroc"] for lab in LABELS], dtype=float)
        lo = np.array([rows.loc[lab, "ci_low"] for lab in LABELS], dtype=float)
        hi = np.array([rows.loc[lab, "ci_high"] for lab in LABELS], dtype=float)
        ok = np.isfinite(v)
        ax.errorbar(
            v[ok],
            y[ok],
            xerr=[np.nan_to_num(v - lo)[ok], np.nan_to_num(hi - v)[ok]],
            fmt="D" if method == REFERENCE else "o",
            markersize=5,
            mfc="white" if method == REFERENCE else colours[method],
            color=colours[method],
            elinewidth=1.4,
            capsize=2,
            label=method_name(method),
        )
    for j, label in enumerate(LABELS):
        if counts.loc[label, "n_pos"] == 0 or counts.loc[label, "n_neg"] == 0:
            ticks[j] += "  n/a"
    ax.set_yticks(range(len(LABELS)), ticks, fontsize=8.5)
    ax.invert_yaxis()
    ax.axvline(0.5, color="#999999", linewidth=1, linestyle=":")
    low = np.nanmin(m["ci_low"].to_numpy(dtype=float), initial=np.inf)
    low = min(low, np.nanmin(m["auroc"].to_numpy(dtype=float), initial=np.inf))
    ax.set_xlim(max(0.0, min(0.45, math.floor((low - 0.02) * 20) / 20)), 1.0)
    where = "shared global test set" if testset == GLOBAL else "own test patients"
    style(
        ax,
        f"{site}: AUROC per finding with 95% CI ({where})",
        "AUROC (0.5 = chance, 1 = perfect)",
        None,
    )
    fig.legend(
        *ax.get_legend_handles_labels(),
        loc="outside lower center",
        ncol=len(methods),
        frameon=False,
        fontsize=8.5,
    )
    ax.set_ylabel("finding (positives / cases)", fontsize=9, color=INK)
    return to_png(fig)
