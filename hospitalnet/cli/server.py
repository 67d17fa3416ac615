"""`hospitalnet server run`: the FedAvg / FedProx aggregation server as its own process.

    hospitalnet server run --network FILE --pki DIR [--config FILE] [--out DIR]
                           [--method fedavg] [--listen HOST:PORT] [--resume]

The hospitals run ``hospitalnet site run ... --method fedavg --network FILE`` with the same plan
file, whose ``server.address`` says where this process listens (see ``hospitalnet.deploy.server_process``).
SIGTERM (or Ctrl-C) writes a final checkpoint and exits 0; ``--resume`` continues from the
newest good checkpoint in ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path

from hospitalnet.cli.paths import check_output_folder
from hospitalnet.config import load_config

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the FedAvg/FedProx server (gRPC with mutual TLS)")
    actions = p.add_subparsers(dest="server_command", metavar="ACTION", required=True)
    r = actions.add_parser("run", help="aggregate the hospitals' models round by round")
    r.add_argument("--network", type=Path, required=True, help="network plan file (YAML/JSON)")
    r.add_argument("--pki", type=Path, required=True, help="folder with ca.pem, server.pem/.key")
    r.add_argument("--config", type=Path, default=None, help="experiment YAML (default: defaults)")
    r.add_argument("--out", type=Path, default=Path("runs/server"), help="run directory")
    r.add_argument("--method", default="fedavg", help="fedavg (default) or fedprox")
    r.add_argument("--listen", default=None, help="HOST:PORT (default: the plan's server.address)")
    r.add_argument("--resume", action="store_true", help="continue from the last good checkpoint")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from hospitalnet.deploy.server_process import ServerRunOptions, run_server
    from hospitalnet.plan import load_plan

    torch.set_num_threads(max(1, args.threads))
    cfg = load_config(args.config)
    check_output_folder(args.out)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("server: signal %d; checkpointing and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    opts = ServerRunOptions(
        plan=load_plan(args.network),
        out=args.out,
        pki_dir=args.pki,
        method=args.method,
        resume=args.resume,
        listen=args.listen,
        command="hospitalnet " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    outcome = run_server(opts, cfg, stop)
    print(
        f"server: {outcome.status} after {outcome.rounds} rounds ({outcome.wall_seconds:.0f} s); "
        f"run directory {args.out}"
    )
    return 0
