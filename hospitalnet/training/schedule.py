"""Step-size schedules, as a function of a site's own local step count.

A cosine decay ends training with small steps. For the parallel methods this does more than for
pooled: between two exchanges a site drifts towards its own (biased) optimum by an amount that
scales with the step, so small final steps leave the site models close to consensus.
ECL keeps eta * mu constant when the step changes (ALGORITHMS.md section 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hospitalnet.config import TrainingConfig


def lr_schedule(cfg: TrainingConfig, total_steps: int) -> Callable[[int], float] | None:
    """The step size at local step ``k`` (0-based), or None for a constant ``cfg.lr``."""
    if cfg.lr_schedule == "constant":
        return None
    floor = cfg.lr * cfg.lr_final_fraction
    span = max(total_steps, 1)

    def cosine(k: int) -> float:
        t = min(max(k, 0), span) / span
        return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * t))

    return cosine
