"""How each decentralised method moves, on problems whose answer is known: the ECL diagnostics.

Three parts, every run through ``hospitalnet.simulation.run_network`` (8 sites, multiplex ring,
K = 8, the simulation's default latency of 0.5-3 steps unless said otherwise):

- ``speed``  common-mode speed: every site has the same linear loss g.w, so the ideal mean
             model moves by -mu T g (what plain SGD does). Speed = the mean model's displacement
             along g divided by mu T |g|^2 (1 = SGD's speed; below 1, the method slows the
             part of training every site agrees on). At the default latency and without latency.
- ``noise``  the variance of the effective update: every site has f = 0.5 ||w||^2 plus
             Gaussian gradient noise (sigma 1), the same at every site, so consensus is free and
             only noise remains. Figures at the end of the run, averaged over seeds: the sites'
             mean squared distance to the optimum relative to a site training alone ("noise
             ratio": 1 = no benefit, 1/8 = perfect averaging) and the consensus distance
             (mean squared distance of the sites to their average).
- ``digits`` scikit-learn digits split by class over 8 sites (tests/algorithms/test_digits.py,
             3-4 classes per site), an MLP, the same steps for every method; test accuracy of
             each site's model (mean and worst) and of pooled training, over paired seeds, with
             95% intervals of the paired differences.

Writes benchmarks/results/ecl_dynamics.json. ``python benchmarks/ecl_dynamics.py [--seeds 3]``;
``--smoke`` runs everything small (output in a temporary folder unless --out is given).
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

import torch  # noqa: E402

from benchmarks._common import command, machine, output_path, paired, save, spread  # noqa: E402
from hospitalnet.config import NetworkConfig, TrainingConfig  # noqa: E402
from hospitalnet.objective import LinearObjective, QuadraticObjective  # noqa: E402
from hospitalnet.seeding import torch_generator  # noqa: E402
from hospitalnet.simulation import run_network, run_pooled  # noqa: E402

SITES = [f"n{k}" for k in range(1, 9)]
METHODS = [
    "ecl",
    "ecl-pdmm",
    "ecl-pdmm-damped",
    "ecl-relaxed-pdmm",
    "ecl-isvr",
    "gossip",
    "fedavg",
]
DIGITS_METHODS = ["ecl", "ecl-pdmm-damped", "gossip", "fedavg"]
NO_LATENCY = NetworkConfig(latency_steps=(0.0, 0.0))


def common_mode_speed(method: str, network: NetworkConfig, steps: int, seed: int) -> float:
    g = torch.randn(16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lr = 0.1
    objectives = {s: LinearObjective(g, 100) for s in SITES}  # equal sizes: every weight 1
    train = TrainingConfig(lr=lr, weight_decay=0.0)
    result = run_network(method, objectives, "multiplex_ring", steps, seed, training=train,
                         network=network)  # fmt: skip
    mean = torch.stack(list(result.params.values())).mean(0)
    return float(-torch.dot(mean, g) / (lr * steps * torch.dot(g, g)))


def noise(method: str, steps: int, seed: int) -> dict[str, float]:
    dim, lr = 64, 0.05
    objectives = {
        s: QuadraticObjective(
            torch.zeros(dim, dtype=torch.float64), 100, noise=1.0,
            generator=torch_generator(seed, "noise", s),
        )
        for s in SITES
    }  # fmt: skip
    train = TrainingConfig(lr=lr, weight_decay=0.0)
    result = run_network(method, objectives, "multiplex_ring", steps, seed, training=train)
    w = torch.stack(list(result.params.values()))
    alone = lr / (2 - lr)  # stationary E w^2 per coordinate of SGD with noise 1 on 0.5 w^2
    return {
        "noise_ratio": float((w**2).mean() / alone),
        "consensus_distance": float(((w - w.mean(0)) ** 2).mean() / alone),
    }


def digits(methods: list[str], steps: int, seed: int) -> dict[str, Any]:
    from tests.algorithms.test_digits import NET, TRAIN, accuracy, digits_world

    objectives, pooled_objective, xte, yte = digits_world(seed=seed)
    out: dict[str, Any] = {}
    pooled = run_pooled(pooled_objective, steps, seed=seed, training=TRAIN)
    out["pooled"] = {"mean": accuracy(pooled.params["pooled"], xte, yte)}
    out["pooled"]["worst"] = out["pooled"]["mean"]
    for method in methods:
        r = run_network(method, objectives(), "multiplex_ring", steps, seed=seed, training=TRAIN,
                        network=NET)  # fmt: skip
        acc = [accuracy(w, xte, yte) for w in r.params.values()]
        out[method] = {"mean": sum(acc) / len(acc), "worst": min(acc)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--parts", default="speed,noise,digits")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--digits-steps", type=int, default=3000)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    methods = args.methods.split(",")
    parts = args.parts.split(",")
    seeds = list(range(1 if args.smoke else args.seeds))
    speed_steps, noise_steps = (40, 200) if args.smoke else (400, 2000)
    digits_steps = 100 if args.smoke else args.digits_steps
    result: dict[str, Any] = {"machine": machine(), "command": command(), "torch_threads": 1}
    t0 = time.perf_counter()
    if "speed" in parts:
        result["common_mode_speed"] = {}
        for m in methods:
            default = [common_mode_speed(m, NetworkConfig(), speed_steps, s) for s in seeds]
            quiet = [common_mode_speed(m, NO_LATENCY, speed_steps, s) for s in seeds]
            result["common_mode_speed"][m] = {
                "default_latency": spread(default),
                "no_latency": spread(quiet),
            }
            print(f"speed {m:18s} default {spread(default)['mean']:.3f}  "
                  f"no latency {spread(quiet)['mean']:.3f}", flush=True)  # fmt: skip
    if "noise" in parts:
        result["noise"] = {}
        for m in methods:
            runs = [noise(m, noise_steps, s) for s in seeds]
            result["noise"][m] = {k: spread([r[k] for r in runs]) for k in runs[0]}
            print(f"noise {m:18s} ratio {result['noise'][m]['noise_ratio']['mean']:.3f}  "
                  f"consensus {result['noise'][m]['consensus_distance']['mean']:.3f}",
                  flush=True)  # fmt: skip
    if "digits" in parts:
        dmethods = [m for m in DIGITS_METHODS if m in methods]
        runs = [digits(dmethods, digits_steps, s) for s in seeds]
        summary: dict[str, Any] = {"steps": digits_steps, "seeds": seeds, "methods": {}}
        for m in ["pooled", *dmethods]:
            summary["methods"][m] = {
                "mean_accuracy": spread([r[m]["mean"] for r in runs]),
                "worst_accuracy": spread([r[m]["worst"] for r in runs]),
            }
        summary["paired"] = {
            "ecl_worst_minus_pooled": paired(
                [r["ecl"]["worst"] - r["pooled"]["mean"] for r in runs]
            ),
            "ecl_mean_minus_pooled": paired([r["ecl"]["mean"] - r["pooled"]["mean"] for r in runs]),
        }
        for m in dmethods:
            if m != "ecl":
                summary["paired"][f"ecl_worst_minus_{m}_worst"] = paired(
                    [r["ecl"]["worst"] - r[m]["worst"] for r in runs]
                )
        result["digits"] = summary
        for m, v in summary["methods"].items():
            print(f"digits {m:18s} mean {v['mean_accuracy']['mean']:.4f}  "
                  f"worst {v['worst_accuracy']['mean']:.4f}", flush=True)  # fmt: skip
        for k, v in summary["paired"].items():
            print(f"digits paired {k}: {v}")
    result["wall_s"] = time.perf_counter() - t0
    out = save(result, output_path(args.out, "ecl_dynamics.json", smoke=args.smoke))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
