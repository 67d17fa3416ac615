"""AUROC per label, macro AUROC and patient-level bootstrap intervals: pure functions, no I/O.

Honesty rules (EVALUATION.md): a label with no positive or no negative case in a test set has an
undefined AUROC (NaN), is left out of the macro average and counted as excluded; a label with fewer
than :data:`MIN_POSITIVES` positives is flagged unreliable. Unknown label values (NaN) are masked
out label by label. Confidence intervals resample patients, not images, because the images of one
patient are not independent.

The point estimate comes from :func:`sklearn.metrics.roc_auc_score` (the trusted peer). The
bootstrap needs hundreds of AUROCs per label, so it uses the equivalent rank statistic
(Mann-Whitney U with ties counted one half) on integer patient weights, vectorised over resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

MIN_POSITIVES = 10
CI_LEVEL = 0.95
DEFAULT_RESAMPLES = 300
# Below this share of resamples with a defined AUROC, an interval would describe a different
# population than the estimate: report it as undefined instead.
MIN_DEFINED_RESAMPLES = 0.5
_CHUNK = 128  # resamples per block: bounds memory at _CHUNK x images floats


@dataclass(frozen=True)
class LabelCounts:
    n: int
    n_pos: int
    n_neg: int

    @property
    def defined(self) -> bool:
        return self.n_pos > 0 and self.n_neg > 0

    @property
    def unreliable(self) -> bool:
        return self.n_pos < MIN_POSITIVES

    @property
    def undefined_reason(self) -> str | None:
        """Why the AUROC is undefined, in words for a tooltip; None when it is defined."""
        if self.n == 0:
            return "undefined: no labelled cases"
        if self.n_pos == 0:
            return "undefined: no positive cases"
        if self.n_neg == 0:
            return "undefined: no negative cases"
        return None


@dataclass(frozen=True)
class LabelResult:
    """One label's AUROC on one test set. ``auroc``/``ci_*`` are NaN when undefined."""

    label: str
    auroc: float
    ci_low: float
    ci_high: float
    counts: LabelCounts

    @property
    def unreliable(self) -> bool:
        return self.counts.unreliable


@dataclass(frozen=True)
class MacroResult:
    """Mean AUROC over the labels defined on a test set, and how many labels were left out."""

    value: float
    ci_low: float
    ci_high: float
    n_defined: int
    n_excluded: int


@dataclass(frozen=True)
class TestsetResult:
    labels: tuple[LabelResult, ...]
    macro: MacroResult


def label_counts(y_true: np.ndarray) -> LabelCounts:
    """Counts of one label column; NaN (unknown) values are not counted."""
    y = np.asarray(y_true, dtype=np.float64)
    known = y[~np.isnan(y)]
    n_pos = int(np.count_nonzero(known == 1))
    return LabelCounts(n=int(known.size), n_pos=n_pos, n_neg=int(known.size) - n_pos)


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of one label (sklearn), NaN when undefined; unknown (NaN) labels are masked out."""
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    known = ~np.isnan(y)
    if not label_counts(y).defined:
        return float("nan")
    return float(roc_auc_score(y[known], s[known]))


def _auroc_from_counts(
    y_true: np.ndarray, scores: np.ndarray, image_unit: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """AUROC per resample when image i counts ``counts[b, image_unit[i]]`` times in resample b.

    Mann-Whitney with ties: each positive wins over the negatives scored below it and half of
    those tied with it. Sorting the negatives once and locating each positive among them
    (searchsorted) needs one pass over the negatives per resample block.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    pos = y == 1
    neg_order = np.argsort(s[~pos], kind="mergesort")
    neg_scores = s[~pos][neg_order]
    neg_units = image_unit[~pos][neg_order]
    pos_scores, pos_units = s[pos], image_unit[pos]
    below = np.searchsorted(neg_scores, pos_scores, side="left")
    below_or_tied = np.searchsorted(neg_scores, pos_scores, side="right")
    n_blocks = counts.shape[0]
    cum_neg = np.zeros((n_blocks, neg_scores.size + 1), dtype=np.float64)
    np.cumsum(counts[:, neg_units], axis=1, out=cum_neg[:, 1:])
    pos_w = counts[:, pos_units].astype(np.float64)
    pairs_won = (pos_w * (cum_neg[:, below] + cum_neg[:, below_or_tied])).sum(axis=1) * 0.5
    pairs = pos_w.sum(axis=1) * cum_neg[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, pairs_won / np.where(pairs > 0, pairs, 1.0), np.nan)


