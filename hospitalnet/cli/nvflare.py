"""``hospitalnet nvflare job``: write an NVIDIA FLARE job for the hospital network.

The job runs in NVFlare's simulator, in POC mode and in a provisioned deployment
(:mod:`hospitalnet.deploy.nvflare.job`; README, "Run on NVIDIA FLARE"). Writing it needs no
NVFlare; running it needs ``pip install "hospitalnet[nvflare]"`` at every site and the server.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nvflare", help="run the hospital network on NVIDIA FLARE")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    job = actions.add_parser("job", help="write an NVFlare job (simulator, POC, provisioned)")
    job.add_argument(
        "--network", type=Path, required=True, help="network plan (e.g. sites/network.yaml)"
    )
    job.add_argument("--out", type=Path, required=True, help="job folder to write (new)")
    job.add_argument(
        "--config", type=Path, default=None, help="experiment YAML (default: defaults)"
    )
    job.add_argument("--method", default="ecl", help="method to train (default: ecl)")
    job.add_argument(
        "--manifests",
        type=Path,
        default=None,
        help="folder with <site>.yaml manifests (default: the network plan's folder)",
    )
    job.add_argument(
        "--site-out",
        default="hospitalnet",
        help="each site's run directory is SITE_OUT/<site>, relative to its NVFlare workspace",
    )
    job.set_defaults(func=run_job)


def run_job(args: argparse.Namespace) -> int:
    from hospitalnet.deploy.nvflare.job import ALLOW_LIST_ENTRY, spec_from_network, write_job

    spec = spec_from_network(
        args.network, args.config, args.method, manifests=args.manifests, site_out=args.site_out
    )
    out = write_job(spec, args.out)
    print(f"NVFlare job for {len(spec.plan.sites)} sites ({spec.method}): {out}")
    print(
        f'every site and the server need "{ALLOW_LIST_ENTRY}" in local/resources.json class_allow_list'
    )
    return 0
