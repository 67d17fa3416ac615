"""Is every label of the synthetic world learnable, and none trivially? Per-label AUROC of pooled.

Trains the pooled model (the same code and settings ``hospitalnet simulate`` uses: configured
model, image size, batch = batch_size x n_sites, local_steps) on the configured world for each
seed and training length of ``--steps``, and scores it on the global test set: AUROC per label
with a 95% patient-bootstrap interval, and the positives behind it. Each seed is its own
world (generated with that seed) as well as its own initialisation, unless the config sets
``world.seed`` (then every seed trains on that one world). The synthetic world is meant
to give a spread like the real ChestX-ray14 (roughly 0.6-0.95 for a small model, no label at
chance, none at 1.0).

Has training converged? Every run also records pooled's learning curve (macro AUROC on the global
test set at the config's ``training.eval_points``) and its *last-quarter rise*: the macro AUROC
at the end minus the macro AUROC at the evaluation point nearest to 3/4 of the steps (a flat
curve: a rise near 0).

Writes benchmarks/results/learnability.json. Run from the repository root:
``python benchmarks/learnability.py [--seeds 2] [--steps 500,2000]``;
``python benchmarks/learnability.py --config configs/strong.yaml --steps 3000 --seeds 3 --out
benchmarks/results/learnability_strong.json`` (the strong world's convergence);
``--smoke``: configs/quick.yaml, one seed, output in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks._common import command, machine, output_path, save, spread  # noqa: E402
from benchmarks.accuracy import Worlds, with_overrides  # noqa: E402
from evaluation.metrics import evaluate_testset, macro_of_predictions  # noqa: E402
from hospitalnet.assembly import initial_model  # noqa: E402
from hospitalnet.config import load_config  # noqa: E402
from hospitalnet.experiment import POOLED, train_method  # noqa: E402
from hospitalnet.labels import LABELS  # noqa: E402
from hospitalnet.rundir import key  # noqa: E402
from hospitalnet.rundir_schema import GLOBAL, curve_key  # noqa: E402
from hospitalnet.seeding import int_seed  # noqa: E402


def defined(value: float) -> float | None:
    """JSON has no NaN: an undefined AUROC (no positive or no negative) is stored as None."""
    return float(value) if np.isfinite(value) else None


def learning_curve(stored: dict, world, site: str) -> list[dict[str, float | None]]:
    """Pooled's macro AUROC on the global test set at every evaluation point."""
    labels = world.global_test.labels.numpy()
    curve = []
    for point in stored["history"].eval_points:
        probs = stored["predictions"][curve_key(point.k, site, GLOBAL)]
        value, _ = macro_of_predictions(labels, probs)
        curve.append({"local_steps": point.local_steps, "macro_auroc": defined(value)})
    return curve


