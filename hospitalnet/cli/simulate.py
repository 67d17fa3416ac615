"""`hospitalnet simulate`: the eight-hospital network on this machine, end to end.

``--processes`` runs each hospital as its own OS process talking gRPC with mutual TLS over
127.0.0.1 (``hospitalnet.deploy.launcher``) instead of the in-process discrete-event simulation;
``--engine nvflare`` runs them in NVIDIA FLARE's simulator (``hospitalnet.deploy.nvflare``).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from hospitalnet.cli.paths import check_output_folder
from hospitalnet.config import load_config
from hospitalnet.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="train ECL and the baselines on the eight-hospital world")
    p.add_argument("--config", type=Path, default=None, help="experiment YAML (default: defaults)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--processes",
        action="store_true",
        help="run each hospital as its own OS process on 127.0.0.1 (gRPC, mutual TLS); "
        "the same as --engine processes",
    )
    p.add_argument(
        "--engine",
        choices=("inprocess", "processes", "nvflare"),
        default=None,
        help="inprocess (default): the discrete-event simulation; processes: --processes; "
        'nvflare: NVIDIA FLARE\'s simulator (pip install "hospitalnet[nvflare]")',
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evaluation.report import render_report
    from hospitalnet.experiment import run_experiment

    cfg = load_config(args.config)
    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    check_output_folder(out)
    t0 = time.perf_counter()
    command = "hospitalnet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    engine = args.engine or ("processes" if args.processes else "inprocess")
    if args.processes and engine != "processes":
        raise ConfigError(f"--processes and --engine {engine}: give one of them")
    if engine == "processes":
        from hospitalnet.deploy.launcher import run_processes

        run_dir = run_processes(cfg, out, progress=not args.no_progress, command=command)
    elif engine == "nvflare":
        if importlib.util.find_spec("nvflare") is None:
            raise ConfigError(
                '--engine nvflare: NVFlare is not installed (pip install "hospitalnet[nvflare]")'
            )
        from hospitalnet.deploy.nvflare.engine import run_nvflare

        run_dir = run_nvflare(cfg, out, progress=not args.no_progress, command=command)
    else:
        run_dir = run_experiment(cfg, out, progress=not args.no_progress, command=command)
    html = render_report(run_dir.root).html
    print(f"finished in {time.perf_counter() - t0:.0f} s; summary: {run_dir.summary_json}")
    print(f"report: {Path(html).resolve()}")
    return 0
