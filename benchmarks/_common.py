"""What every benchmark script shares: machine description, spread of a sample, JSON output.

The scripts run from a checkout (``python benchmarks/<name>.py``) or an installed package alike;
each puts the repository root on ``sys.path`` before importing this module.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """The machine a figure was measured on (figures from different machines do not compare),
    with its load average when the figure was taken (the machine is shared)."""
    try:
        load = list(os.getloadavg())
    except OSError:  # not every platform has one
        load = None
    return {
        "load_average_1_5_15_min": load,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def command() -> str:
    """The command line that produced a result, for the results table."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation, min and max of the defined values (None = undefined)."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(vals),
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
    }


def output_path(out: str | None, name: str, *, smoke: bool) -> Path:
    """Where a benchmark writes: ``--out``, else results/NAME, else (smoke runs) a temp folder."""
    if out:
        return Path(out)
    if smoke:  # smoke runs never overwrite measured results
        return Path(tempfile.mkdtemp(prefix="hospitalnet-bench-")) / name
    return RESULTS / name


def save(result: dict[str, Any], out: str | Path) -> Path:
    """Write ``result`` as indented JSON (NaN is not JSON: callers store None)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    return path


def paired(diffs: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of paired differences (same seed, same world) with a Student-t interval."""
    from scipy import stats  # scipy is a dependency; imported here to keep start-up light

    vals = [float(v) for v in diffs if v is not None and np.isfinite(v)]
    out: dict[str, Any] = {"n": len(vals), "mean": None, "low": None, "high": None}
    if not vals:
        return out
    mean = statistics.fmean(vals)
    out["mean"] = mean
    if len(vals) > 1:
        half = stats.t.ppf(0.5 + confidence / 2, len(vals) - 1) * statistics.stdev(vals)
        half /= len(vals) ** 0.5
        out["low"], out["high"] = mean - half, mean + half
    return out
