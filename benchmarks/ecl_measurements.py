"""Measurements behind the PDMM presets (``ecl-pdmm-damped``, the ``ecl`` of earlier releases;
ALGORITHMS.md section 2), written to a JSON file.

1. theta sweep on the quadratic problem (8 sites, K = 8, exact gradients, sample weights) under
   increasingly late messages: worst site's distance to the pooled optimum after a fixed number
   of steps, and the first evaluation point where it is below 1e-6.
2. The same sweep on the class-split digits problem of tests/algorithms/test_digits.py (mean and
   worst site test accuracy), and dual initialisation A w0 vs 0 on its transient.

Run from the repository root:  python benchmarks/ecl_measurements.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from hospitalnet.config import ECLConfig, NetworkConfig, TrainingConfig
from hospitalnet.objective import QuadraticObjective
from hospitalnet.simulation import run_network

ROOT = Path(__file__).resolve().parent.parent
THETAS = [1.0, 0.9, 0.8, 0.75, 0.5]
SITES = [f"n{k}" for k in range(1, 9)]
SIZES = [10, 20, 30, 40, 50, 60, 70, 80]


def quadratic_sweep(steps: int) -> list[dict]:
    centres = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    p = torch.tensor(SIZES, dtype=torch.float64) / sum(SIZES)
    target = (p[:, None] * centres.double()).sum(0)
    objectives = {s: QuadraticObjective(centres[k], SIZES[k]) for k, s in enumerate(SITES)}

    def err(k, params):
        return max(float((w.double() - target).abs().max()) for w in params.values())

    rows = []
    settings = [
        ("multiplex_ring", (0.5, 3.0), 0.0, "auto"),
        ("multiplex_ring", (2.0, 5.0), 0.0, "auto"),
        ("multiplex_ring", (2.0, 5.0), 0.2, "auto"),
        ("multiplex_ring", (5.0, 20.0), 0.2, "auto"),
        ("complete", (2.0, 5.0), 0.2, "auto"),
        ("multiplex_ring", (2.0, 5.0), 0.0, 1.0),
        ("multiplex_ring", (2.0, 5.0), 0.0, 4.0),
    ]
    for topo, latency, drop, eta in settings:
        for theta in THETAS:
            r = run_network(
                "ecl-pdmm-damped", objectives, topo, steps, seed=0,
                training=TrainingConfig(lr=0.1, weight_decay=0.0),
                ecl=ECLConfig(theta=theta, eta=eta),
                network=NetworkConfig(latency_steps=latency, drop_prob=drop),
                eval_every=100, eval_fn=err,
            )  # fmt: skip
            first = next((k for k, e in r.evaluations if e < 1e-6), None)
            rows.append(
                dict(
                    topology=topo,
                    latency=latency,
                    drop=drop,
                    eta=eta,
                    theta=theta,
                    final_error=r.evaluations[-1][1],
                    steps_to_1e6=first,
                )  # fmt: skip
            )
            print(rows[-1], flush=True)
    return rows


def digits_runs(steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "algorithms"))
    from test_digits import NET, TRAIN, accuracy, digits_world

    objectives, _, xte, yte = digits_world()

    def curve(k, params):
        accs = [accuracy(w, xte, yte) for w in params.values()]
        return sum(accs) / len(accs), min(accs)

    out: dict = {"theta": [], "dual_init": []}
    for theta in THETAS:
        t = time.perf_counter()
        r = run_network(
            "ecl-pdmm-damped", objectives(), "multiplex_ring", steps, 0, training=TRAIN,
            ecl=ECLConfig(theta=theta), network=NET,
        )  # fmt: skip
        mean, worst = curve(steps, r.params)
        out["theta"].append(dict(theta=theta, mean=mean, worst=worst))
        print(out["theta"][-1], f"{time.perf_counter() - t:.1f}s", flush=True)
    for init in ("model", "zero"):
        r = run_network(
            "ecl-pdmm-damped", objectives(), "multiplex_ring", steps, 0, training=TRAIN,
            ecl=ECLConfig(theta=0.8, dual_init=init), network=NET,
            eval_every=100, eval_fn=curve,
        )  # fmt: skip
        out["dual_init"].append(dict(dual_init=init, curve=r.evaluations))
        print(init, [(k, round(m, 3)) for k, (m, _) in r.evaluations[:12]], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="quadratic sweep only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ecl_measurements.json"))
    args = ap.parse_args()
    result = {"quadratic": quadratic_sweep(2000)}
    if not args.quick:
        result["digits"] = digits_runs(3000)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
