"""ECL as eight OS processes (gRPC, mutual TLS) against ECL in process: how far apart, and why.

    python benchmarks/deploy_vs_simulation.py [--runs 3] [--timings 5] [--out FILE] [--smoke]

FedAvg's rounds are synchronous, so its process network reproduces the simulation to float
round-off (tests/deploy/test_fedavg_server.py). ECL is asynchronous: a dual is applied at
whatever local step it arrives, so the trajectory depends on message timing, which the simulation
draws (latency 0.5-3 nominal steps, +-10% compute jitter, seeded exchange offsets) and a real
network does not reproduce. What asynchrony allows is therefore measured against the simulation
itself: the same data, batches and w0, simulated with other timing seeds. On the deploy tests'
network (the default eight hospitals on a 300-patient world, 32 px, smallcnn width 8, 120 local
steps of 16 images, K = 4, processes paced at 20 steps/s and started together) it reports per
site and in the mean over sites:

- ``timing``: |macro AUROC (global test) of a simulation with another timing seed - reference|,
- ``processes``: |macro AUROC of the eight-process run - reference| (the in-process run of the
  run's own seed);
- ``local``: the same for the ``local`` method (no communication at all), the scale on which
  both differences are small.

The result sets the tolerance of tests/deploy/test_ecl_processes.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import command, machine, output_path, save, spread  # noqa: E402
from evaluation.metrics import macro_of_predictions  # noqa: E402
from hospitalnet.assembly import initial_model, site_objective  # noqa: E402
from hospitalnet.config import ExperimentConfig, validate  # noqa: E402
from hospitalnet.deploy.collect import collect_method  # noqa: E402
from hospitalnet.deploy.launcher import (  # noqa: E402
    prepare_network,
    release_start,
    start_node,
    stop_node,
    wait_nodes,
)
from hospitalnet.experiment import train_method  # noqa: E402
from hospitalnet.rundir_schema import GLOBAL, final_key  # noqa: E402
from hospitalnet.simulation import run_network  # noqa: E402
from hospitalnet.training.torch_objectives import predict_proba  # noqa: E402
from hospitalnet.world import World  # noqa: E402

#: The deploy tests' network (tests/deploy/conftest.py: tiny_config), paced at 20 steps/s.
SETTINGS = {
    "methods": ["ecl"],
    "world": {"patients": 300, "image_size": 48},
    "data": {"image_size": 32},
    "model": {"width": 8},
    "training": {"local_steps": 120, "batch_size": 16, "eval_points": 2},
    "network": {"exchange_every": 4},
    "deploy": {
        "inactive_after_s": 2.0, "heartbeat_interval_s": 0.3, "call_timeout_s": 3.0,
        "startup_wait_s": 90.0, "linger_max_s": 20.0, "linger_grace_s": 1.0,
        "checkpoint_every": 20, "step_interval_s": 0.05, "max_wall_s": 240.0,
    },
}  # fmt: skip


def site_aurocs(world: World, predictions: dict[str, np.ndarray]) -> dict[str, float]:
    labels = world.global_test.labels.numpy()
    return {
        s: float(macro_of_predictions(labels, predictions[final_key(s, GLOBAL)])[0])
        for s in world.train
    }


def simulated(cfg: ExperimentConfig, world: World, method: str, timing_seed: int | None):
    """Final-model AUROCs in process; ``timing_seed`` None = the run's own seed for everything,
    else the same batches and w0 with the simulation's timing drawn from ``timing_seed``."""
    flat = initial_model(cfg)
    w0 = flat.flat.detach().clone()
    if timing_seed is None:
        _, stored, _ = train_method(method, cfg, world, flat, w0, progress=False)
        return site_aurocs(world, stored["predictions"])
    objectives = {
        s: site_objective(cfg, flat, t.images, t.labels, s) for s, t in world.train.items()
    }
    result = run_network(
        method, objectives, cfg.topology, cfg.training.local_steps, timing_seed,
        training=cfg.training, ecl=cfg.ecl, network=cfg.network, w0=w0,
    )  # fmt: skip
    preds = {
        final_key(s, GLOBAL): predict_proba(flat, w, world.global_test.images).numpy()
        for s, w in result.params.items()
    }
    return site_aurocs(world, preds)


