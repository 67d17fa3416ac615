"""ECL and its variants against the baselines on a chest world, over paired training seeds.

Every variant trains through ``hospitalnet.experiment.train_method`` (the code ``hospitalnet
simulate`` runs) on the same world, initial model and seed; figures per run:

- ``mean_site`` / ``worst_site``: macro AUROC of the sites' final models on the global test set
  (mean over sites, worst site);
- ``averaged``: macro AUROC of the average of the sites' final models (what consensus would
  give; separates "the sites disagree" from "their consensus is wrong");
- ``consensus_distance``: mean over sites of ||w_i - w_avg||^2 / ||w_avg||^2;
- ``brier`` / ``log_loss``: mean over sites and the 14 labels on the global test set (scored
  labels only), where a biased consensus shows even when the ranking (AUROC) does not;
- ``late_train_loss``: the sites' minibatch loss over the last 10% of steps;
- ``curve``: mean site macro AUROC at each evaluation point.

Paired differences (variant minus reference, same seed) with 95% t-intervals for mean site,
worst site and Brier against gossip, FedAvg and pooled. A figure of the learning curves goes
beside the JSON. ``--world-seed`` fixes the world (``world.seed``) so that seeds vary only the
training; without it each seed is its own world, still shared by every variant of that seed.

``python benchmarks/ecl_diagnostics.py --config configs/default.yaml --seeds 5``; ``--smoke``
checks the script on configs/quick.yaml with one seed (output in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import command, machine, output_path, paired, save, spread  # noqa: E402
from benchmarks.accuracy import Worlds, with_overrides  # noqa: E402
from evaluation.metrics import macro_of_predictions  # noqa: E402
from hospitalnet.assembly import initial_model  # noqa: E402
from hospitalnet.config import load_config  # noqa: E402
from hospitalnet.experiment import train_method  # noqa: E402
from hospitalnet.rundir_schema import GLOBAL, curve_key, final_key  # noqa: E402
from hospitalnet.training.torch_objectives import predict_proba  # noqa: E402

#: name -> (method, config overrides by section)
VARIANTS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "ecl": ("ecl", {}),
    "ecl-no-dual": ("ecl", {"ecl": {"dual_gain": 0.0}}),
    "ecl-no-warmup": ("ecl", {"ecl": {"dual_warmup_steps": 0}}),
    "ecl-pdmm-damped": ("ecl-pdmm-damped", {}),
    "ecl-pdmm": ("ecl-pdmm", {}),
    "gossip": ("gossip", {}),
    "fedavg": ("fedavg", {}),
    "fedprox": ("fedprox", {}),
    "local": ("local", {}),
    "pooled": ("pooled", {}),
}
DEFAULT_VARIANTS = "pooled,ecl,ecl-no-warmup,ecl-no-dual,gossip,fedavg,ecl-pdmm-damped"
REFERENCES = ("gossip", "fedavg", "pooled")
EPS = 1e-7


def calibration(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Brier score and log loss over the scored (non-NaN) entries of [N, 14] arrays."""
    mask = np.isfinite(labels)
    y, p = labels[mask], np.clip(probs.astype(np.float64)[mask], EPS, 1 - EPS)
    brier = float(np.mean((p - y) ** 2))
    log_loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return brier, log_loss


