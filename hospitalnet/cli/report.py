"""`hospitalnet report RUN_DIR [--site n3]`: re-compute every number of a run and re-render it.

The numbers come from the run's stored predictions, never from an earlier metrics file. The
``evaluation`` package is imported inside :func:`run` only: the library never depends on it.
"""

from __future__ import annotations

import argparse


def _resamples(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="re-compute the metrics of a finished run and re-render its report",
        description="Re-compute per-site AUROC (with patient-bootstrap CIs) from a run "
        "directory's stored predictions and write metrics.csv, summary.json, report.html and "
        "report.md. Prints the path of report.html.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by training")
    p.add_argument(
        "--site",
        metavar="SITE",
        help="one hospital's own report (e.g. n3), written as report_<site>.html etc.",
    )
    p.add_argument(
        "--resamples",
        type=_resamples,
        default=None,
        metavar="N",
        help="bootstrap resamples per confidence interval (default 300; 0 = no intervals)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evaluation.metrics import DEFAULT_RESAMPLES
    from evaluation.report import render_report

    resamples = DEFAULT_RESAMPLES if args.resamples is None else args.resamples
    paths = render_report(args.run_dir, site=args.site, n_resamples=resamples)
    print(paths.html)
    return 0
