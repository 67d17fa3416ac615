"""`hospitalnet pki`: the network's certificate authority and each site's certificate.

    hospitalnet pki init --out pki/                      # pki/ca.pem, pki/ca.key (0600)
    hospitalnet pki issue n3 --ca pki/ [--out DIR] [--days N] [--host 10.0.0.3 --host n3.lan]

Keep ``ca.key`` offline; each hospital needs ``ca.pem`` and its own ``SITE.pem`` / ``SITE.key``,
named in its manifest's ``network`` section (``ca``, ``certificate``, ``key``).
"""

from __future__ import annotations

import argparse

from hospitalnet import pki
from hospitalnet.cli.paths import check_output_folder
from hospitalnet.errors import NetworkError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pki", help="create the network's CA and each site's TLS certificate")
    actions = p.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="create the network's certificate authority")
    init.add_argument("--out", required=True, help="folder for ca.pem and ca.key")
    init.add_argument("--days", type=int, default=pki.CA_DAYS, help="validity (default 10 years)")
    init.set_defaults(func=run_init)

    issue = actions.add_parser("issue", help="issue a site's key and certificate")
    issue.add_argument("site", help="site id (the certificate's CN and SAN)")
    issue.add_argument("--ca", required=True, help="folder holding ca.pem and ca.key")
    issue.add_argument("--out", help="folder for SITE.pem and SITE.key (default: the --ca folder)")
    issue.add_argument("--days", type=int, default=pki.SITE_DAYS, help="validity in days")
    issue.add_argument(
        "--host",
        action="append",
        help="IP address or DNS name the site is reached at (repeatable; default 127.0.0.1 and "
        "localhost)",
    )
    issue.set_defaults(func=run_issue)


def run_init(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise NetworkError(f"--days {args.days}: must be positive")
    check_output_folder(args.out)
    cert, key = pki.create_ca(args.out, days=args.days)
    print(f"CA certificate: {cert}\nCA key (keep it private): {key}")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_output_folder(args.out)
    hosts = args.host if args.host else ["127.0.0.1", "localhost"]
    cert, key = pki.issue_site_certificate(
        args.site, args.ca, args.out, hosts=hosts, days=args.days
    )
    print(f"site {args.site}: certificate {cert}, key {key}")
    return 0
