"""`hospitalnet partition`: split a pooled NIH-format data set into hospitals by patient."""

from __future__ import annotations

import argparse
from pathlib import Path

from hospitalnet.config import PartitionConfig

_DEFAULTS = PartitionConfig()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "partition",
        help="split a pooled NIH-format data set into site folders and manifests, by patient",
        description=(
            "Split the train_val patients of a pooled NIH ChestX-ray14-format folder (real or "
            "synthetic) into the hospitals of a profile, with label, view and size skew. Each "
            "site gets OUT/sites/<site>/images.csv and a manifest <site>.yaml; the test list "
            "becomes OUT/sites/global; OUT/partition.json holds prevalences and Jensen-Shannon "
            "divergences."
        ),
    )
    p.add_argument("--data", required=True, type=Path, help="pooled data set (NIH layout)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--profile", default=_DEFAULTS.profile, help="site profile (default: %(default)s)"
    )
    p.add_argument(
        "--skew",
        type=float,
        default=_DEFAULTS.skew,
        help="0 = IID sites, 1 = the profile, > 1 = stronger bias (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="root seed (default: %(default)s)")
    p.add_argument(
        "--local-test-fraction",
        type=float,
        default=_DEFAULTS.local_test_fraction,
        help="fraction of each site's patients held out as its local test (default: %(default)s)",
    )
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
    print(f"site manifests: {args.out / 'sites'}/<site>/<site>.yaml")
    print(f"summary: {args.out / 'partition.json'}")
    return 0
