"""The report's figures, as PNG bytes (matplotlib's Agg canvas, no pyplot state).

Conventions kept in every figure: one colour per method from the Okabe-Ito palette (safe for
colour-blind readers), the pooled reference always dashed, hospitals always in the order n1..n8,
undefined AUROC cells hatched grey with "n/a", unreliable ones (< 10 positives) marked with a dagger.
Each function returns None when the run holds nothing to draw.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, even if a GUI backend is installed

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from evaluation.compute import REFERENCE, Evaluation  # noqa: E402
from evaluation.rundata import GLOBAL, local_testset  # noqa: E402
from hospitalnet.labels import LABELS  # noqa: E402

OKABE_ITO = {
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "black": "#000000",
}
METHOD_COLOURS = {
    "ecl": OKABE_ITO["vermillion"],
    "gossip": OKABE_ITO["green"],
    "fedavg": OKABE_ITO["orange"],
    "fedprox": OKABE_ITO["purple"],
    "local": "#7A7A7A",
    "pooled": OKABE_ITO["blue"],
}
_SPARE_COLOURS = [OKABE_ITO["sky"], OKABE_ITO["black"], OKABE_ITO["yellow"], OKABE_ITO["purple"]]
METHOD_ORDER = ["ecl", "gossip", "fedavg", "fedprox", "local", "pooled"]
METHOD_NAMES = {
    "ecl": "ECL (edge-consensus)",
    "gossip": "Gossip-SGD",
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "local": "Local only",
    "pooled": "Pooled (all data in one place)",
}
INK = "#222222"
GRID = "#DDDDDD"
UNDEFINED_FILL = "#EEEEEE"
INACTIVE = OKABE_ITO["vermillion"]
DPI = 110


# --- ordering and colours ----------------------------------------------------------------------


def _method_rank(method: str) -> tuple[float, str]:
    if method in METHOD_ORDER:
        return float(METHOD_ORDER.index(method)), method
    return (0.5 if method.startswith("ecl") else 3.5), method


def order_methods(methods: Sequence[str]) -> list[str]:
    """ECL first, then the conventional methods, local, and the pooled reference last."""
    return sorted(methods, key=_method_rank)


def order_sites(sites: Sequence[str]) -> list[str]:
    """Natural order: n1, n2, ..., n10 (not n1, n10, n2)."""

    def natural(site: str) -> list[Any]:
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", site)]

    return sorted(sites, key=natural)


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """A fixed colour per known method; unknown ones take the spare colours in order."""
    colours = {}
    spare = iter(_SPARE_COLOURS)
    for m in order_methods(methods):
        colours[m] = METHOD_COLOURS.get(m) or next(spare, "#444444")
    return colours


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


# --- output ------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.patch.set_facecolor("white")
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _style(ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None):
    if title:
        ax.set_title(title, fontsize=11, color=INK, loc="left", fontweight="bold")
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=9.5, color=INK)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9.5, color=INK)
    ax.grid(True, color=GRID, linewidth=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8.5, colors=INK)


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
    fig = _figure(11, 4.2)
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
        _style(ax, title, xlabel, "macro AUROC" if agg == "mean" else None)
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
    fig = _figure(11, 2.5 * nrows + 0.9)
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
        _style(ax, site)
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
    fig = _figure(11, 3.4)
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
    _style(ax, "Training loss (mean over hospitals)", "local step", "loss (masked BCE)")
    ax.legend(frameon=False, fontsize=8.5, ncol=3)
    return to_png(fig)


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
    fig = _figure(width, 0.34 * len(rows) + 1.75)
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
    where = "each hospital's own test set" if local else _testset_words(ev)
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
    where = "each hospital's own test set" if local else _testset_words(ev)
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


def _testset_words(ev: Evaluation) -> str:
    return "shared global test set" if GLOBAL in ev.run.testsets else "local test set"


# --- data picture ------------------------------------------------------------------------------


def data_sizes(data: dict[str, Any] | None, sites: Sequence[str]) -> bytes | None:
    """Images per hospital (training and local test) and each hospital's label skew (JSD)."""
    if not data or not data.get("sites"):
        return None
    sites = [s for s in order_sites(sites) if s in data["sites"]]
    if not sites:
        return None
    info = [data["sites"][s] for s in sites]
    train = np.array([float(i.get("train_images") or 0) for i in info])
    test = np.array([float(i.get("test_images") or 0) for i in info])
    jsd = np.array([np.nan if i.get("jsd") is None else float(i["jsd"]) for i in info])
    fig = _figure(11, 3.4)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    x = np.arange(len(sites))
    ax1.bar(x, train, color=OKABE_ITO["blue"], label="training images")
    ax1.bar(x, test, bottom=train, color=OKABE_ITO["sky"], label="local test images")
    for xi, total in zip(x, train + test):
        ax1.text(xi, total, f"{int(total):,}", ha="center", va="bottom", fontsize=7.5, color=INK)
    ax1.set_xticks(x, [s for s in sites])
    _style(ax1, "Images per hospital", None, "images")
    ax1.legend(frameon=False, fontsize=8.5)
    ax2.bar(x, np.nan_to_num(jsd), color=OKABE_ITO["orange"])
    for xi, v in zip(x, jsd):
        ax2.text(
            xi,
            0 if np.isnan(v) else v,
            "n/a" if np.isnan(v) else f"{v:.2f}",
            ha="center",
            va="bottom",
            fontsize=7.5,
            color=INK,
        )
    ax2.set_xticks(x, [s for s in sites])
    _style(ax2, "Label skew vs pooled", None, "Jensen-Shannon divergence")
    return to_png(fig)


