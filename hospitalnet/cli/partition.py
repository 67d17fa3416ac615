"""`hospitalnet partition`: split a pooled NIH-format data set into the eight hospitals."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("partition", help="split a pooled data set into site manifests by patient")
    p.add_argument("--data", required=True, type=Path, help="pooled data set (NIH layout)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--profile", default="default", help="site profile (default: default)")
    p.add_argument("--skew", type=float, default=1.0, help="0 = IID, 1 = profile, >1 = stronger")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local-test-fraction", type=float, default=0.2)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hospitalnet.data.partition import format_summary, partition_dataset

    summary = partition_dataset(
        args.data,
        args.out,
        profile=args.profile,
        skew=args.skew,
        seed=args.seed,
        local_test_fraction=args.local_test_fraction,
    )
    print(format_summary(summary))
    print(f"site manifests in {args.out / 'sites'}; summary in {args.out / 'partition.json'}")
    return 0
