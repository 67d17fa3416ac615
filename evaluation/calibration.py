"""Calibration of predicted probabilities: Brier score, log loss and ECE per label, pure functions.

AUROC only ranks; it is blind to a probability that is right in order but off in level, which is
what a biased consensus of sites with different prevalences produces. These three score the level.
Per label, over the images whose label is known (NaN masked out, as for AUROC):

- Brier score: mean of (p - y)^2, as :func:`sklearn.metrics.brier_score_loss`.
- Log loss: mean of -[y ln p + (1 - y) ln(1 - p)], p clipped to [eps, 1 - eps] with eps the
  float64 machine epsilon, as :func:`sklearn.metrics.log_loss` clips.
- ECE (expected calibration error): sum over bins of n_bin / n * |mean y - mean p| with
  :data:`ECE_BINS` = 10 equal-width bins of p on [0, 1], binned as
  :func:`sklearn.calibration.calibration_curve` (``strategy="uniform"``) bins: [0, 0.1],
  (0.1, 0.2], ..., (0.9, 1].

All three are lower-is-better, so a gap to pooled (method minus pooled) above 0 is worse. ECE
is biased upwards on few cases (a sparse bin's |mean y - mean p| is noise), so compare it only on
the same test set, as the gap to pooled does.

A label with one class only on a test set (no positive, or no negative, case) has no AUROC, but
these scores need no second class: they are reported and enter the macro average (predicting a low
probability for a finding nobody has is right, and a high one is wrong). Only a label with no known
case at all is undefined (NaN) and left out. The macro value is the mean over the defined labels.

Intervals resample patients with the test set's :class:`~evaluation.metrics.PatientBootstrap`,
the same resamples the AUROC uses: every per-image sum is first added up per patient, so a
resample is one matrix product of its patient counts with those sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.metrics import PatientBootstrap, nanmean_columns, percentile_interval

METRICS = ("brier", "log_loss", "ece")
METRIC_NAMES = {"brier": "Brier score", "log_loss": "log loss", "ece": "ECE"}
ECE_BINS = 10
# calibration_curve's edges: linspace, then searchsorted on the inner edges (right-closed bins)
_EDGES = np.linspace(0.0, 1.0, ECE_BINS + 1)
_EPS = np.finfo(np.float64).eps


def bin_index(probs: np.ndarray) -> np.ndarray:
    """The ECE bin (0..ECE_BINS-1) of each probability, exactly as calibration_curve bins."""
    return np.searchsorted(_EDGES[1:-1], np.asarray(probs, dtype=np.float64))


def _known(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    known = ~np.isnan(y)
    return y[known], np.asarray(probs, dtype=np.float64)[known]


def scores(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """[M] Brier score, log loss and ECE of one label (NaN labels masked; NaN if none known).

    Computed by the formulas above in one pass (sklearn's input checks cost more than the sums
    on hundreds of labels x models); the tests hold them equal to sklearn's.
    """
    y, p = _known(y_true, probs)
    one_patient = np.zeros(y.size, dtype=np.int64)
    return resampled_scores(y, p, one_patient, np.ones((1, 1)))[:, 0]


def brier(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Brier score of one label; NaN when no label is known."""
    return float(scores(y_true, probs)[0])


def log_loss_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Log loss of one label (defined with one class only); NaN when no label is known."""
    return float(scores(y_true, probs)[1])


def ece(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Expected calibration error with ECE_BINS equal-width bins; NaN when no label is known."""
    return float(scores(y_true, probs)[2])


def _image_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return -(y * np.log(q) + (1.0 - y) * np.log1p(-q))


@dataclass(frozen=True)
class Calibration:
    """One model's calibration on one test set (M = len(METRICS), L labels, B resamples).

    ``point`` [M, L] and ``macro`` [M] (NaN where undefined); ``boot`` [M, L, B] and
    ``macro_boot`` [M, B] the same on each shared patient resample (B = 0 without a bootstrap);
    ``n_known`` [L]; ``reliability`` [ECE_BINS, 3]: per bin, the number of (image, label) pairs
    over all known labels, the sum of their probabilities and of their labels (the diagram).
    """

    point: np.ndarray
    macro: np.ndarray
    boot: np.ndarray
    macro_boot: np.ndarray
    n_known: np.ndarray
    reliability: np.ndarray

    @property
    def n_defined(self) -> int:
        return int((self.n_known > 0).sum())