def prevalence_heatmap(data: dict[str, Any] | None, sites: Sequence[str]) -> bytes | None:
    """Share of images with each finding, per hospital, next to the pooled and global test sets."""
    if not data or not data.get("sites"):
        return None
    labels = list(LABELS)
    rows, matrix = [], []
    for s in order_sites(sites):
        if s in data["sites"]:
            rows.append(s)
            prev = data["sites"][s].get("prevalence") or {}
            matrix.append([prev.get(lab, np.nan) for lab in labels])
    for name, title in (("pooled", "POOLED TRAIN"), ("global_test", "GLOBAL TEST")):
        prev = (data.get(name) or {}).get("prevalence")
        if prev:
            rows.append(title)
            matrix.append([prev.get(lab, np.nan) for lab in labels])
    if not rows:
        return None
    values = 100.0 * np.array(matrix, dtype=float)
    fig = _figure(11, 0.34 * len(rows) + 1.75)
    ax = fig.subplots()
    cm = matplotlib.colormaps["cividis"].with_extremes(bad=UNDEFINED_FILL)
    top = max(1.0, float(np.nanmax(values))) if np.isfinite(values).any() else 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=0, vmax=top, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8.5, color="#444444")
                continue
            light = v > 0.55 * top
            ax.text(
                j,
                i,
                f"{v:.1f}",
                ha="center",
                va="center",
                fontsize=7.5,
                color=INK if light else "white",
            )
    n_sites = sum(1 for r in rows if r not in ("POOLED TRAIN", "GLOBAL TEST"))
    if n_sites < len(rows):
        ax.axhline(n_sites - 0.5, color="white", linewidth=3)
    ax.set_xticks(
        range(len(labels)),
        [lab.replace("_", " ") for lab in labels],
        rotation=35,
        ha="right",
        fontsize=8.5,
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=8.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(
        "How common each finding is (% of images)",
        fontsize=11,
        loc="left",
        color=INK,
        fontweight="bold",
    )
    bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.01)
    bar.set_label("% of images with the finding", fontsize=9)
    return to_png(fig)


# --- network -----------------------------------------------------------------------------------


def _edge_total(edge: dict[str, Any], field: str) -> float:
    return float(sum((edge.get(field) or {}).values()))


