"""The data picture: images per hospital and prevalence per finding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

from evaluation.plots.style import (
    INK,
    OKABE_ITO,
    UNDEFINED_FILL,
    figure,
    order_sites,
    style,
    to_png,
)
from hospitalnet.labels import LABELS

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
    fig = figure(11, 3.4)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    x = np.arange(len(sites))
    ax1.bar(x, train, color=OKABE_ITO["blue"], label="training images")
    ax1.bar(x, test, bottom=train, color=OKABE_ITO["sky"], label="local test images")
    for xi, total in zip(x, train + test):
        ax1.text(xi, total, f"{int(total):,}", ha="center", va="bottom", fontsize=7.5, color=INK)
    ax1.set_xticks(x, [s for s in sites])
    style(ax1, "Images per hospital", None, "images")
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
    style(ax2, "Label skew vs pooled", None, "Jensen-Shannon divergence")
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
    fig = figure(11, 0.34 * len(rows) + 1.75)
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


def site_prevalence(data: dict[str, Any] | None, site: str) -> bytes | None:
    """This hospital's share of each finding next to the pooled data's."""
    info = ((data or {}).get("sites") or {}).get(site)
    if not info or not info.get("prevalence"):
        return None
    labels = list(LABELS)
    own = np.array([100 * info["prevalence"].get(lab, np.nan) for lab in labels], dtype=float)
    pooled_prev = (data.get("pooled") or {}).get("prevalence") or {}
    fig = figure(11, 3.4)
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
    style(ax, f"How common each finding is at {site}", None, "% of images")
    ax.legend(frameon=False, fontsize=8.5)
    return to_png(fig)
