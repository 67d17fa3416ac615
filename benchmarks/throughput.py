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

``--processes N``: also time the multi-process network (``hospitalnet simulate --processes N``);
when that option does not exist yet, the result says so (``"processes": {"available": false}``).

Writes benchmarks/results/throughput.json. Run from the repository root:
``python benchmarks/throughput.py [--config configs/default.yaml] [--steps 40]``;
``--smoke``: configs/quick.yaml, a few steps, one repeat, output in a temporary folder.
"""

from __future__ import annotations

import argparse
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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks._common import RESULTS, command, machine, save, spread  # noqa: E402
from hospitalnet.config import ExperimentConfig, load_config  # noqa: E402
from hospitalnet.experiment import World, _pooled, load_world  # noqa: E402
from hospitalnet.models import build_model  # noqa: E402
from hospitalnet.models.flat import FlatParams  # noqa: E402
from hospitalnet.seeding import int_seed, torch_generator  # noqa: E402
from hospitalnet.simulation import run_network, run_pooled  # noqa: E402
from hospitalnet.training.objective import ChestXrayObjective  # noqa: E402
from hospitalnet.world import ensure_world  # noqa: E402


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
        self.flat = FlatParams(build_model(cfg.model, int_seed(cfg.seed, "model", "init")), "m")
        self.w0 = self.flat.flat.detach().clone()
        self.batch = cfg.training.batch_size
        self.pooled = _pooled(world)
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


def processes_hook(config: str, n: int, steps_total_images: int) -> dict[str, Any]:
    """Time ``hospitalnet simulate --processes n`` if that option exists; say so if not."""
    help_text = subprocess.run(
        [sys.executable, "-m", "hospitalnet", "simulate", "--help"],
        capture_output=True, text=True, cwd=ROOT,
    ).stdout  # fmt: skip
    if "--processes" not in help_text:
        return {
            "available": False,
            "note": "hospitalnet simulate has no --processes option in this checkout",
        }
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "hospitalnet", "simulate", "--config", config,
             "--processes", str(n), "--out", str(Path(tmp) / "run"), "--no-progress"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        wall = time.perf_counter() - t
    return {
        "available": True,
        "processes": n,
        "returncode": proc.returncode,
        "wall_s": wall,
        "note": "whole command (all configured methods, start-up and evaluation included)",
        "stderr_tail": proc.stderr[-500:] if proc.returncode else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--method", default="ecl", help="simulated method (default %(default)s)")
    ap.add_argument("--steps", type=int, default=40, help="local steps per site per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="alternated repeats per thread count")
    ap.add_argument("--threads", default="1,2", help="torch thread counts (comma separated)")
    ap.add_argument("--seeds", type=int, default=1, help="accepted for symmetry; seed 0 is used")
    ap.add_argument("--processes", type=int, default=0, help="also time N processes (if built)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/throughput.json)")
    ap.add_argument("--smoke", action="store_true", help="quick.yaml, 4 steps, 1 repeat")
    args = ap.parse_args()
    if args.smoke:
        args.config = str(ROOT / "configs" / "quick.yaml")
        args.steps, args.repeats = min(args.steps, 4), 1
    out = Path(
        args.out
        or (
            Path(tempfile.mkdtemp(prefix="hospitalnet-bench-")) / "throughput.json"
            if args.smoke
            else RESULTS / "throughput.json"
        )
    )
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
            processes_hook(args.config, args.processes, 0)
            if args.processes
            else {"available": None, "note": "not requested (--processes N)"}
        ),
    }
    if args.processes:
        print(f"processes: {result['processes']}")
    save(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
