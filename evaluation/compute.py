"""Every number of a run, from its stored predictions: metrics.csv and summary.json.

For every method, every evaluated site model and every test set it is scored on (the shared
``global`` set and the site's own ``local_<site>`` set): AUROC per label with n / positives /
negatives, a patient-bootstrap 95% CI, the unreliable flag and the gap to pooled; the calibration
of the same predictions (Brier score, log loss, ECE: :mod:`evaluation.calibration`) with CIs, the
gap to pooled and its CI; the macro values per model and test set; and the macro AUROC at every
stored evaluation point (learning curves).

The patient resamples of a test set are drawn once (:class:`~evaluation.metrics.PatientBootstrap`)
from a generator derived from the run seed and the test set's name only, and shared by every
method, site and metric: comparisons are paired (a gap's interval is the interval of the gap on
each resample, not two intervals side by side) and the same run always gives the same intervals.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evaluation.calibration import (
    ECE_BINS,
    METRICS,
    Calibration,
    add_calibration_columns,
    evaluate_calibration,
)
from evaluation.metrics import (
    CI_LEVEL,
    DEFAULT_RESAMPLES,
    MIN_POSITIVES,
    PatientBootstrap,
    TestsetResult,
    evaluate_testset,
    macro_of_predictions,
    nanmean_columns,
    percentile_interval,
)
from evaluation.rundata import GLOBAL, RunData, local_testset
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS
from hospitalnet.rundir import atomic_write_bytes, write_json
from hospitalnet.seeding import numpy_rng

log = logging.getLogger(__name__)

REFERENCE = "pooled"
# per calibration metric: value, CI, gap to pooled (method - pooled) and the gap's paired CI
CALIBRATION_COLUMNS = [
    f"{m}{suffix}"
    for m in METRICS
    for suffix in ("", "_ci_low", "_ci_high", "_gap_to_pooled", "_gap_ci_low", "_gap_ci_high")
]
AUROC_COLUMNS = [
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
METRIC_COLUMNS = AUROC_COLUMNS + CALIBRATION_COLUMNS
MACRO_AUROC_COLUMNS = [
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
# calibration macros average the labels with at least one known case (n_calibrated of them)
MACRO_COLUMNS = MACRO_AUROC_COLUMNS + ["n_calibrated"] + CALIBRATION_COLUMNS
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
    # (method, site, test set) -> calibration with its per-resample values (paired gaps, diagram)
    calibration: dict[tuple[str, str, str], Calibration] = field(default_factory=dict)

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
    cache: dict[tuple[str, str], tuple[TestsetResult, Calibration]] = {}
    bootstraps: dict[str, PatientBootstrap | None] = {}
    calibration: dict[tuple[str, str, str], Calibration] = {}
    for method in run.methods:
        log.info("evaluating %s", method)
        predictions = run.predictions(method)
        points = {p.k: p for p in run.eval_points(method)}
        for site in chosen:
            for testset in run.testsets_for(site):
                probs = predictions.final(site, testset)
                if testset not in bootstraps:
                    bootstraps[testset] = _bootstrap(run, testset, n_resamples)
                result, cal = _evaluate_cached(run, testset, probs, bootstraps[testset], cache)
                calibration[(method, site, testset)] = cal
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
                        "n_calibrated": cal.n_defined,
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
    add_calibration_columns(metric_rows, macro_rows, calibration, REFERENCE)
    metrics = _with_gap(
        pd.DataFrame(metric_rows, columns=AUROC_COLUMNS[:-1] + CALIBRATION_COLUMNS),
        "auroc",
        "label",
    )[METRIC_COLUMNS]
    macros = _with_gap(
        pd.DataFrame(
            macro_rows, columns=MACRO_AUROC_COLUMNS[:-1] + ["n_calibrated"] + CALIBRATION_COLUMNS
        ),
        "macro_auroc",
        None,
    )[MACRO_COLUMNS]
    curves = pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)
    evaluation = Evaluation(run, chosen, metrics, macros, curves, {}, n_resamples, calibration)
    evaluation.summary = build_summary(evaluation)
    return evaluation


def _bootstrap(run: RunData, testset: str, n_resamples: int) -> PatientBootstrap | None:
    """The test set's patient resamples, shared by every method, site and metric."""
    if n_resamples <= 0:
        return None
    rng = numpy_rng(run.seed, "evaluation", "bootstrap", testset)
    return PatientBootstrap.draw(run.testsets[testset].patients, n_resamples, rng)


