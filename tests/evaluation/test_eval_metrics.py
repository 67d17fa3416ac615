import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from evaluation.metrics import (
    MIN_POSITIVES,
    auroc,
    evaluate_testset,
    gap_to_reference,
    label_counts,
    macro_auroc,
    patient_bootstrap_counts,
    patient_bootstrap_weights,
    rank_auroc,
    weighted_rank_auroc,
)
from hospitalnet.seeding import numpy_rng

NAMES = ["A", "B"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 6), st.integers(0, 3)), min_size=2, max_size=40
    )
)
def test_rank_auroc_equals_sklearn_with_ties_and_weights(rows):
    y = np.array([r[0] for r in rows], dtype=float)
    scores = np.array([r[1] for r in rows], dtype=float) / 6  # few distinct values: many ties
    weights = np.array([r[2] for r in rows], dtype=float)
    if y.min() == y.max():
        assert np.isnan(rank_auroc(y, scores))
        return
    assert rank_auroc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    if weights[y == 1].sum() > 0 and weights[y == 0].sum() > 0:
        expected = roc_auc_score(y, scores, sample_weight=weights)
        assert weighted_rank_auroc(y, scores, weights[None])[0] == pytest.approx(expected)


def test_auroc_masks_unknown_labels_and_is_nan_when_undefined():
    y = np.array([1, 0, np.nan, 1, 0, np.nan])
    s = np.array([0.9, 0.2, 0.0, 0.4, 0.6, 1.0])
    # pairs (pos, neg): 0.9>0.2, 0.9>0.6, 0.4>0.2, 0.4<0.6 -> 3/4; NaN rows ignored
    assert auroc(y, s) == pytest.approx(0.75)
    assert rank_auroc(y, s) == pytest.approx(0.75)
    assert np.isnan(auroc(np.zeros(5), np.arange(5.0)))
    assert np.isnan(auroc(np.array([1.0, 1.0, np.nan]), np.arange(3.0)))


def test_label_counts_and_reasons():
    c = label_counts(np.array([1, 0, 0, np.nan]))
    assert (c.n, c.n_pos, c.n_neg) == (3, 1, 2)
    assert c.unreliable and c.defined
    assert label_counts(np.zeros(4)).undefined_reason == "undefined: no positive cases"
    assert label_counts(np.ones(4)).undefined_reason == "undefined: no negative cases"
    assert label_counts(np.r_[np.ones(MIN_POSITIVES), 0]).unreliable is False


def test_macro_excludes_undefined_and_counts_them():
    assert macro_auroc([0.8, np.nan, 0.6]) == (pytest.approx(0.7), 2, 1)
    value, defined, excluded = macro_auroc([np.nan, np.nan])
    assert np.isnan(value) and (defined, excluded) == (0, 2)


def test_gap_to_reference_propagates_undefined():
    gap = gap_to_reference(np.array([0.7, np.nan]), np.array([0.8, 0.9]))
    assert gap[0] == pytest.approx(-0.1) and np.isnan(gap[1])


def test_bootstrap_resamples_whole_patients():
    patients = np.array([30, 10, 10, 20, 30, 30, 40])
    weights = patient_bootstrap_weights(patients, 50, numpy_rng(1, "t"))
    counts, image_patient = patient_bootstrap_counts(patients, 50, numpy_rng(1, "t"))
    assert weights.shape == (50, 7)
    # images of one patient always carry the same weight (they enter a resample together)
    for code in np.unique(patients):
        cols = weights[:, patients == code]
        assert (cols == cols[:, :1]).all()
    # each resample draws as many patients as there are (4), with replacement
    assert (counts.sum(axis=1) == 4).all()
    assert (weights == counts[:, image_patient]).all()


def _patient_data(seed=0, n_patients=60):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n_patients, 2)) < 0.4).astype(float)
    probs = np.clip(labels * 0.35 + rng.random((n_patients, 2)) * 0.65, 0, 1)
    return labels, probs, np.arange(n_patients) * 7 + 1000


def test_identical_copies_of_a_patient_give_the_patient_level_interval():
    labels, probs, patients = _patient_data()
    one = evaluate_testset(labels, probs, patients, NAMES, numpy_rng(3, "b"), 200)
    # every patient now has three identical images, listed in a shuffled order
    order = np.random.default_rng(9).permutation(np.repeat(np.arange(len(patients)), 3))
    three = evaluate_testset(
        labels[order], probs[order], patients[order], NAMES, numpy_rng(3, "b"), 200
    )
    for a, b in zip(one.labels, three.labels):
        assert b.auroc == pytest.approx(a.auroc)
        assert (b.ci_low, b.ci_high) == pytest.approx((a.ci_low, a.ci_high))
        assert b.counts.n == 3 * a.counts.n
    assert (three.macro.ci_low, three.macro.ci_high) == pytest.approx(
        (one.macro.ci_low, one.macro.ci_high)
    )


def test_bootstrap_is_seeded():
    labels, probs, patients = _patient_data()
    a = evaluate_testset(labels, probs, patients, NAMES, numpy_rng(5, "x"), 100)
    b = evaluate_testset(labels, probs, patients, NAMES, numpy_rng(5, "x"), 100)
    c = evaluate_testset(labels, probs, patients, NAMES, numpy_rng(6, "x"), 100)
    assert a == b
    assert (a.labels[0].ci_low, a.labels[0].ci_high) != (c.labels[0].ci_low, c.labels[0].ci_high)


def test_interval_contains_the_estimate_and_narrows_with_more_patients():
    small = _patient_data(n_patients=60)
    large = _patient_data(n_patients=600)
    r_small = evaluate_testset(*small, NAMES, numpy_rng(0, "s"), 300)
    r_large = evaluate_testset(*large, NAMES, numpy_rng(0, "s"), 300)
    for r in (r_small, r_large):
        for lab in r.labels:
            assert lab.ci_low < lab.auroc < lab.ci_high
        assert r.macro.ci_low < r.macro.value < r.macro.ci_high
    width = lambda r: r.labels[0].ci_high - r.labels[0].ci_low  # noqa: E731
    assert width(r_large) < 0.6 * width(r_small)


def test_undefined_label_has_no_interval_and_leaves_the_macro():
    labels, probs, patients = _patient_data()
    labels[:, 1] = 0.0  # no positive case of B
    r = evaluate_testset(labels, probs, patients, NAMES, numpy_rng(0, "u"), 50)
    b = r.labels[1]
    assert np.isnan(b.auroc) and np.isnan(b.ci_low) and np.isnan(b.ci_high)
    assert (r.macro.n_defined, r.macro.n_excluded) == (1, 1)
    assert r.macro.value == pytest.approx(r.labels[0].auroc)


def test_no_generator_means_no_interval():
    r = evaluate_testset(*_patient_data(), NAMES, None, 100)
    assert all(np.isnan(lab.ci_low) for lab in r.labels) and np.isfinite(r.macro.value)


def test_golden_interval():
    """Pins one seeded interval: a change here means every report's intervals changed."""
    r = evaluate_testset(*_patient_data(), NAMES, numpy_rng(3, "b"), 200)
    assert r.labels[0].auroc == pytest.approx(0.921958, abs=1e-6)
    assert (r.labels[0].ci_low, r.labels[0].ci_high) == pytest.approx(
        (0.840449, 0.980869), abs=1e-6
    )
    assert r.macro.ci_low == pytest.approx(0.886281, abs=1e-6)
