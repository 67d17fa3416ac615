"""Every number of a run, from its stored predictions: metrics.csv and summary.json.

For every method, every evaluated site model and every test set it is scored on (the shared
``global`` set and the site's own ``local_<site>`` set): AUROC per label with n / positives /
negatives, a patient-bootstrap 95% CI, the unreliable flag and the gap to pooled; the macro AUROC
per model and test set; and the macro AUROC at every stored evaluation point (learning curves).

The bootstrap generator of a test set is derived from the run seed and the test set's name only, so
every method and site is resampled with the same patients (paired comparison) and the same run
always gives the same intervals.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evaluation.metrics import (
    CI_LEVEL,
    DEFAULT_RESAMPLES,
    MIN_POSITIVES,
    TestsetResult,
    evaluate_testset,
    macro_of_predictions,
)
from evaluation.rundata import GLOBAL, RunData, local_testset
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS
from hospitalnet.rundir import atomic_write_bytes, write_json
from hospitalnet.seeding import numpy_rng

log = logging.getLogger(__name__)

REFERENCE = "pooled"
METRIC_COLUMNS = [
    "method",
    "site",
    "testset",
    "label",
    "auroc",
    "ci_low",
    "ci_high",
    "n",
    "n_pos",
    "n_neg",
    "unreliable",
    "gap_to_pooled",
]
MACRO_COLUMNS = [
    "method",
    "site",
    "testset",
    "macro_auroc",
    "ci_low",
    "ci_high",
    "n_defined",
    "n_excluded",
    "gap_to_pooled",
]
CURVE_COLUMNS = [
    "method",
    "site",
    "testset",
    "k",
    "local_steps",
    "epochs",
    "virtual_time",
    "macro_auroc",
    "n_excluded",
]


@dataclass
class Evaluation:
    """All numbers of one run (or of one site of it), ready for the report."""

    run: RunData
    sites: list[str]
    metrics: pd.DataFrame  # METRIC_COLUMNS, one row per method x site x test set x label
    macros: pd.DataFrame  # MACRO_COLUMNS, one row per method x site x test set
    curves: pd.DataFrame  # CURVE_COLUMNS, one row per method x site x test set x eval point
    summary: dict[str, Any]
    n_resamples: int

    @property
    def methods(self) -> list[str]:
        return self.run.methods

    @property
    def reference(self) -> str | None:
        return REFERENCE if REFERENCE in self.run.methods else None

    def headline_testset(self, site: str) -> str:
        """``global`` when the run has it (the comparable one), else the site's own test set."""
        return GLOBAL if GLOBAL in self.run.testsets else local_testset(site)


def evaluate_run(
    run: RunData, sites: Sequence[str] | None = None, n_resamples: int = DEFAULT_RESAMPLES
) -> Evaluation:
    """Compute every metric for ``sites`` (None = all sites of the run)."""
    chosen = list(run.sites if sites is None else sites)
    for site in chosen:
        if site not in run.sites:
            raise DataError(f"{run.rundir.run_json}: site {site!r} is not part of this run")
    metric_rows: list[dict[str, Any]] = []
    macro_rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    cache: dict[tuple[str, str], TestsetResult] = {}
    for method in run.methods:
        log.info("evaluating %s", method)
        predictions = run.predictions(method)
        points = {p.k: p for p in run.eval_points(method)}
        for site in chosen:
            for testset in run.testsets_for(site):
                probs = predictions.final(site, testset)
                result = _evaluate_cached(run, testset, probs, n_resamples, cache)
                base = {"method": method, "site": site, "testset": testset}
                for r in result.labels:
                    metric_rows.append(
                        base
                        | {
                            "label": r.label,
                            "auroc": r.auroc,
                            "ci_low": r.ci_low,
                            "ci_high": r.ci_high,
                            "n": r.counts.n,
                            "n_pos": r.counts.n_pos,
                            "n_neg": r.counts.n_neg,
                            "unreliable": r.unreliable,
                        }
                    )
                m = result.macro
                macro_rows.append(
                    base
                    | {
                        "macro_auroc": m.value,
                        "ci_low": m.ci_low,
                        "ci_high": m.ci_high,
                        "n_defined": m.n_defined,
                        "n_excluded": m.n_excluded,
                    }
                )
                testset_labels = run.testsets[testset].labels
                for k in predictions.curve_points(site, testset):
                    value, n_excluded = macro_of_predictions(
                        testset_labels, predictions.curve(k, site, testset)
                    )
                    p = points.get(k)
                    curve_rows.append(
                        base
                        | {
                            "k": k,
                            "local_steps": p.local_steps if p else None,
                            "epochs": p.epochs if p else None,
                            "virtual_time": p.virtual_time if p else None,
                            "macro_auroc": value,
                            "n_excluded": n_excluded,
                        }
                    )
    metrics = _with_gap(pd.DataFrame(metric_rows, columns=METRIC_COLUMNS[:-1]), "auroc", "label")
    macros = _with_gap(pd.DataFrame(macro_rows, columns=MACRO_COLUMNS[:-1]), "macro_auroc", None)
    curves = pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)
    evaluation = Evaluation(run, chosen, metrics, macros, curves, {}, n_resamples)
    evaluation.summary = build_summary(evaluation)
    return evaluation


