"""The ``hospitalnet`` command line: one module per subcommand, listed in one explicit registry.

Each module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (taking the
parsed arguments, returning an exit code). User mistakes raise :class:`HospitalnetError` and are
printed as one line, ``hospitalnet: error: ...``, with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hospitalnet import __version__
from hospitalnet.cli import nvflare, partition, pki, report, server, simulate, site, synth
from hospitalnet.errors import HospitalnetError

# The explicit registry, in the order the help lists them.
COMMANDS = (simulate, synth, partition, report, site, server, pki, nvflare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hospitalnet",
        description="Federated chest X-ray learning across hospitals (edge-consensus learning).",
    )
    parser.add_argument("--version", action="version", version=f"hospitalnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except HospitalnetError as err:
        print(f"hospitalnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hospitalnet: interrupted", file=sys.stderr)
        return 130