def processes(cfg: ExperimentConfig, out: Path) -> tuple[dict[str, float], float]:
    """One eight-process ECL run with a common start; its AUROCs and wall seconds."""
    layout, world = prepare_network(cfg, out)
    start = out / "start"
    procs = {s: start_node(layout, s, "ecl", start_file=start) for s in layout.sites}
    t0 = time.perf_counter()
    try:
        late = release_start(layout, "ecl", procs, start, cfg.deploy.startup_wait_s)
        codes = wait_nodes(procs, 300)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_node(proc)
    if late or any(codes.values()):
        raise SystemExit(f"process run failed: late {late}, exit codes {codes}")
    n_train = sum(len(t) for t in world.train.values())
    result = collect_method(layout, "ecl", n_train, cfg.training.batch_size)
    return site_aurocs(world, result.predictions), time.perf_counter() - t0


def differences(values: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    per_site = [abs(values[s] - reference[s]) for s in reference]
    mean = abs(np.mean(list(values.values())) - np.mean(list(reference.values())))
    return {
        "max_site": float(max(per_site)),
        "mean_site": float(np.mean(per_site)),
        "of_mean": float(mean),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="eight-process runs")
    ap.add_argument("--timings", type=int, default=5, help="simulations with other timing seeds")
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="1 run, 1 timing; results to a temp dir")
    args = ap.parse_args()
    if args.smoke:
        args.runs, args.timings = 1, 1
    torch.set_num_threads(1)
    out = output_path(args.out, "deploy_vs_simulation.json", smoke=args.smoke)
    tmp = Path(tempfile.mkdtemp(prefix="hospitalnet-deploy-vs-sim-"))
    cfg = validate(
        ExperimentConfig,
        {**SETTINGS, "world": {**SETTINGS["world"], "cache_dir": str(tmp / "world")}},
        source="benchmark",
    )
    _, world = prepare_network(cfg, tmp / "prepare")
    reference = simulated(cfg, world, "ecl", None)
    local = simulated(cfg, world, "local", None)
    print(f"reference ECL mean macro AUROC {np.mean(list(reference.values())):.4f}")
    timing, runs = [], []
    for seed in range(1, args.timings + 1):
        d = differences(simulated(cfg, world, "ecl", 1000 + seed), reference)
        timing.append(d)
        print(
            f"timing seed {1000 + seed}: max site {d['max_site']:.4f}, of mean {d['of_mean']:.4f}"
        )
    for r in range(args.runs):
        aurocs, wall = processes(cfg, tmp / f"run{r}")
        d = differences(aurocs, reference)
        runs.append({**d, "wall_s": wall, "mean_auroc": float(np.mean(list(aurocs.values())))})
        print(f"processes run {r}: max site {d['max_site']:.4f}, of mean {d['of_mean']:.4f}")
    local_d = differences(local, reference)
    print(
        f"local vs ECL reference: max site {local_d['max_site']:.4f}, of mean {local_d['of_mean']:.4f}"
    )
    result = {
        "benchmark": "deploy_vs_simulation",
        "command": command(),
        "machine": machine(),
        "settings": SETTINGS,
        "reference_mean_auroc": float(np.mean(list(reference.values()))),
        "reference_site_auroc": reference,
        "timing": {k: spread([d[k] for d in timing]) for k in ("max_site", "mean_site", "of_mean")},
        "processes": {
            k: spread([d[k] for d in runs]) for k in ("max_site", "mean_site", "of_mean", "wall_s")
        },
        "process_runs": runs,
        "local_vs_reference": local_d,
    }
    print(f"saved {save(result, out)}")


if __name__ == "__main__":
    main()