def last_quarter_rise(curve: list[dict[str, float | None]], final: float) -> float | None:
    """``final`` minus the macro AUROC at the evaluation point nearest to 3/4 of the last point's
    steps (points fall a step or two off the nominal spacing); None without such a point."""
    if len(curve) < 2 or not np.isfinite(final):
        return None
    three_quarters = 0.75 * curve[-1]["local_steps"]
    point = min(curve[:-1], key=lambda p: abs(p["local_steps"] - three_quarters))
    return None if point["macro_auroc"] is None else float(final - point["macro_auroc"])


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (default %(default)s)")
    ap.add_argument("--steps", default="500,2000", help="training lengths (local steps)")
    ap.add_argument("--out", default=None, help="JSON (default results/learnability.json)")
    ap.add_argument("--smoke", action="store_true", help="quick.yaml, one seed")
    args = ap.parse_args()
    if args.smoke:
        args.config, args.seeds, args.steps = str(ROOT / "configs" / "quick.yaml"), 1, "24"
    out = output_path(args.out, "learnability.json", smoke=args.smoke)
    base = load_config(args.config)
    worlds = Worlds(progress=False)
    runs = []
    for steps in [int(s) for s in args.steps.split(",") if s.strip()]:
        for seed in range(args.seeds):
            cfg = with_overrides(base, seed=seed, training={"local_steps": steps})
            world = worlds.get(cfg)
            flat = initial_model(cfg)
            _, stored, wall = train_method(
                POOLED, cfg, world, flat, flat.flat.detach().clone(), progress=False
            )
            site = next(iter(world.train))  # pooled: the same model at every site
            probs = stored["predictions"][key("final", site, GLOBAL)]
            curve = learning_curve(stored, world, site)
            result = evaluate_testset(
                world.global_test.labels.numpy(),
                probs,
                world.global_test.patients.numpy(),
                LABELS,
                np.random.default_rng(int_seed(seed, "bootstrap")),
            )
            rise = last_quarter_rise(curve, result.macro.value)
            per_label = {
                r.label: {
                    "auroc": defined(r.auroc),
                    "ci_low": defined(r.ci_low),
                    "ci_high": defined(r.ci_high),
                    "n_pos": r.counts.n_pos,
                }
                for r in result.labels
            }
            runs.append(
                {
                    "seed": seed,
                    "local_steps": steps,
                    "macro_auroc": defined(result.macro.value),
                    "labels": per_label,
                    "wall_s": wall,
                    "curve": curve,
                    "last_quarter_rise": rise,
                }
            )
            known = {k: v["auroc"] for k, v in per_label.items() if v["auroc"] is not None}
            lo, hi = min(known, key=known.get), max(known, key=known.get)  # type: ignore[arg-type]
            print(
                f"steps {steps} seed {seed}: macro {result.macro.value:.3f}, labels "
                f"{known[lo]:.3f} ({lo}) to {known[hi]:.3f} ({hi}); "
                f"{len(per_label) - len(known)} undefined; {wall:.0f} s",
                flush=True,
            )
            points = ", ".join(
                f"{p['local_steps']:g}: {p['macro_auroc']:.3f}"
                for p in curve
                if p["macro_auroc"] is not None
            )
            text = "n/a" if rise is None else f"{rise:+.4f}"
            print(f"  learning curve (steps: macro) {points}; last-quarter rise {text}")
            for name, v in per_label.items():
                text = "undefined" if v["auroc"] is None else f"{v['auroc']:.3f}"
                if v["ci_low"] is not None:
                    text += f" [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                print(f"  {name:<20} {text} {v['n_pos']} positives")
    summary = {
        f"{steps}": {
            name: spread([r["labels"][name]["auroc"] for r in runs if r["local_steps"] == steps])
            for name in LABELS
        }
        for steps in sorted({r["local_steps"] for r in runs})
    }
    convergence = {
        steps: {
            "macro_auroc": spread(
                [r["macro_auroc"] for r in runs if r["local_steps"] == int(steps)]
            ),
            "last_quarter_rise": spread(
                [r["last_quarter_rise"] for r in runs if r["local_steps"] == int(steps)]
            ),
            "wall_s": spread([r["wall_s"] for r in runs if r["local_steps"] == int(steps)]),
        }
        for steps in summary
    }
    for steps, stat in convergence.items():
        rise = stat["last_quarter_rise"]
        print(
            f"{steps} steps over {rise['n']} seed(s): last-quarter rise mean "
            f"{_signed(rise['mean'])}, max {_signed(rise['max'])}"
        )
    save(
        {
            "benchmark": "learnability",
            "smoke": args.smoke,
            "command": command(),
            "config": args.config,
            "machine": machine(),
            "settings": {
                "model": base.model.name,
                "image_size": base.data.image_size,
                "batch": base.training.batch_size,
                "lr": base.training.lr,
                "lr_schedule": base.training.lr_schedule,
                "eval_points": base.training.eval_points,
                "profile": base.partition.profile,
                "world_seed": base.world.seed,
            },
            "runs": runs,
            "summary_by_steps": summary,
            "convergence_by_steps": convergence,
        },
        out,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