def _evaluate_cached(
    run: RunData,
    testset: str,
    probs: np.ndarray,
    bootstrap: PatientBootstrap | None,
    cache: dict[tuple[str, str], tuple[TestsetResult, Calibration]],
) -> tuple[TestsetResult, Calibration]:
    """Pooled and fedavg store one model under every site: score identical predictions once."""
    digest = hashlib.sha256(np.ascontiguousarray(probs).tobytes()).hexdigest()
    if (testset, digest) not in cache:
        data = run.testsets[testset]
        result = evaluate_testset(
            data.labels, probs, data.patients, LABELS, None, bootstrap=bootstrap
        )
        cache[(testset, digest)] = (result, evaluate_calibration(data.labels, probs, bootstrap))
    return cache[(testset, digest)]


def _interval(values: np.ndarray) -> tuple[float, float]:
    return percentile_interval(values, CI_LEVEL) if values.size else (np.nan, np.nan)


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
                    "calibration": _site_calibration(row),
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
            "calibration": _method_calibration(ev, method),
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
        "calibration": {
            "metrics": list(METRICS),
            "ece_bins": ECE_BINS,
            "ece_binning": "equal-width on [0, 1], right-closed as sklearn calibration_curve",
            "macro": "mean over the labels with at least one known case",
            "lower_is_better": True,
        },
        "wall_seconds_total": _num(ev.run.info.wall_seconds.total),
        "methods": methods,
    }


def _site_calibration(row: pd.Series) -> dict[str, Any]:
    """One model's macro calibration on one test set, JSON-ready."""
    out: dict[str, Any] = {"n_labels": int(row["n_calibrated"])}
    for name in METRICS:
        out[name] = {
            "value": _num(row[name]),
            "ci_low": _num(row[f"{name}_ci_low"]),
            "ci_high": _num(row[f"{name}_ci_high"]),
            "gap_to_pooled": _num(row[f"{name}_gap_to_pooled"]),
            "gap_ci_low": _num(row[f"{name}_gap_ci_low"]),
            "gap_ci_high": _num(row[f"{name}_gap_ci_high"]),
        }
    return out


def _method_calibration(ev: Evaluation, method: str) -> dict[str, Any]:
    """Per calibration metric on the headline test set: mean and worst (highest) hospital, and
    the mean gap to pooled with its interval from the paired resamples (mean over hospitals of
    each resample's gap)."""
    out: dict[str, Any] = {}
    keys = [(method, site, ev.headline_testset(site)) for site in ev.sites]
    cals = [ev.calibration[k] for k in keys]
    refs = [ev.calibration.get((REFERENCE, site, t)) for _, site, t in keys]
    for i, name in enumerate(METRICS):
        values = {site: float(c.macro[i]) for site, c in zip(ev.sites, cals)}
        values = {site: v for site, v in values.items() if not math.isnan(v)}
        worst = max(values, key=values.__getitem__) if values else None
        gap = gap_low = gap_high = None
        if ev.reference and values:
            gaps = [c.macro[i] - r.macro[i] for c, r in zip(cals, refs) if r is not None]
            gap = _mean(gaps)
            boots = [c.macro_boot[i] - r.macro_boot[i] for c, r in zip(cals, refs) if r is not None]
            if boots and boots[0].size:
                low, high = _interval(nanmean_columns(np.stack(boots)))
                gap_low, gap_high = _num(low), _num(high)
        out[name] = {
            "mean_site": _mean(list(values.values())),
            "worst_site_value": values[worst] if worst else None,
            "worst_site": worst,
            "gap_to_pooled": gap,
            "gap_ci_low": gap_low,
            "gap_ci_high": gap_high,
        }
    return out


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