def run_variant(name: str, cfg, world, steps: int) -> dict[str, Any]:
    method, overrides = VARIANTS[name]
    vcfg = with_overrides(cfg, **overrides) if overrides else cfg
    flat = initial_model(vcfg)
    w0 = flat.flat.detach().clone()
    result, stored, wall = train_method(method, vcfg, world, flat, w0, progress=False)
    labels = world.global_test.labels.numpy()
    preds = stored["predictions"]
    sites = list(world.train)
    aurocs, briers, losses = [], [], []
    for s in sites:
        p = preds[final_key(s, GLOBAL)]
        aurocs.append(float(macro_of_predictions(labels, p)[0]))
        b, ll = calibration(labels, p)
        briers.append(b)
        losses.append(ll)
    finals = [result.params.get(s, result.params.get("pooled")) for s in sites]  # pooled: one
    params = torch.stack([w.detach().float().cpu() for w in finals])
    avg = params.mean(0)
    dist = float(((params - avg) ** 2).sum(1).mean() / (avg**2).sum())
    avg_probs = predict_proba(flat, avg.to(flat.flat.device), world.global_test.images).numpy()
    curve = []
    for point in stored["history"].eval_points:
        vals = [
            macro_of_predictions(labels, preds[curve_key(point.k, s, GLOBAL)].astype(np.float32))[0]
            for s in sites
        ]
        curve.append({"local_steps": point.local_steps, "mean_site": float(np.nanmean(vals))})
    tail = [
        float(np.mean(v[-max(1, len(v) // 10) :])) for v in result.losses.values() if len(v) > 0
    ]
    return {
        "mean_site": float(np.nanmean(aurocs)),
        "worst_site": float(np.nanmin(aurocs)),
        "averaged": float(macro_of_predictions(labels, avg_probs)[0]),
        "consensus_distance": dist,
        "brier": float(np.mean(briers)),
        "log_loss": float(np.mean(losses)),
        "late_train_loss": float(np.mean(tail)) if tail else None,
        "curve": curve,
        "wall_s": wall,
        "messages_sent": result.messages_sent,
        "bytes_sent": result.bytes_sent,
    }


def summarise(rows: dict[int, dict[str, dict[str, Any]]], variants: list[str]) -> dict[str, Any]:
    seeds = sorted(rows)
    keys = ["mean_site", "worst_site", "averaged", "consensus_distance", "brier", "log_loss",
            "late_train_loss", "wall_s"]  # fmt: skip
    out: dict[str, Any] = {"variants": {}, "paired": {}}
    for v in variants:
        out["variants"][v] = {k: spread([rows[s][v][k] for s in seeds]) for k in keys}
    for v in variants:
        for ref in REFERENCES:
            if ref == v or ref not in variants:
                continue
            out["paired"][f"{v} - {ref}"] = {
                k: paired([rows[s][v][k] - rows[s][ref][k] for s in seeds])
                for k in ("mean_site", "worst_site", "brier")
            }
    return out


def plot(rows: dict[int, dict[str, dict[str, Any]]], variants: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for v in variants:
        curves = [rows[s][v]["curve"] for s in rows]
        n = min(len(c) for c in curves)  # a run whose sites finish late has one more point
        x = [p["local_steps"] for p in curves[0][:n]]
        y = np.mean([[p["mean_site"] for p in c[:n]] for c in curves], axis=0)
        ax.plot(x, y, marker="o", ms=3, label=v)
    ax.set_xlabel("local steps")
    ax.set_ylabel("mean site macro AUROC (global test)")
    ax.set_title(f"learning curves, mean over {len(rows)} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--world-seed", type=int, default=None)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--resume", action="store_true", help="keep the seeds already in --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    config = str(ROOT / "configs" / "quick.yaml") if args.smoke else args.config
    base = with_overrides(load_config(config), training={"threads": 1})
    if args.world_seed is not None:
        base = with_overrides(base, world={"seed": args.world_seed})
    seeds = [0] if args.smoke else list(range(args.seeds))
    worlds = Worlds(progress=False)
    out = output_path(args.out, "ecl_diagnostics.json", smoke=args.smoke)
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    if args.resume and out.exists():
        done = json.loads(out.read_text())
        if done.get("command", "").split(" --resume")[0] != command().split(" --resume")[0]:
            ap.error(f"--resume: {out} was made by another command")
        rows = {int(k): v for k, v in done["runs"].items() if set(variants) <= set(v)}
    t0 = time.perf_counter()
    for seed in seeds:
        if seed in rows:
            continue
        cfg = with_overrides(base, seed=seed)  # type: ignore[arg-type]
        world = worlds.get(cfg)
        rows[seed] = {}
        for v in variants:
            r = run_variant(v, cfg, world, cfg.training.local_steps)
            rows[seed][v] = r
            print(f"seed {seed} {v:16s} mean {r['mean_site']:.4f} worst {r['worst_site']:.4f} "
                  f"avg {r['averaged']:.4f} brier {r['brier']:.5f} "
                  f"dist {r['consensus_distance']:.2e} ({r['wall_s']:.0f} s)", flush=True)  # fmt: skip
        # saved after every seed: a long run interrupted keeps its complete seeds
        summary = summarise(rows, variants)
        result = {
            "machine": machine(),
            "command": command(),
            "config": config,
            "world_seed": args.world_seed,
            "seeds": sorted(rows),
            "complete": len(rows) == len(seeds),
            "torch_threads": 1,
            "wall_s": time.perf_counter() - t0,
            **summary,
            "runs": {str(s): rows[s] for s in sorted(rows)},
        }
        save(result, out)
        plot(rows, variants, out.with_suffix(".png"))
    for k, v in summary["paired"].items():
        ms = v["mean_site"]
        lo = "" if ms["low"] is None else f" [{ms['low']:+.4f}, {ms['high']:+.4f}]"
        print(f"paired {k:28s} mean site {ms['mean']:+.4f}{lo}")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
