"""`hospitalnet partition`: split a pooled NIH-format data set into hospitals by patient."""

from __future__ import annotations

import argparse
from pathlib import Path

from hospitalnet.cli.paths import check_output_folder
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
    loader = p.add_argument_group(
        "reading --data (also written into every site manifest's data.options)"
    )
    loader.add_argument(
        "--on-missing-image",
        choices=("error", "skip"),
        help="a listed PNG that is not on disk: stop (default) or leave it out and count it",
    )
    loader.add_argument(
        "--on-bad",
        choices=("error", "skip"),
        help="an unreadable PNG when a site decodes its images: stop (default) or skip it",
    )
    loader.add_argument(
        "--unknown-labels",
        choices=("error", "drop"),
        help="a label name outside the 14: stop (default) or drop the name and count it",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hospitalnet.data.partition import format_summary, partition_dataset

    check_output_folder(args.out)
    summary = partition_dataset(
        args.data,
        args.out,
        profile=args.profile,
        skew=args.skew,
        seed=args.seed,
        local_test_fraction=args.local_test_fraction,
        loader_options={
            key: value
            for key, value in (
                ("on_missing_image", args.on_missing_image),
                ("on_bad", args.on_bad),
                ("unknown_labels", args.unknown_labels),
            )
            if value is not None
        },
    )
    print(format_summary(summary))
    print(f"site manifests: {args.out / 'sites'}/<site>/<site>.yaml")
    print(f"summary: {args.out / 'partition.json'}")
    return 0
