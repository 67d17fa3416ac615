"""`hospitalnet site run MANIFEST`: run one hospital node against its local images.

    hospitalnet site run sites/n3.yaml [--config FILE] [--out DIR] [--resume] [--pki DIR]
                         [--listen HOST:PORT] [--network FILE] [--method ecl]
                         [--start-at TIME]

The node trains with the configured method (ECL by default) and exchanges with its neighbours
over gRPC with mutual TLS. Neighbour addresses come from ``--network FILE`` when given (see
``hospitalnet.plan``), else from the manifest's ``network`` section (see
``hospitalnet.deploy.site_process``); certificates from ``--pki``
(``ca.pem``, ``SITE.pem``, ``SITE.key``) or the manifest. ``--start-at TIME`` holds training
until an agreed time, so that the hospitals start in step. SIGTERM (or Ctrl-C) writes a final
checkpoint and exits 0; ``--resume`` continues from the newest good checkpoint in ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

from hospitalnet.cli.paths import check_output_folder
from hospitalnet.config import load_config
from hospitalnet.threads import thread_setting

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("site", help="run one hospital node (gRPC with mutual TLS)")
    actions = p.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    r = actions.add_parser("run", help="train this hospital with its neighbours")
    r.add_argument("manifest", type=Path, help="the site manifest, e.g. sites/n3.yaml")
    r.add_argument("--config", type=Path, default=None, help="experiment YAML (default: defaults)")
    r.add_argument("--out", type=Path, default=None, help="run directory (default: runs/site-ID)")
    r.add_argument("--resume", action="store_true", help="continue from the last good checkpoint")
    r.add_argument("--pki", type=Path, default=None, help="folder with ca.pem, SITE.pem, SITE.key")
    r.add_argument("--listen", default=None, help="HOST:PORT to listen on (default: manifest)")
    r.add_argument("--network", type=Path, default=None, help="network plan file (YAML/JSON)")
    r.add_argument(
        "--method",
        default="ecl",
        help="ecl (default), gossip, local, fedavg or fedprox (the last two need "
        "`hospitalnet server run` and the plan's server.address)",
    )
    r.add_argument(
        "--global-test", type=Path, default=None, help="manifest of the shared evaluation set"
    )
    r.add_argument("--cache", type=Path, default=None, help="decoded-image cache folder")
    r.add_argument(
        "--threads",
        type=thread_setting,
        default="config",
        help="torch CPU threads: auto (follow the cores other work leaves idle), a number, or "
        "by default the config's training.threads (auto unless set)",
    )
    r.add_argument(
        "--start-at",
        type=_start_time,
        default=None,
        help="do not start training before this time (ISO 8601, e.g. 2026-12-01T09:00:00Z, or "
        "epoch seconds): hospitals that agree on it start in step",
    )
    r.add_argument(
        "--start-file",
        type=Path,
        default=None,
        help="for launchers: after writing OUT/ready.json, wait until FILE exists (it holds the "
        "start time in epoch seconds)",
    )
    r.set_defaults(func=run)


def _start_time(text: str) -> float:
    """Epoch seconds from ``--start-at`` (a number, or ISO 8601 with a time zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ISO 8601 (2026-12-01T09:00:00Z) or epoch seconds"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone, e.g. a trailing Z for UTC")
    return when.timestamp()


def run(args: argparse.Namespace) -> int:
    from hospitalnet.data.manifest import load_manifest
    from hospitalnet.deploy.site_process import SiteRunOptions, run_site
    from hospitalnet.plan import load_plan

    cfg = load_config(args.config)
    manifest, _ = load_manifest(args.manifest)
    out = check_output_folder(args.out or Path("runs") / f"site-{manifest.site}")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("%s: signal %d; checkpointing and stopping", manifest.site, signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    opts = SiteRunOptions(
        manifest=args.manifest,
        out=out,
        method=args.method,
        resume=args.resume,
        plan=load_plan(args.network) if args.network else None,
        pki_dir=args.pki,
        listen=args.listen,
        global_manifest=args.global_test,
        cache_dir=args.cache,
        start_at=args.start_at,
        start_file=args.start_file,
        command="hospitalnet " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        threads=args.threads,
    )
    outcome = run_site(opts, cfg, stop)
    print(
        f"site {outcome.site}: {outcome.status} after {outcome.steps} steps "
        f"({outcome.wall_seconds:.0f} s); run directory {out}"
    )
    if outcome.status == "failed":
        print(f"site {outcome.site}: {outcome.detail}", file=sys.stderr)
        return 3
    return 0
