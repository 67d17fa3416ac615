"""`hospitalnet synth`: write the synthetic ChestX-ray14 world in the real NIH layout."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hospitalnet.cli.paths import check_output_folder
from hospitalnet.config import WorldConfig


def register(sub: argparse._SubParsersAction) -> None:
    d = WorldConfig()
    p = sub.add_parser("synth", help="write a synthetic ChestX-ray14 data set (NIH layout)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--patients", type=int, default=d.patients, help=f"default {d.patients}")
    p.add_argument("--size", type=int, default=d.image_size, help=f"PNG px, default {d.image_size}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.add_argument("--contact-sheet", action="store_true", help="also write contact_sheet.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hospitalnet.data.synthetic import write_contact_sheet, write_world

    check_output_folder(args.out)
    t0 = time.perf_counter()
    df = write_world(
        args.out, patients=args.patients, size=args.size, seed=args.seed, force=args.force
    )
    seconds = time.perf_counter() - t0
    print(
        f"wrote {len(df)} images of {args.patients} patients ({args.size} px) to {args.out} "
        f"in {seconds:.1f} s ({len(df) / seconds:.0f} images/s)"
    )
    if args.contact_sheet:
        print(f"contact sheet: {write_contact_sheet(args.out, args.out / 'contact_sheet.png')}")
    return 0
