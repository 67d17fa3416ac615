"""Reliability diagrams: does a predicted 30% come true 30% of the time? One panel per method."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from evaluation.calibration import ECE_BINS
from evaluation.compute import REFERENCE, Evaluation
from evaluation.plots.style import (
    GRID,
    INK,
    figure,
    method_colours,
    method_name,
    order_methods,
    style,
    to_png,
)
from evaluation.rundata import GLOBAL


def _bins(ev: Evaluation, method: str, sites: Sequence[str]) -> np.ndarray | None:
    """[ECE_BINS, 3] pairs, sum of p, sum of y over the sites' models on the headline test set."""
    found = [
        ev.calibration[key]
        for key in ((method, s, ev.headline_testset(s)) for s in sites)
        if key in ev.calibration
    ]
    if not found:
        return None
    return np.sum([c.reliability for c in found], axis=0)


def _curve(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean predicted probability, observed frequency and share of pairs of the non-empty bins."""
    n = bins[:, 0]
    used = n > 0
    return bins[used, 1] / n[used], bins[used, 2] / n[used], n[used] / n.sum()


def reliability_diagram(ev: Evaluation, sites: Sequence[str] | None = None) -> bytes | None:
    """Per method (pooled dashed in every panel): observed frequency against predicted
    probability in the ECE bins, every (image, finding) pair of the sites' models pooled; below,
    the share of pairs in each bin (log scale)."""
    sites = list(ev.sites if sites is None else sites)
    methods = [m for m in order_methods(ev.methods) if m != REFERENCE] or [REFERENCE]
    curves = {m: _bins(ev, m, sites) for m in order_methods(ev.methods)}
    methods = [m for m in methods if curves[m] is not None and curves[m][:, 0].sum() > 0]
    if not methods:
        return None
    colours = method_colours(ev.methods)
    ref = curves.get(REFERENCE) if REFERENCE in ev.methods else None
    ncols = min(4, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig = figure(2.9 * ncols + 0.6, 3.9 * nrows + 0.8)
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    share_axes: list = []
    legend: dict = {}
    for i, method in enumerate(methods):
        row, col = divmod(i, ncols)
        ax = fig.add_subplot(grid[2 * row, col])
        share_ax = fig.add_subplot(
            grid[2 * row + 1, col], sharex=ax, sharey=share_axes[0] if share_axes else None
        )
        share_axes.append(share_ax)
        ax.plot([0, 1], [0, 1], color=GRID, linewidth=1.2, label="perfectly calibrated")
        drawn = [(method, "-")]
        if ref is not None and method != REFERENCE:
            drawn.append((REFERENCE, "--"))
        for m, line in drawn:
            mean_p, freq, share = _curve(curves[m])
            ax.plot(
                mean_p,
                freq,
                linestyle=line,
                marker="o" if line == "-" else None,
                markersize=3.5,
                linewidth=1.8,
                color=colours[m],
                label=method_name(m),
            )
            centres = (edges[:-1] + edges[1:]) / 2
            used = curves[m][:, 0] > 0
            share_ax.plot(
                centres[used], share, linestyle=line, marker=".", color=colours[m], linewidth=1.2
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        style(
            ax, method_name(method).split(" (")[0], None, "observed frequency" if not col else None
        )
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
        ax.tick_params(labelbottom=False)
        share_ax.set_yscale("log")
        style(share_ax, None, "predicted probability", "share" if not col else None)
    where = "shared global test set" if GLOBAL in ev.run.testsets else "own test patients"
    fig.suptitle(
        f"Reliability ({ECE_BINS} equal-width bins, all findings, {where})", fontsize=12, color=INK
    )
    fig.legend(
        list(legend.values()),
        list(legend),
        loc="outside lower center",
        ncol=min(len(legend), 4),
        frameon=False,
        fontsize=9,
    )
    return to_png(fig)