def _draw_topology(ax, network: dict[str, Any], method: str | None, sites: Sequence[str]) -> None:
    """Hospitals on a circle; edge width ~ bytes sent; inactive edges dashed vermillion.

    ``method`` None draws the configured topology only. A FedAvg server sits in the centre.
    """
    nodes = order_sites((network.get("topology") or {}).get("nodes") or sites)
    if method is None:
        edges = [{"a": a, "b": b} for a, b in (network.get("topology") or {}).get("edges", [])]
        stats: dict[str, Any] = {}
    else:
        stats = (network.get("methods") or {}).get(method) or {}
        edges = stats.get("edges") or []
    angle = {n: math.pi / 2 - 2 * math.pi * i / len(nodes) for i, n in enumerate(nodes)}
    pos = {n: (math.cos(a), math.sin(a)) for n, a in angle.items()}
    extra = sorted({str(e[k]) for e in edges for k in ("a", "b")} - set(pos))
    for i, n in enumerate(extra):  # the FedAvg server (or any non-site endpoint) in the middle
        pos[n] = (0.0, 0.3 * i)
    totals = [_edge_total(e, "bytes") for e in edges]
    top = max(totals) if totals and max(totals) > 0 else 1.0
    for e, total in zip(edges, totals):
        (x1, y1), (x2, y2) = pos[str(e["a"])], pos[str(e["b"])]
        inactive = e.get("active_at_end") is False
        width = 0.8 + 5.0 * total / top if method else 1.4
        ax.plot(
            [x1, x2],
            [y1, y2],
            color=INACTIVE if inactive else "#5B6770",
            linestyle=(0, (3, 2)) if inactive else "-",
            linewidth=width,
            solid_capstyle="round",
            zorder=1,
        )
    dead = set(stats.get("dead_sites") or [])
    isolated = set(stats.get("isolated_sites") or [])
    for n, (x, y) in pos.items():
        server = n not in nodes
        face = "#FFFFFF" if n in dead else ("#F2F2F2" if server else "#E8F1F8")
        edge_colour = INACTIVE if (n in dead or n in isolated) else OKABE_ITO["blue"]
        ax.scatter(
            [x],
            [y],
            s=420 if not server else 1300,
            color=face,
            edgecolors=edge_colour,
            linewidths=1.8,
            zorder=2,
            marker="s" if server else "o",
        )
        ax.text(
            x,
            y,
            n if not server else n[:6],
            ha="center",
            va="center",
            fontsize=7.5 if not server else 6.5,
            fontweight="bold",
            color=INK,
            zorder=3,
        )
        if n in dead or n in isolated:
            ax.text(
                x,
                y - 0.2,
                "dead" if n in dead else "isolated",
                ha="center",
                va="top",
                fontsize=7,
                color=INACTIVE,
            )
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.axis("off")
    total_mb = sum(totals) / 1e6
    title = "Configured topology" if method is None else method_name(method).split(" (")[0]
    ax.set_title(title, fontsize=10, color=INK, fontweight="bold")
    if method is not None:
        ax.text(
            0,
            -1.3,
            f"{total_mb:,.0f} MB sent in total",
            ha="center",
            va="top",
            fontsize=8,
            color="#555555",
        )


