"""Why does ECL trail gossip and pooled on the default world? Variants that each test one cause.

For every seed, on the configured world (default: configs/default.yaml, multiplex ring), train:

- ``ecl``, ``gossip``, ``pooled`` as configured (the references);
- coupling strength: ECL with a fixed ``eta`` of ``--etas`` (the default "auto" ISVR rule gives
  eta * mu = 1 / ((K - 1) * degree) = 1/28 here, i.e. eta = 0.18 at mu = 0.2);
- site weighting: ECL with ``site_weighting: uniform`` (the default scales site i's loss by
  N p_i, so the largest site steps ~3x harder than the smallest);
- duals initialisation: ECL with ``dual_init: zero`` (the authors' choice);
- asynchrony: ECL and gossip with no link latency, no staggering and no compute jitter
  (synchronous exchanges on the same steps): what the stale duals cost each method;
- training length: ecl, gossip and pooled at ``--long-steps`` local steps.

Per run: the mean and worst site macro AUROC on the global test set; the macro AUROC of the
*averaged* site model (weights n_i), which separates "the sites disagree" from "the consensus
point itself is behind"; the consensus distance (mean over sites of ||w_i - w_bar|| / ||w_bar||);
the mean training loss of the last 10% of steps; the gap to the pooled model of the same seed
and training length. Each seed is its own world too (the world's seed is the run's seed), so
the spread covers data as well as initialisation and timing (benchmarks/accuracy.py keeps one
world).

Writes benchmarks/results/ecl_diagnosis.json. Run from the repository root:
``python benchmarks/ecl_diagnosis.py [--seeds 2] [--long-steps 2000]``;
``--smoke``: configs/quick.yaml, one seed, a few steps, output in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import command, machine, output_path, save, spread  # noqa: E402
from benchmarks.accuracy import Worlds, site_macros, with_overrides  # noqa: E402
from evaluation.metrics import macro_of_predictions  # noqa: E402
from hospitalnet.config import ExperimentConfig, load_config  # noqa: E402
from hospitalnet.experiment import POOLED, World, train_method  # noqa: E402
from hospitalnet.models import build_model  # noqa: E402
from hospitalnet.models.flat import FlatParams  # noqa: E402
from hospitalnet.seeding import int_seed  # noqa: E402
from hospitalnet.training.objective import predict_proba  # noqa: E402

SYNC = {"latency_steps": (0.0, 0.0), "stagger_exchanges": False, "compute_jitter": 0.0}


def variants(etas: list[float], long_steps: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, what it tests, method, config overrides) of every run of one seed."""
    out = [
        ("pooled", "reference", POOLED, {}),
        ("ecl", "reference", "ecl", {}),
        ("gossip", "reference", "gossip", {}),
    ]
    out.append(("fedavg", "reference", "fedavg", {}))
    out += [(f"ecl eta={e:g}", "coupling", "ecl", {"ecl": {"eta": e}}) for e in etas]
    out += [
        (f"ecl eta={e:g} uniform", "coupling+weighting", "ecl",
         {"ecl": {"eta": e, "site_weighting": "uniform"}})
        for e in etas
    ]  # fmt: skip
    out += [
        ("ecl uniform", "weighting", "ecl", {"ecl": {"site_weighting": "uniform"}}),
        ("ecl dual_init=zero", "duals init", "ecl", {"ecl": {"dual_init": "zero"}}),
        ("ecl sync", "asynchrony", "ecl", {"network": SYNC}),
        ("gossip sync", "asynchrony", "gossip", {"network": SYNC}),
    ]
    if long_steps:
        longer = {"training": {"local_steps": long_steps}}
        out += [
            (f"pooled {long_steps} steps", "length", POOLED, longer),
            (f"ecl {long_steps} steps", "length", "ecl", longer),
            (f"gossip {long_steps} steps", "length", "gossip", longer),
        ]
    return out