def point_aurocs(
    labels: np.ndarray, probs: np.ndarray, counts: Sequence[LabelCounts] | None = None
) -> np.ndarray:
    """sklearn AUROC of every label column (NaN where undefined).

    Defined columns without unknown values go to sklearn in one multilabel call (per-call overhead
    dominates on small test sets); the others are masked and scored one by one.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if counts is None:
        counts = [label_counts(labels[:, j]) for j in range(labels.shape[1])]
    out = np.full(labels.shape[1], np.nan)
    complete = [j for j, c in enumerate(counts) if c.defined and c.n == labels.shape[0]]
    if len(complete) > 1:
        out[complete] = roc_auc_score(labels[:, complete], probs[:, complete], average=None)
    for j, c in enumerate(counts):
        if c.defined and (j not in complete or len(complete) == 1):
            out[j] = auroc(labels[:, j], probs[:, j])
    return out


def weighted_rank_auroc(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of ``weights`` (shape [B, N]) from tie-aware rank statistics.

    Image i counts ``weights[b, i]`` times in resample b. With all weights 1 this is exactly
    ``roc_auc_score(y_true, scores)``. Rows without a positive or a negative weight give NaN.
    ``y_true`` must be 0/1 without NaN (mask unknowns first).
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return _auroc_from_counts(y_true, scores, np.arange(w.shape[1]), w)


def rank_auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Unweighted :func:`weighted_rank_auroc` (NaN when undefined; NaN labels masked out)."""
    y = np.asarray(y_true, dtype=np.float64)
    known = ~np.isnan(y)
    s = np.asarray(scores, dtype=np.float64)[known]
    return float(weighted_rank_auroc(y[known], s, np.ones((1, s.size)))[0])