def _per_patient(
    y: np.ndarray, p: np.ndarray, patient: np.ndarray, n_patients: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per patient: [images, sum of squared errors, sum of log losses] and the ECE bin gaps.

    Returns ``sums`` [P, 3] and ``bin_gap`` [P, ECE_BINS] = sum of (y - p) per patient and bin.
    """
    sums = np.stack(
        [
            np.bincount(patient, minlength=n_patients).astype(np.float64),
            np.bincount(patient, weights=(p - y) ** 2, minlength=n_patients),
            np.bincount(patient, weights=_image_losses(y, p), minlength=n_patients),
        ],
        axis=1,
    )
    cell = patient * ECE_BINS + bin_index(p)
    bin_gap = np.bincount(cell, weights=y - p, minlength=n_patients * ECE_BINS)
    return sums, bin_gap.reshape(n_patients, ECE_BINS)


def resampled_scores(
    y_true: np.ndarray, probs: np.ndarray, image_patient: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """[M, B] Brier, log loss and ECE when patient c counts ``counts[b, c]`` times in resample b.

    ``y_true`` must be 0/1 without NaN (mask unknowns first). A resample without any image of
    this label gives NaN. With all counts 1 this equals the point estimates.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    sums, bin_gap = _per_patient(y, p, np.asarray(image_patient), c.shape[1])
    totals = c @ sums  # [B, 3]: images, squared errors, log losses
    gaps = np.abs(c @ bin_gap).sum(axis=1)
    n = totals[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([totals[:, 1], totals[:, 2], gaps]) / np.where(n > 0, n, np.nan)


def evaluate_calibration(
    labels: np.ndarray, probs: np.ndarray, bootstrap: PatientBootstrap | None
) -> Calibration:
    """Brier, log loss and ECE per label and their macro averages, point and per resample.

    ``labels`` [N, L] (1/0/NaN), ``probs`` [N, L]; ``bootstrap`` the test set's shared patient
    resamples (None: no resamples, B = 0).
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != labels.shape:
        raise ValueError(f"shapes differ: labels {labels.shape}, probs {probs.shape}")
    n_labels = labels.shape[1]
    n_resamples = bootstrap.n_resamples if bootstrap else 0
    if bootstrap is not None and bootstrap.image_patient.shape != (labels.shape[0],):
        raise ValueError(f"bootstrap drawn for {bootstrap.image_patient.size} images")
    point = np.full((len(METRICS), n_labels), np.nan)
    boot = np.full((len(METRICS), n_labels, n_resamples), np.nan)
    n_known = np.zeros(n_labels, dtype=np.int64)
    reliability = np.zeros((ECE_BINS, 3))
    for j in range(n_labels):
        known = ~np.isnan(labels[:, j])
        n_known[j] = int(known.sum())
        if not n_known[j]:
            continue
        y, p = labels[known, j], probs[known, j]
        point[:, j] = scores(y, p)
        bins = bin_index(p)
        reliability += np.stack(
            [
                np.bincount(bins, minlength=ECE_BINS),
                np.bincount(bins, weights=p, minlength=ECE_BINS),
                np.bincount(bins, weights=y, minlength=ECE_BINS),
            ],
            axis=1,
        )
        if bootstrap is not None and n_resamples:
            boot[:, j, :] = resampled_scores(y, p, bootstrap.image_patient[known], bootstrap.counts)
    defined = n_known > 0
    macro = np.full(len(METRICS), np.nan)
    macro_boot = np.full((len(METRICS), n_resamples), np.nan)
    if defined.any():
        macro = point[:, defined].mean(axis=1)
        if n_resamples:
            macro_boot = np.stack([nanmean_columns(boot[m][defined]) for m in range(len(METRICS))])
    return Calibration(point, macro, boot, macro_boot, n_known, reliability)


# --- rows of metrics.csv -------------------------------------------------------------------------


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    return percentile_interval(values) if values.size else (float("nan"), float("nan"))


def _columns(
    point: np.ndarray, boot: np.ndarray, ref_point: np.ndarray | None, ref_boot: np.ndarray | None
) -> dict[str, float]:
    """The columns of one label (or the macro): ``point`` [M], ``boot`` [M, B]; gaps only with a
    reference (NaN otherwise), their interval from the per-resample differences (paired)."""
    out: dict[str, float] = {}
    for i, name in enumerate(METRICS):
        low, high = _percentiles(boot[i])
        gap = gap_low = gap_high = float("nan")
        if ref_point is not None and ref_boot is not None:
            gap = float(point[i] - ref_point[i])
            gap_low, gap_high = _percentiles(boot[i] - ref_boot[i])  # paired: same resamples
        out |= {
            name: float(point[i]),
            f"{name}_ci_low": low,
            f"{name}_ci_high": high,
            f"{name}_gap_to_pooled": gap,
            f"{name}_gap_ci_low": gap_low,
            f"{name}_gap_ci_high": gap_high,
        }
    return out


def add_calibration_columns(
    metric_rows: list[dict[str, Any]],
    macro_rows: list[dict[str, Any]],
    calibration: dict[tuple[str, str, str], Calibration],
    reference: str,
) -> None:
    """Add each score, its CI, its gap to ``reference`` and the gap's paired CI to the rows.

    ``macro_rows`` has one row per (method, site, test set) and ``metric_rows`` one per label
    after it in the same order; run once the reference's resamples are known (it may come last).
    """
    by_label = iter(metric_rows)
    for row in macro_rows:
        method, site, testset = row["method"], row["site"], row["testset"]
        cal = calibration[(method, site, testset)]
        ref = calibration.get((reference, site, testset))
        row |= _columns(
            cal.macro,
            cal.macro_boot,
            None if ref is None else ref.macro,
            None if ref is None else ref.macro_boot,
        )
        for j in range(cal.point.shape[1]):
            label_row = next(by_label)
            assert (label_row["method"], label_row["site"], label_row["testset"]) == (
                method,
                site,
                testset,
            )
            label_row |= _columns(
                cal.point[:, j],
                cal.boot[:, j],
                None if ref is None else ref.point[:, j],
                None if ref is None else ref.boot[:, j],
            )
