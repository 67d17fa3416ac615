"""What every figure shares: the method colours and order, the hospital order, PNG output."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

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


def figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.patch.set_facecolor("white")
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def style(ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None):
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