def patient_bootstrap_counts(
    patients: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the test set's patients with replacement, ``n_resamples`` times.

    Returns ``counts`` [B, P] (how often each distinct patient was drawn in each resample) and
    ``image_patient`` [N] (each image's patient column). The draws depend only on the number of
    distinct patient codes and the generator, so the same patients give the same resamples
    whatever the number of images per patient.
    """
    codes, image_patient = np.unique(np.asarray(patients), return_inverse=True)
    n_patients = codes.size
    draws = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    offsets = (np.arange(n_resamples) * n_patients)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_patients)
    return counts.reshape(n_resamples, n_patients), image_patient.ravel()


def patient_bootstrap_weights(
    patients: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Image weights [B, N]: an image counts as often as its patient was drawn.

    All images of a patient enter or leave a resample together.
    """
    counts, image_patient = patient_bootstrap_counts(patients, n_resamples, rng)
    return counts[:, image_patient]


@dataclass(frozen=True)
class PatientBootstrap:
    """One test set's patient resamples, drawn once and shared by every metric and model.

    AUROC and calibration of every method and site on a test set read the same ``counts``, so
    their intervals, and the gap of any method to pooled, are paired resample by resample.
    ``counts`` [B, P]: how often each distinct patient was drawn in resample b; ``image_patient``
    [N]: each image's patient column.
    """

    counts: np.ndarray
    image_patient: np.ndarray

    @classmethod
    def draw(
        cls, patients: np.ndarray, n_resamples: int, rng: np.random.Generator
    ) -> PatientBootstrap:
        """``n_resamples`` resamples from ``rng``, drawn in blocks of ``_CHUNK`` (the blocks make
        the draws identical to those AUROC intervals have always used)."""
        codes, image_patient = np.unique(np.asarray(patients), return_inverse=True)
        blocks = [np.zeros((0, codes.size), dtype=np.int32)]
        for start in range(0, max(n_resamples, 0), _CHUNK):
            block, _ = patient_bootstrap_counts(patients, min(_CHUNK, n_resamples - start), rng)
            blocks.append(block.astype(np.int32))
        counts = np.concatenate(blocks)
        return cls(counts, image_patient.ravel())

    @property
    def n_resamples(self) -> int:
        return int(self.counts.shape[0])

    def blocks(self):
        """(start, counts of resamples start..start + _CHUNK): bounds the AUROC's memory."""
        for start in range(0, self.n_resamples, _CHUNK):
            yield start, self.counts[start : start + _CHUNK]


def percentile_interval(values: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval over the defined bootstrap values (NaN if too few are defined)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if v.size == 0 or finite.size < MIN_DEFINED_RESAMPLES * v.size:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def macro_auroc(values: Sequence[float]) -> tuple[float, int, int]:
    """(mean over defined values, number defined, number excluded as undefined)."""
    v = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(v)
    n_defined = int(defined.sum())
    value = float(v[defined].mean()) if n_defined else float("nan")
    return value, n_defined, int(v.size - n_defined)


def evaluate_testset(
    labels: np.ndarray,
    probs: np.ndarray,
    patients: np.ndarray,
    label_names: Sequence[str],
    rng: np.random.Generator | None,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = CI_LEVEL,
    bootstrap: PatientBootstrap | None = None,
) -> TestsetResult:
    """AUROC per label with patient-bootstrap CIs, and the macro AUROC with its CI.

    ``labels`` [N, L] (1/0/NaN), ``probs`` [N, L], ``patients`` [N] pseudonymous codes.
    ``bootstrap`` (the test set's shared resamples) wins over ``rng``; else ``rng`` None (or
    ``n_resamples`` 0) skips the bootstrap: every CI is NaN. The macro CI takes, in each resample,
    the mean over the labels defined on the full test set that are also defined in that resample.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    n_images, n_labels = labels.shape
    if probs.shape != labels.shape or len(label_names) != n_labels or len(patients) != n_images:
        raise ValueError(
            f"shapes differ: labels {labels.shape}, probs {probs.shape}, "
            f"patients {len(patients)}, names {len(label_names)}"
        )
    if bootstrap is None and rng is not None and n_resamples > 0:
        bootstrap = PatientBootstrap.draw(patients, n_resamples, rng)
    if bootstrap is not None and bootstrap.image_patient.shape != (n_images,):
        raise ValueError(
            f"bootstrap drawn for {bootstrap.image_patient.size} images, not {n_images}"
        )
    counts = [label_counts(labels[:, j]) for j in range(n_labels)]
    points = point_aurocs(labels, probs, counts)
    boot = np.full((n_labels, bootstrap.n_resamples if bootstrap else 0), np.nan)
    for start, draws in bootstrap.blocks() if bootstrap else ():
        stop = start + draws.shape[0]
        for j in range(n_labels):
            if not counts[j].defined:
                continue
            known = ~np.isnan(labels[:, j])
            boot[j, start:stop] = _auroc_from_counts(
                labels[known, j], probs[known, j], bootstrap.image_patient[known], draws
            )
    results = []
    for j in range(n_labels):
        low, high = percentile_interval(boot[j], level) if counts[j].defined else (np.nan, np.nan)
        results.append(LabelResult(label_names[j], float(points[j]), low, high, counts[j]))
    value, n_defined, n_excluded = macro_auroc(points)
    macro_low = macro_high = float("nan")
    if n_defined and boot.shape[1]:
        per_resample = nanmean_columns(boot[np.isfinite(points)])
        macro_low, macro_high = percentile_interval(per_resample, level)
    return TestsetResult(
        labels=tuple(results),
        macro=MacroResult(value, macro_low, macro_high, n_defined, n_excluded),
    )


def nanmean_columns(rows: np.ndarray) -> np.ndarray:
    """Column means over finite entries; NaN for a column without any."""
    finite = np.isfinite(rows)
    total = np.where(finite, rows, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def macro_of_predictions(labels: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Macro AUROC (no CI) and the number of excluded labels: for learning curves."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    values = [rank_auroc(labels[:, j], probs[:, j]) for j in range(labels.shape[1])]
    value, _, n_excluded = macro_auroc(values)
    return value, n_excluded


def gap_to_reference(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """AUROC(method) - AUROC(reference), NaN wherever either is undefined."""
    return np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