def run_variant(cfg: ExperimentConfig, world: World, method: str) -> dict[str, Any]:
    """Train one method; site and averaged-model AUROCs, consensus distance, final loss."""
    model = build_model(cfg.model, int_seed(cfg.seed, "model", "init"))
    flat = FlatParams(model, cfg.model.name)
    w0 = flat.flat.detach().clone()
    result, stored, wall = train_method(method, cfg, world, flat, w0, progress=False)
    sites = site_macros(stored, world)
    defined = [v for v in sites.values() if v is not None]
    n = {s: len(world.train[s]) for s in world.train}
    total = sum(n.values())
    params = {s: result.params[POOLED] for s in world.train} if method == POOLED else result.params
    w_bar = sum(params[s] * (n[s] / total) for s in world.train)
    assert isinstance(w_bar, torch.Tensor)
    averaged, _ = macro_of_predictions(
        world.global_test.labels.numpy(),
        predict_proba(flat, w_bar, world.global_test.images).numpy(),
    )
    distance = [float((params[s] - w_bar).norm() / w_bar.norm()) for s in world.train]
    tail = [v[-max(len(v) // 10, 1) :] for v in result.losses.values()]
    return {
        "mean_site_macro_auroc": float(np.mean(defined)) if defined else None,
        "worst_site_macro_auroc": min(defined) if defined else None,
        "averaged_model_macro_auroc": float(averaged) if np.isfinite(averaged) else None,
        "consensus_distance": float(np.mean(distance)),
        "final_train_loss": float(np.mean([np.mean(t) for t in tail])),
        "local_steps": cfg.training.local_steps,
        "wall_s": wall,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean/std/min/max over seeds per variant, in the order the variants ran."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    fields = (
        "mean_site_macro_auroc",
        "gap_to_pooled",
        "averaged_model_macro_auroc",
        "consensus_distance",
        "final_train_loss",
    )
    out = []
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        entry = {"variant": name, "tests": mine[0]["tests"], "method": mine[0]["method"]}
        entry.update({f: spread([r.get(f) for r in mine]) for f in fields})
        out.append(entry)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (default %(default)s)")
    ap.add_argument("--etas", default="0.05,0.02", help="fixed eta values to try")
    ap.add_argument("--long-steps", type=int, default=2000, help="0: skip the length runs")
    ap.add_argument("--out", default=None, help="JSON (default results/ecl_diagnosis.json)")
    ap.add_argument("--smoke", action="store_true", help="quick.yaml, one seed, few steps")
    ap.add_argument(
        "--only", default="", help="comma-separated variant names to run (default: all)"
    )
    args = ap.parse_args()
    if args.smoke:
        args.config, args.seeds, args.long_steps = str(ROOT / "configs" / "quick.yaml"), 1, 48
    out = output_path(args.out, "ecl_diagnosis.json", smoke=args.smoke)
    base = load_config(args.config)
    worlds = Worlds(progress=False)
    etas = [float(e) for e in args.etas.split(",") if e.strip()]
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        pooled_by_steps: dict[int, float] = {}
        only = {v.strip() for v in args.only.split(",") if v.strip()}
        for name, tests, method, overrides in variants(etas, args.long_steps):
            if only and name not in only:
                continue
            cfg = with_overrides(base, seed=seed, **overrides)
            row = {"variant": name, "tests": tests, "method": method, "seed": seed}
            row.update(run_variant(cfg, worlds.get(cfg), method))
            if method == POOLED:
                pooled_by_steps[row["local_steps"]] = row["mean_site_macro_auroc"]
            ref = pooled_by_steps.get(row["local_steps"])
            mean = row["mean_site_macro_auroc"]
            row["gap_to_pooled"] = mean - ref if mean is not None and ref is not None else None
            rows.append(row)
            print(
                f"seed {seed} {name:<22} mean {mean:.3f} gap {row['gap_to_pooled']:+.3f} "
                f"averaged {row['averaged_model_macro_auroc']:.3f} "
                f"dist {row['consensus_distance']:.3f} loss {row['final_train_loss']:.4f} "
                f"({row['wall_s']:.0f} s)",
                flush=True,
            )
    result = {
        "benchmark": "ecl_diagnosis",
        "smoke": args.smoke,
        "command": command(),
        "config": args.config,
        "machine": machine(),
        "seeds": list(range(args.seeds)),
        "metric_note": "global test set; gap_to_pooled against pooled of the same seed and steps",
        "rows": rows,
        "summary": summarise(rows),
    }
    save(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
