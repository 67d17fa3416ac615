"""`hospitalnet simulate`: not built yet."""

from __future__ import annotations

import argparse

from hospitalnet.errors import HospitalnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="(not built yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise HospitalnetError("'hospitalnet simulate' is not built yet")
