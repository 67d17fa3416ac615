"""Calibration next to AUROC, per method, from finished run directories.

For each run directory (as ``hospitalnet simulate`` writes it) the evaluation is recomputed from
the stored predictions (:func:`evaluation.compute.evaluate_run`, the code ``hospitalnet report``
runs) and, per method, recorded on the headline test set: the mean over hospitals of the macro
AUROC, Brier score, log loss and ECE (10 equal-width bins), the worst hospital's score, the mean
gap to pooled (method minus pooled; above 0 is worse calibrated) and that gap's 95% interval from
the patient bootstrap shared with the AUROC (paired, resample by resample). With several run
directories (e.g. training seeds on one world) the spread over them is added. The time the
evaluation took is recorded too.

Writes benchmarks/results/calibration.json. Run from the repository root:
``python benchmarks/calibration.py RUN_DIR [RUN_DIR ...] [--resamples 300] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks._common import command, machine, output_path, save, spread  # noqa: E402
from evaluation.calibration import METRICS  # noqa: E402
from evaluation.compute import evaluate_run  # noqa: E402
from evaluation.metrics import DEFAULT_RESAMPLES  # noqa: E402
from evaluation.rundata import load_run  # noqa: E402


def measure(run_dir: Path, n_resamples: int) -> dict[str, Any]:
    """One run directory's figures per method."""
    t0 = time.perf_counter()
    ev = evaluate_run(load_run(run_dir), n_resamples=n_resamples)
    seconds = time.perf_counter() - t0
    methods = {}
    for method, s in ev.summary["methods"].items():
        methods[method] = {
            "mean_site_macro_auroc": s["mean_site_macro_auroc"],
            "auroc_gap_to_pooled": s["gap_to_pooled"],
            **{name: s["calibration"][name] for name in METRICS},
        }
    return {
        "run_dir": run_dir.name,
        "seed": ev.run.seed,
        "run_command": ev.run.info.command,
        "headline_testset": ev.summary["headline_testset"],
        "evaluation_seconds": seconds,
        "methods": methods,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    runs = [measure(r, args.resamples) for r in args.run_dirs]
    methods = list(runs[0]["methods"])
    over_runs = {
        m: {
            f"{name}_{field}": spread([r["methods"][m][name][field] for r in runs])
            for name in METRICS
            for field in ("mean_site", "gap_to_pooled")
        }
        for m in methods
    }
    result = {
        "command": command(),
        "machine": machine(),
        "resamples": args.resamples,
        "runs": runs,
        "over_runs": over_runs,
    }
    path = save(result, output_path(args.out, "calibration.json", smoke=False))
    print(
        f"{'method':<8} {'AUROC':>6} " + " ".join(f"{n:>9} {'gap [95% CI]':>25}" for n in METRICS)
    )
    for r in runs:
        print(
            f"run {r['run_dir']} (seed {r['seed']}), evaluated in {r['evaluation_seconds']:.0f} s"
        )
        for m, v in r["methods"].items():
            cells = []
            for name in METRICS:
                c = v[name]
                gap = c["gap_to_pooled"]
                ci = (
                    f"[{c['gap_ci_low']:+.4f}, {c['gap_ci_high']:+.4f}]"
                    if c["gap_ci_low"] is not None
                    else ""
                )
                cells.append(
                    f"{c['mean_site']:9.4f} {'' if gap is None else f'{gap:+.4f}':>8}{ci:>16}"
                )
            print(f"{m:<8} {v['mean_site_macro_auroc']:6.3f} " + " ".join(cells))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
