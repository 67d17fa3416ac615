"""How much the simulation costs on top of the training arithmetic itself.

A cheap objective (0.5 ||w - c||^2 plus nothing: one subtraction and one dot product) over a
moderately large flat vector makes the simulation's own per-step work as visible as it can be:

- ``plain``   a bare Python loop: ``loss, g = f(w); w -= lr * g``;
- ``pooled``  the same objective through ``run_pooled`` (site loop, event heap, the
              non-finite-gradient check): its throughput relative to ``plain`` is the overhead;
- ``local``   8 sites through ``run_network`` vs a plain round-robin loop over the same 8
              objectives (same memory footprint): the overhead with 8 sites;
- ``ecl`` / ``gossip``  the same 8 sites on a multiplex ring, K = 8: their extra vector work per
              step (dual update, coupling, messages) is the algorithm, not the simulation.

Writes benchmarks/results/simulation_overhead.json. Run from the repository root:
``python benchmarks/simulation_overhead.py [--params 1000000] [--steps 300]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hospitalnet.config import NetworkConfig, TrainingConfig
from hospitalnet.objective import QuadraticObjective
from hospitalnet.simulation import run_network, run_pooled

ROOT = Path(__file__).resolve().parent.parent
TRAIN = TrainingConfig(lr=0.1, weight_decay=0.0)


def plain_loop(objectives: list[QuadraticObjective], steps: int) -> float:
    """``steps`` SGD steps on every objective, round robin (the sites' memory footprint)."""
    ws = [o.init_params() for o in objectives]
    t = time.perf_counter()
    for _ in range(steps):
        for objective, w in zip(objectives, ws):
            _, grad = objective.loss_and_grad(w)
            w.add_(grad, alpha=-TRAIN.lr)
    return time.perf_counter() - t


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=300, help="local steps per site")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "simulation_overhead.json")
    )
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, args.params, generator=g)
    sites = {f"n{k + 1}": QuadraticObjective(centres[k], 100) for k in range(8)}
    one = QuadraticObjective(centres[0], 800)

    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(args.repeat):  # interleaved, best of N: the machine is shared
        keep("plain", plain_loop([one], args.steps))
        keep("pooled", timed(lambda: run_pooled(one, args.steps, 0, training=TRAIN)))
        keep("plain_8_sites", plain_loop(list(sites.values()), args.steps))
        for method in ("ecl", "gossip", "local"):
            keep(
                method,
                timed(
                    lambda m=method: run_network(
                        m,
                        sites,
                        "multiplex_ring",
                        args.steps,
                        0,
                        training=TRAIN,
                        network=NetworkConfig(exchange_every=8),
                    )  # fmt: skip
                ),
            )
    result = {
        "params": args.params,
        "steps_per_site": args.steps,
        "torch_threads": torch.get_num_threads(),
        "seconds": best,
        "throughput_vs_plain": {
            "pooled": best["plain"] / best["pooled"],
            "local_8_sites": best["plain_8_sites"] / best["local"],
            "ecl_8_sites": best["plain_8_sites"] / best["ecl"],
            "gossip_8_sites": best["plain_8_sites"] / best["gossip"],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
