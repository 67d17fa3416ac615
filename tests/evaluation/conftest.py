"""Fixtures for the evaluation tests: one fake run directory, rendered once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fakerun import make_fake_run

from evaluation.report import ReportPaths, render_report

RESAMPLES = 60  # enough for the interval checks here, quick to compute


@dataclass(frozen=True)
class Rendered:
    root: Path
    network: ReportPaths
    site: ReportPaths


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The standard fake run with its network report and n3's own report."""
    root = tmp_path_factory.mktemp("run")
    make_fake_run(root)
    network = render_report(root, n_resamples=RESAMPLES)
    site = render_report(root, site="n3", n_resamples=RESAMPLES)
    return Rendered(root, network, site)