def network_panels(
    network: dict[str, Any] | None, methods: Sequence[str], sites: Sequence[str]
) -> bytes | None:
    """The configured topology and, per method that sent messages, the traffic on each link."""
    if not network:
        return None
    stats = network.get("methods") or {}
    drawn: list[str | None] = [None] + [
        m for m in order_methods(methods) if (stats.get(m) or {}).get("edges")
    ]
    ncols = min(4, len(drawn))
    nrows = math.ceil(len(drawn) / ncols)
    fig = _figure(2.75 * ncols, 3.0 * nrows + 0.35)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, method in zip(axes, drawn):
        _draw_topology(ax, network, method, sites)
    for ax in axes[len(drawn) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color="#5B6770", linewidth=3, label="link (width ~ bytes sent)")]
    if any(e.get("active_at_end") is False for m in drawn if m for e in stats[m]["edges"]):
        handles.append(
            Line2D(
                [],
                [],
                color=INACTIVE,
                linestyle=(0, (3, 2)),
                linewidth=2,
                label="inactive at the end",
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=8.5)
    return to_png(fig)


def edge_traffic(network: dict[str, Any] | None, methods: Sequence[str]) -> bytes | None:
    """Megabytes sent per link (both directions) for each method that exchanged messages."""
    stats = (network or {}).get("methods") or {}
    drawn = [m for m in order_methods(methods) if (stats.get(m) or {}).get("edges")]
    if not drawn:
        return None
    colours = method_colours(methods)
    fig = _figure(11, 1.9 * len(drawn) + 1.0)
    axes = np.atleast_1d(fig.subplots(len(drawn), 1, squeeze=False)).ravel()
    for ax, method in zip(axes, drawn):
        edges = stats[method]["edges"]
        names = [f"{e['a']}\u2013{e['b']}" for e in edges]
        mb = [_edge_total(e, "bytes") / 1e6 for e in edges]
        inactive = [e.get("active_at_end") is False for e in edges]
        bars = ax.bar(range(len(edges)), mb, color=colours[method])
        for bar, off in zip(bars, inactive):
            if off:
                bar.set_hatch("///")
                bar.set_edgecolor(INACTIVE)
        ax.set_xticks(range(len(edges)), names, fontsize=8, rotation=0)
        _style(ax, method_name(method), None, "MB sent")
    axes[-1].set_xlabel("link (both directions together)", fontsize=9)
    if any(e.get("active_at_end") is False for m in drawn for e in stats[m]["edges"]):
        fig.legend(
            handles=[
                Patch(
                    facecolor="white",
                    edgecolor=INACTIVE,
                    hatch="///",
                    label="link inactive at the end",
                )
            ],
            loc="outside upper right",
            frameon=False,
            fontsize=8.5,
        )
    return to_png(fig)


# --- one hospital ------------------------------------------------------------------------------


def site_labels(ev: Evaluation, site: str, testset: str) -> bytes | None:
    """AUROC per finding with 95% CI whiskers, for every method's model of this hospital."""
    m = ev.metrics[(ev.metrics["site"] == site) & (ev.metrics["testset"] == testset)]
    if m.empty:
        return None
    methods = order_methods([x for x in ev.methods if x in set(m["method"])])
    colours = method_colours(ev.methods)
    fig = _figure(11, 0.36 * len(LABELS) + 1.8)
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
    _style(
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


def site_curves(ev: Evaluation, site: str) -> bytes | None:
    """This hospital's macro AUROC during training, on each test set that has curve points."""
    c = ev.curves[ev.curves["site"] == site]
    testsets = [t for t in ev.run.testsets_for(site) if t in set(c["testset"])]
    if not testsets:
        return None
    x, xlabel = _progress_axis(c)
    colours = method_colours(ev.methods)
    fig = _figure(11, 3.6)
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
        _style(ax, f"{site} ({where})", xlabel, "macro AUROC")
        ax.legend(frameon=False, fontsize=8.5)
    return to_png(fig)


def site_prevalence(data: dict[str, Any] | None, site: str) -> bytes | None:
    """This hospital's share of each finding next to the pooled data's."""
    info = ((data or {}).get("sites") or {}).get(site)
    if not info or not info.get("prevalence"):
        return None
    labels = list(LABELS)
    own = np.array([100 * info["prevalence"].get(lab, np.nan) for lab in labels], dtype=float)
    pooled_prev = (data.get("pooled") or {}).get("prevalence") or {}
    fig = _figure(11, 3.4)
    ax = fig.subplots()
    x = np.arange(len(labels))
    width = 0.4 if pooled_prev else 0.7
    ax.bar(
        x - (width / 2 if pooled_prev else 0),
        own,
        width,
        color=OKABE_ITO["vermillion"],
        label=site,
    )
    if pooled_prev:
        pooled = np.array([100 * pooled_prev.get(lab, np.nan) for lab in labels], dtype=float)
        ax.bar(x + width / 2, pooled, width, color=OKABE_ITO["blue"], label="pooled (all sites)")
    ax.set_xticks(x, [lab.replace("_", " ") for lab in labels], rotation=35, ha="right")
    _style(ax, f"How common each finding is at {site}", None, "% of images")
    ax.legend(frameon=False, fontsize=8.5)
    return to_png(fig)