def _evaluate_cached(
    run: RunData,
    testset: str,
    probs: np.ndarray,
    n_resamples: int,
    cache: dict[tuple[str, str], TestsetResult],
) -> TestsetResult:
    """Pooled and fedavg store one model under every site: score identical predictions once."""
    digest = hashlib.sha256(np.ascontiguousarray(probs).tobytes()).hexdigest()
    if (testset, digest) not in cache:
        data = run.testsets[testset]
        cache[(testset, digest)] = evaluate_testset(
            data.labels,
            probs,
            data.patients,
            LABELS,
            numpy_rng(run.seed, "evaluation", "bootstrap", testset),
            n_resamples,
        )
    return cache[(testset, digest)]


def _with_gap(df: pd.DataFrame, value: str, label: str | None) -> pd.DataFrame:
    """Add ``gap_to_pooled``: value minus pooled's value on the same site, test set (and label)."""
    keys = ["site", "testset"] + ([label] if label else [])
    reference = df.loc[df["method"] == REFERENCE, keys + [value]].rename(columns={value: "_ref"})
    if reference.empty:
        return df.assign(gap_to_pooled=np.nan)
    merged = df.merge(reference, on=keys, how="left")
    merged["gap_to_pooled"] = merged[value] - merged["_ref"]
    return merged.drop(columns="_ref")


def _num(value: Any) -> float | None:
    """JSON has no NaN: undefined numbers become null."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def build_summary(ev: Evaluation) -> dict[str, Any]:
    """The headline numbers per method (see EVALUATION.md), JSON-ready (NaN -> null)."""
    macros = ev.macros.set_index(["method", "site", "testset"])
    per_method_wall = ev.run.info.wall_seconds.per_method
    methods: dict[str, Any] = {}
    for method in ev.methods:
        headline: dict[str, float] = {}
        local: list[float] = []
        gaps: list[float] = []
        per_site: dict[str, Any] = {}
        for site in ev.sites:
            per_site[site] = {}
            for testset in ev.run.testsets_for(site):
                row = macros.loc[(method, site, testset)]
                per_site[site][testset] = {
                    "macro_auroc": _num(row["macro_auroc"]),
                    "ci_low": _num(row["ci_low"]),
                    "ci_high": _num(row["ci_high"]),
                    "n_defined": int(row["n_defined"]),
                    "n_excluded": int(row["n_excluded"]),
                    "gap_to_pooled": _num(row["gap_to_pooled"]),
                }
            head = per_site[site][ev.headline_testset(site)]
            if head["macro_auroc"] is not None:
                headline[site] = head["macro_auroc"]
            if head["gap_to_pooled"] is not None:
                gaps.append(head["gap_to_pooled"])
            own = per_site[site].get(local_testset(site))
            if own and own["macro_auroc"] is not None:
                local.append(own["macro_auroc"])
        worst = min(headline, key=headline.__getitem__) if headline else None
        methods[method] = {
            "mean_site_macro_auroc": _mean(list(headline.values())),
            "worst_site_macro_auroc": headline[worst] if worst else None,
            "worst_site": worst,
            "gap_to_pooled": _mean(gaps) if ev.reference else None,
            "mean_site_local_macro_auroc": _mean(local),
            "wall_seconds": _num(per_method_wall.get(method)),
            "per_site": per_site,
            "curve": _summary_curve(ev, method),
        }
    return {
        "seed": ev.run.seed,
        "mode": ev.run.mode,
        "sites": ev.sites,
        "headline_testset": GLOBAL if GLOBAL in ev.run.testsets else "local",
        "reference": ev.reference,
        "bootstrap": {"resamples": ev.n_resamples, "level": CI_LEVEL, "unit": "patient"},
        "min_positives": MIN_POSITIVES,
        "wall_seconds_total": _num(ev.run.info.wall_seconds.total),
        "methods": methods,
    }


def _summary_curve(ev: Evaluation, method: str) -> list[dict[str, Any]]:
    """Mean and worst site macro AUROC on the headline test set at each eval point."""
    rows = ev.curves[ev.curves["method"] == method]
    keep = np.array(
        [t == ev.headline_testset(s) for s, t in zip(rows["site"], rows["testset"])], dtype=bool
    )
    rows = rows[keep]
    out = []
    for k, group in rows.groupby("k", sort=True):
        first = group.iloc[0]
        out.append(
            {
                "k": int(k),
                "local_steps": _num(first["local_steps"]),
                "epochs": _num(first["epochs"]),
                "virtual_time": _num(first["virtual_time"]),
                "mean_site_macro_auroc": _mean(list(group["macro_auroc"])),
                "worst_site_macro_auroc": _num(group["macro_auroc"].min()),
                "n_sites": int(group["site"].nunique()),
            }
        )
    return out


def write_metrics(ev: Evaluation, metrics_path, summary_path) -> None:
    """metrics.csv (long form, NaN = undefined) and summary.json, written atomically."""
    buf = io.StringIO()
    ev.metrics.to_csv(buf, index=False, na_rep="NaN", float_format="%.6f")
    atomic_write_bytes(metrics_path, buf.getvalue().encode("utf-8"))
    write_json(summary_path, ev.summary)
