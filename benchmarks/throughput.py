"""Images per second of the eight-site simulation against pooled training, and FLOP/s achieved.

For each torch thread count (``--threads``, default 1 and 2), on the configured world and model:

- ``simulation``: ``run_network`` of ``--method`` (default ecl) over the eight sites, each
  site ``--steps`` local steps of ``batch_size`` images; images/s summed over sites;
- ``pooled``: ``run_pooled`` of the same model and batch size on all sites' training images, for
  the same number of images (8 x steps local steps);
- alternated ``--repeats`` times (sim, pooled, sim, pooled, ...: the machine is shared and noisy);
  ``throughput_ratio`` = median over repeats of (simulation images/s / pooled images/s) measured
  back to back;
- ``flops_per_image``: model FLOPs of one forward + backward per image, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on one training minibatch;
- ``matmul_flops_per_s``: this machine's float32 ceiling, the best of a few square matmuls;
  ``fraction_of_peak`` = flops_per_image x images/s / ceiling.

``--processes``: also run ``hospitalnet simulate --processes`` (eight OS processes over gRPC
with mutual TLS) and the in-process simulation on the same config (``--method`` only,
``--process-steps`` local steps), back to back; ``processes_vs_in_process`` and a
``throughput_ratio`` against the pooled rate above come from their run.json images/s.

Writes benchmarks/results/throughput.json. Run from the repository root:
``python benchmarks/throughput.py [--config configs/default.yaml] [--steps 40]``;
``--smoke``: configs/quick.yaml, a few steps, one repeat, output in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks._common import command, machine, output_path, save, spread  # noqa: E402
from hospitalnet.assembly import initial_model  # noqa: E402
from hospitalnet.config import ExperimentConfig, load_config  # noqa: E402
from hospitalnet.models import build_model  # noqa: E402
from hospitalnet.models.flat import FlatParams  # noqa: E402
from hospitalnet.seeding import torch_generator  # noqa: E402
from hospitalnet.simulation import run_network, run_pooled  # noqa: E402
from hospitalnet.training.torch_objectives import ChestXrayObjective  # noqa: E402
from hospitalnet.world import World, ensure_world, load_world  # noqa: E402


def matmul_ceiling(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 matmul FLOP/s of an n x n product (2 n^3 FLOPs) at the current threads."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def flops_per_image(cfg: ExperimentConfig, world: World) -> float:
    """FLOPs of one forward + backward, per image, on one training minibatch."""
    flat = FlatParams(build_model(cfg.model, 0), cfg.model.name)
    site = next(iter(world.train))
    obj = ChestXrayObjective(
        flat,
        world.train[site].images,
        world.train[site].labels,
        cfg.training.batch_size,
        torch_generator(0, "flops"),
    )
    counter = FlopCounterMode(display=False)
    with counter:
        obj.loss_and_grad(flat.flat.detach().clone())
    return counter.get_total_flops() / min(cfg.training.batch_size, len(world.train[site]))


class Runner:
    """The two contenders on one world, built once; each call times one whole run."""

    def __init__(self, cfg: ExperimentConfig, world: World, method: str, steps: int) -> None:
        self.cfg, self.world, self.method, self.steps = cfg, world, method, steps
        self.flat = initial_model(cfg)
        self.w0 = self.flat.flat.detach().clone()
        self.batch = cfg.training.batch_size
        self.pooled = world.pooled_train()
        self.n_sites = len(world.train)

    def simulation(self, rep: int) -> float:
        objectives = {
            s: ChestXrayObjective(
                self.flat, t.images, t.labels, self.batch, torch_generator(rep, "batches", s)
            )
            for s, t in self.world.train.items()
        }
        t = time.perf_counter()
        run_network(
            self.method, objectives, self.cfg.topology, self.steps, self.cfg.seed,
            training=self.cfg.training, ecl=self.cfg.ecl, fedprox=self.cfg.fedprox,
            network=self.cfg.network, w0=self.w0,
        )  # fmt: skip
        return self.n_sites * self.steps * self.batch / (time.perf_counter() - t)

    def pooled_run(self, rep: int) -> float:
        obj = ChestXrayObjective(
            self.flat, self.pooled.images, self.pooled.labels, self.batch,
            torch_generator(rep, "batches", "pooled"),
        )  # fmt: skip
        steps = self.n_sites * self.steps
        t = time.perf_counter()
        run_pooled(obj, steps, self.cfg.seed, training=self.cfg.training, w0=self.w0)
        return steps * self.batch / (time.perf_counter() - t)


def simulate_command(config: Path, out: Path, processes: bool) -> dict[str, Any]:
    """Run ``hospitalnet simulate`` on ``config``; its run.json throughput and wall times."""
    cmd = [sys.executable, "-m", "hospitalnet", "simulate", "--config", str(config),
           "--out", str(out), "--no-progress"]  # fmt: skip
    if processes:
        cmd.append("--processes")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"returncode": proc.returncode, "stderr_tail": proc.stderr[-800:], "wall_s": wall}
    run = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())["methods"]
    return {
        "returncode": 0,
        "command_wall_s": wall,
        "method_wall_s": run["wall_seconds"]["per_method"],
        "images_per_s": run["images_per_second"],
        # the same training run in two transports: the accuracy should be comparable too
        "mean_site_macro_auroc": {m: v["mean_site_macro_auroc"] for m, v in summary.items()},
    }


def processes_run(config: str, method: str, steps: int, pooled_images_per_s: float) -> dict:
    """The eight sites as eight processes (gRPC, mutual TLS) against the in-process simulation.

    Both run the same config with only ``method`` and ``steps`` local steps, back to back;
    images/s = images trained summed over sites / the method's wall time (process start-up,
    TLS handshakes and the final exchanges included for the processes).
    """
    raw = yaml.safe_load(Path(config).read_text()) or {}
    raw["methods"] = [method]
    raw.setdefault("training", {}).update({"local_steps": steps, "eval_points": 1})
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "processes.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        inproc = simulate_command(cfg_path, Path(tmp) / "inprocess", processes=False)
        procs = simulate_command(cfg_path, Path(tmp) / "processes", processes=True)
    result: dict[str, Any] = {
        "available": True,
        "method": method,
        "steps_per_site": steps,
        "in_process": inproc,
        "processes": procs,
    }
    if inproc["returncode"] == 0 and procs["returncode"] == 0:
        p_rate, i_rate = procs["images_per_s"][method], inproc["images_per_s"][method]
        result["processes_vs_in_process"] = p_rate / i_rate
        result["throughput_ratio"] = p_rate / pooled_images_per_s if pooled_images_per_s else None
        result["note"] = (
            "throughput_ratio: processes images/s over the pooled images/s measured above at "
            "the machine's full thread count; each process runs with deploy threads"
        )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--method", default="ecl", help="simulated method (default %(default)s)")
    ap.add_argument("--steps", type=int, default=40, help="local steps per site per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="alternated repeats per thread count")
    ap.add_argument("--threads", default="1,2", help="torch thread counts (comma separated)")
    ap.add_argument("--seeds", type=int, default=1, help="accepted for symmetry; seed 0 is used")
    ap.add_argument(
        "--processes", action="store_true", help="also time the eight sites as eight processes"
    )
    ap.add_argument("--process-steps", type=int, default=200, help="local steps per site there")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/throughput.json)")
    ap.add_argument("--smoke", action="store_true", help="quick.yaml, 4 steps, 1 repeat")
    args = ap.parse_args()
    if args.smoke:
        args.config = str(ROOT / "configs" / "quick.yaml")
        args.steps, args.repeats = min(args.steps, 4), 1
    out = output_path(args.out, "throughput.json", smoke=args.smoke)
    cfg = load_config(args.config)
    world = load_world(cfg, ensure_world(cfg, progress=False), progress=False)
    before = torch.get_num_threads()
    per_threads: dict[str, Any] = {}
    fpi = flops_per_image(cfg, world)
    print(f"model {cfg.model.name} at {cfg.data.image_size} px: {fpi / 1e6:.1f} MFLOP per image")
    try:
        for threads in [int(t) for t in args.threads.split(",") if t.strip()]:
            torch.set_num_threads(threads)
            ceiling = matmul_ceiling()
            runner = Runner(cfg, world, args.method, args.steps)
            if not args.smoke:
                runner.simulation(10_000)  # warm-up (allocator, kernels); not counted
            sims, pools, ratios = [], [], []
            for rep in range(args.repeats):
                sim, pooled = runner.simulation(rep), runner.pooled_run(rep)
                sims.append(sim)
                pools.append(pooled)
                ratios.append(sim / pooled)
                print(
                    f"threads {threads} repeat {rep}: simulation {sim:.0f} img/s, pooled "
                    f"{pooled:.0f} img/s, ratio {sim / pooled:.3f}",
                    flush=True,
                )
            sim_med, pool_med = statistics.median(sims), statistics.median(pools)
            per_threads[str(threads)] = {
                "matmul_flops_per_s": ceiling,
                "simulation_images_per_s": spread(sims),
                "pooled_images_per_s": spread(pools),
                "pooled_images_per_s_median": pool_med,
                "throughput_ratio": statistics.median(ratios),
                "throughput_ratio_per_repeat": ratios,
                "simulation_fraction_of_peak": fpi * sim_med / ceiling,
                "pooled_fraction_of_peak": fpi * pool_med / ceiling,
                "simulation_flops_per_s": fpi * sim_med,
                "pooled_flops_per_s": fpi * pool_med,
            }
            r = per_threads[str(threads)]
            print(
                f"threads {threads}: ratio {r['throughput_ratio']:.3f}; ceiling "
                f"{ceiling / 1e9:.1f} GFLOP/s; achieved {r['simulation_flops_per_s'] / 1e9:.2f} "
                f"(simulation, {100 * r['simulation_fraction_of_peak']:.0f}%) vs "
                f"{r['pooled_flops_per_s'] / 1e9:.2f} GFLOP/s (pooled, "
                f"{100 * r['pooled_fraction_of_peak']:.0f}%)"
            )
    finally:
        torch.set_num_threads(before)
    first = next(iter(per_threads.values()), {})
    # the pooled rate at the largest thread count measured: what the whole machine does
    last = per_threads[max(per_threads, key=int)] if per_threads else {}
    full_pooled = last.get("pooled_images_per_s_median") or 0.0
    result = {
        "benchmark": "throughput",
        "smoke": args.smoke,
        "command": command(),
        "config": args.config,
        "machine": machine(),
        "method": args.method,
        "sites": len(world.train),
        "steps_per_site": args.steps,
        "batch_size": cfg.training.batch_size,
        "model": cfg.model.name,
        "image_size": cfg.data.image_size,
        "flops_per_image": fpi,
        # headline: the first thread count measured (1 by default)
        "throughput_ratio": first.get("throughput_ratio"),
        "threads": per_threads,
        "processes": (
            processes_run(args.config, args.method, args.process_steps, full_pooled)
            if args.processes
            else {"available": None, "note": "not requested (--processes)"}
        ),
    }
    if args.processes:
        pr = result["processes"]
        print(f"processes: {json.dumps(pr, indent=1)}")
    save(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
