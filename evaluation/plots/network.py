"""The network: topology with edge states, and bytes per link."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from evaluation.plots.style import (
    INACTIVE,
    INK,
    OKABE_ITO,
    figure,
    method_colours,
    method_name,
    order_methods,
    order_sites,
    style,
    to_png,
)

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
    fig = figure(2.75 * ncols, 3.0 * nrows + 0.35)
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
    fig = figure(11, 1.9 * len(drawn) + 1.0)
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
        style(ax, method_name(method), None, "MB sent")
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
