"""The report's figures, as PNG bytes (matplotlib's Agg canvas, no pyplot state).

Conventions kept in every figure: one colour per method from the Okabe-Ito palette (safe for
colour-blind readers), the pooled reference always dashed, hospitals always in the order n1..n8,
undefined AUROC cells hatched grey with "n/a", unreliable ones (< 10 positives) marked with a dagger.
Each function returns None when the run holds nothing to draw.

Modules: :mod:`~evaluation.plots.style` (colours, order, PNG output), :mod:`~evaluation.plots.
curves` (performance over training), :mod:`~evaluation.plots.grids` (site x finding heatmaps),
:mod:`~evaluation.plots.data` (the data picture), :mod:`~evaluation.plots.network` (topology and
traffic), :mod:`~evaluation.plots.calibration` (reliability diagrams).
"""

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, even if a GUI backend is installed

from evaluation.plots.calibration import reliability_diagram  # noqa: E402
from evaluation.plots.curves import (  # noqa: E402
    hospital_panels,
    learning_curves,
    loss_curves,
    site_curves,
)
from evaluation.plots.data import data_sizes, prevalence_heatmap, site_prevalence  # noqa: E402
from evaluation.plots.grids import (  # noqa: E402
    auroc_heatmap,
    gap_heatmap,
    local_macro_heatmap,
    site_labels,
)
from evaluation.plots.network import edge_traffic, network_panels  # noqa: E402
from evaluation.plots.style import (  # noqa: E402
    data_uri,
    method_colours,
    method_name,
    order_methods,
    order_sites,
    to_png,
)

__all__ = [
    "auroc_heatmap",
    "data_sizes",
    "data_uri",
    "edge_traffic",
    "gap_heatmap",
    "hospital_panels",
    "learning_curves",
    "local_macro_heatmap",
    "loss_curves",
    "method_colours",
    "method_name",
    "network_panels",
    "order_methods",
    "order_sites",
    "prevalence_heatmap",
    "reliability_diagram",
    "site_curves",
    "site_labels",
    "site_prevalence",
    "to_png",
]
