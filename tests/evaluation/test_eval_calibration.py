"""Calibration (Brier, log loss, ECE) against scikit-learn and by hand, and the shared bootstrap."""

import json

import numpy as np
import pytest
from fakerun import write_run_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from evaluation.calibration import (
    ECE_BINS,
    METRICS,
    bin_index,
    brier,
    ece,
    evaluate_calibration,
    log_loss_score,
    resampled_scores,
)
from evaluation.compute import CALIBRATION_COLUMNS, METRIC_COLUMNS, evaluate_run
from evaluation.formatting import fmt_gap
from evaluation.metrics import (
    PatientBootstrap,
    evaluate_testset,
    patient_bootstrap_counts,
    percentile_interval,
)
from evaluation.report import render_report
from evaluation.rundata import load_run
from hospitalnet.labels import LABELS, NUM_LABELS
from hospitalnet.rundir import key, read_arrays
from hospitalnet.seeding import numpy_rng

BRIER, LOG_LOSS, ECE = (METRICS.index(m) for m in ("brier", "log_loss", "ece"))


# --- the scores ----------------------------------------------------------------------------------


def test_scores_by_hand():
    """y = [0 1 0 1 1], p = [.05 .05 .32 .38 .97]; bins [0, .1]: two, (.3, .4]: two, (.9, 1]: one.

    Brier = (.0025 + .9025 + .1024 + .3844 + .0009) / 5 = .27854
    ECE = 2/5 |.5 - .05| + 2/5 |.5 - .35| + 1/5 |1 - .97| = .18 + .06 + .006 = .246
    """
    y = np.array([0, 1, 0, 1, 1], dtype=float)
    p = np.array([0.05, 0.05, 0.32, 0.38, 0.97])
    assert brier(y, p) == pytest.approx(0.27854)
    assert ece(y, p) == pytest.approx(0.246)
    expected_ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert log_loss_score(y, p) == pytest.approx(expected_ll)
    assert list(bin_index(p)) == [0, 0, 3, 3, 9]


def test_bins_are_calibration_curves_bins():
    """Edges are right-closed like sklearn's: 0.1 is in the first bin, 0.1 + 1e-9 in the second."""
    p = np.array([0.0, 0.1, 0.1 + 1e-9, 0.5, 0.9, 1.0])
    assert list(bin_index(p)) == [0, 0, 1, 4, 8, 9]
    y = np.array([0, 1, 0, 1, 0, 1], dtype=float)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=ECE_BINS, strategy="uniform")
    # bins 0 (0, .1), 1 (.1+), 4 (.5), 8 (.9), 9 (1.0): the same grouping of the points
    np.testing.assert_allclose(prob_pred, [0.05, 0.1 + 1e-9, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(prob_true, [0.5, 0, 1, 0, 1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 19)), min_size=1, max_size=60))
def test_scores_equal_sklearn(rows):
    """Brier and log loss are sklearn's; ECE is sklearn's reliability curve weighted by bin size.

    Probabilities sit at bin-interior points (k + .5) / 20 so that np.histogram counts the bins.
    """
    y = np.array([r[0] for r in rows], dtype=float)
    p = (np.array([r[1] for r in rows]) + 0.5) / 20
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p, pos_label=1), abs=1e-12)
    assert log_loss_score(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), abs=1e-12)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=ECE_BINS, strategy="uniform")
    counts = np.histogram(p, bins=ECE_BINS, range=(0, 1))[0]
    weights = counts[counts > 0] / y.size
    assert ece(y, p) == pytest.approx(float(np.sum(weights * np.abs(prob_true - prob_pred))))


def test_log_loss_clips_certain_mistakes_as_sklearn_does():
    y = np.array([1.0, 0.0, 1.0])
    p = np.array([0.0, 1.0, 1.0])
    assert log_loss_score(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]))
    assert np.isfinite(log_loss_score(y, p))


def test_one_class_label_is_scored_and_averaged_an_unknown_one_is_left_out():
    """A label with only negatives has no AUROC but a Brier score, log loss and ECE, all computed
    on the negatives, and it enters the macro average; a label without any known case does not."""
    rng = np.random.default_rng(3)
    labels = (rng.random((30, 3)) < 0.4).astype(float)
    labels[:, 1] = 0.0  # one class only
    labels[:, 2] = np.nan  # nothing known
    labels[:4, 0] = np.nan  # a few unknown values are masked out
    probs = rng.random((30, 3))
    auroc = evaluate_testset(labels, probs, np.arange(30), ["a", "b", "c"], None)
    assert np.isnan(auroc.labels[1].auroc) and auroc.macro.n_defined == 1
    cal = evaluate_calibration(labels, probs, None)
    known = ~np.isnan(labels[:, 0])
    assert cal.point[BRIER, 0] == pytest.approx(brier_score_loss(labels[known, 0], probs[known, 0]))
    assert cal.point[BRIER, 1] == pytest.approx(np.mean(probs[:, 1] ** 2))
    assert cal.point[LOG_LOSS, 1] == pytest.approx(-np.mean(np.log(1 - probs[:, 1])))
    assert cal.point[ECE, 1] == pytest.approx(ece(labels[:, 1], probs[:, 1]))
    assert np.isnan(cal.point[:, 2]).all()
    assert list(cal.n_known) == [26, 30, 0] and cal.n_defined == 2
    np.testing.assert_allclose(cal.macro, cal.point[:, :2].mean(axis=1))
    assert cal.boot.shape == (3, 3, 0) and cal.macro_boot.shape == (3, 0)


# --- the shared patient bootstrap ----------------------------------------------------------------


def _data(seed=0, n=60, n_patients=25):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 4)) < [0.1, 0.3, 0.5, 0.0]).astype(float)
    labels[:6, 2] = np.nan
    probs = np.clip(0.4 * labels + rng.random((n, 4)) * 0.6, 0, 1)
    probs = np.where(np.isnan(probs), rng.random((n, 4)), probs)
    patients = 1000 + rng.integers(0, n_patients, size=n)
    return labels, probs, patients


def test_resampled_scores_equal_sklearn_on_the_repeated_images():
    """Resample b counts an image as often as its patient was drawn: the scores equal the plain
    ones on the images repeated that often (sklearn for Brier and log loss)."""
    labels, probs, patients = _data()
    boot = PatientBootstrap.draw(patients, 12, numpy_rng(0, "cal"))
    cal = evaluate_calibration(labels, probs, boot)
    for j in range(labels.shape[1]):
        known = ~np.isnan(labels[:, j])
        for b in range(boot.n_resamples):
            times = boot.counts[b, boot.image_patient[known]]
            y = np.repeat(labels[known, j], times)
            p = np.repeat(probs[known, j], times)
            if not y.size:
                assert np.isnan(cal.boot[:, j, b]).all()
                continue
            assert cal.boot[BRIER, j, b] == pytest.approx(brier_score_loss(y, p, pos_label=1))
            assert cal.boot[LOG_LOSS, j, b] == pytest.approx(log_loss(y, p, labels=[0, 1]))
            assert cal.boot[ECE, j, b] == pytest.approx(ece(y, p))
    ones = resampled_scores(labels[:, 0], probs[:, 0], boot.image_patient, np.ones((1, 25)))
    np.testing.assert_allclose(ones[:, 0], cal.point[:, 0])


def test_bootstrap_draws_are_the_ones_auroc_always_used():
    """One PatientBootstrap holds the draws that evaluate_testset made from the same generator
    (blocks of 128), so sharing it left every AUROC interval unchanged."""
    labels, probs, patients = _data(1)
    boot = PatientBootstrap.draw(patients, 300, numpy_rng(4, "b"))
    rng = numpy_rng(4, "b")
    legacy = [patient_bootstrap_counts(patients, n, rng)[0] for n in (128, 128, 44)]
    np.testing.assert_array_equal(boot.counts, np.concatenate(legacy))
    names = list("abcd")
    shared = evaluate_testset(labels, probs, patients, names, None, bootstrap=boot)
    drawn = evaluate_testset(labels, probs, patients, names, numpy_rng(4, "b"), 300)

    def values(result):
        rows = [(r.auroc, r.ci_low, r.ci_high) for r in result.labels]
        return np.array(rows + [(result.macro.value, result.macro.ci_low, result.macro.ci_high)])

    np.testing.assert_array_equal(values(shared), values(drawn))  # NaN where undefined in both
    assert np.isfinite(values(shared)[:3]).all()


def _paired_run(root):
    """Two sites, ecl + pooled on 80 global images of 30 patients. ecl's model at n1 is pooled's
    model exactly; at n2 it is pooled's probabilities pulled up by 0.15 (the same ranking)."""
    rng = np.random.default_rng(5)
    labels = (rng.random((80, NUM_LABELS)) < 0.25).astype(np.float32)
    pooled = np.clip(0.5 * labels + 0.5 * rng.random(labels.shape), 0.01, 0.84).astype(np.float32)
    shifted = pooled + np.float32(0.15)
    predictions = {
        "pooled": {key("final", s, "global"): pooled for s in ("n1", "n2")},
        "ecl": {key("final", "n1", "global"): pooled, key("final", "n2", "global"): shifted},
    }
    info = {
        "seed": 3,
        "mode": "simulation",
        "methods": ["ecl", "pooled"],
        "sites": ["n1", "n2"],
        "wall_seconds": {"total": 2.0, "per_method": {"ecl": 1.0, "pooled": 1.0}},
    }
    patients = np.sort(rng.integers(0, 30, size=80))
    return write_run_dir(
        root, info=info, testsets={"global": (labels, patients)}, predictions=predictions
    )


def test_gap_intervals_are_paired_on_the_auroc_resamples(tmp_path):
    rd = _paired_run(tmp_path)
    ev = evaluate_run(load_run(rd.root), n_resamples=200)
    m = ev.metrics.set_index(["method", "site", "label"])
    same = m.loc[("ecl", "n1")]
    # the same model as pooled: every gap and both ends of its interval are exactly 0 ...
    for name in METRICS:
        for suffix in ("_gap_to_pooled", "_gap_ci_low", "_gap_ci_high"):
            assert (same[name + suffix] == 0).all()
    # ... although each score's own interval is wide: the pairing removes the patient sampling
    assert ((same["brier_ci_high"] - same["brier_ci_low"]) > 0.01).all()
    # the shifted model ranks alike (AUROC gap 0) but is worse calibrated in every resample
    shifted = m.loc[("ecl", "n2")]
    np.testing.assert_allclose(shifted["gap_to_pooled"], 0, atol=1e-12)
    assert (shifted["brier_gap_ci_low"] > 0).all() and (shifted["log_loss_gap_ci_low"] > 0).all()
    # the intervals are the percentiles of the per-resample differences on the shared resamples
    data = ev.run.testsets["global"]
    boot = PatientBootstrap.draw(
        data.patients, 200, numpy_rng(3, "evaluation", "bootstrap", "global")
    )
    arrays = {meth: read_arrays(rd.predictions(meth)) for meth in ("ecl", "pooled")}
    ecl = evaluate_calibration(data.labels, arrays["ecl"][key("final", "n2", "global")], boot)
    ref = evaluate_calibration(data.labels, arrays["pooled"][key("final", "n2", "global")], boot)
    j = LABELS.index("Effusion")
    row = shifted.loc["Effusion"]
    assert (row["brier_ci_low"], row["brier_ci_high"]) == percentile_interval(ecl.boot[BRIER, j])
    assert (row["brier_gap_ci_low"], row["brier_gap_ci_high"]) == percentile_interval(
        ecl.boot[BRIER, j] - ref.boot[BRIER, j]
    )
    auroc = evaluate_testset(
        data.labels,
        arrays["ecl"][key("final", "n2", "global")],
        data.patients,
        LABELS,
        None,
        bootstrap=boot,
    )
    assert (row["ci_low"], row["ci_high"]) == (auroc.labels[j].ci_low, auroc.labels[j].ci_high)
    # the summary's mean gap: its interval from the mean over hospitals of each resample's gap
    summary = ev.summary["methods"]["ecl"]["calibration"]["brier"]
    assert summary["gap_to_pooled"] == pytest.approx(
        (0 + (ecl.macro[BRIER] - ref.macro[BRIER])) / 2
    )
    low, high = percentile_interval((ecl.macro_boot[BRIER] - ref.macro_boot[BRIER]) / 2)
    assert summary["gap_ci_low"] == pytest.approx(low) and summary["gap_ci_high"] == pytest.approx(
        high
    )


# --- the run's files and the report --------------------------------------------------------------


def test_stored_calibration_equals_sklearn(rendered):
    """Every Brier score and log loss in metrics.csv equals sklearn on the stored predictions."""
    import pandas as pd

    m = pd.read_csv(rendered.network.metrics_csv)
    assert list(m.columns) == METRIC_COLUMNS and set(CALIBRATION_COLUMNS) <= set(m.columns)
    run = load_run(rendered.root)
    checked = 0
    for method in ("ecl", "pooled"):
        arrays = read_arrays(run.rundir.predictions(method))
        for (site, testset), rows in m[m["method"] == method].groupby(["site", "testset"]):
            y = run.testsets[testset].labels
            p = arrays[key("final", site, testset)].astype(np.float64)
            for _, r in rows.iterrows():
                j = LABELS.index(r["label"])
                known = ~np.isnan(y[:, j])
                assert r["brier"] == pytest.approx(
                    brier_score_loss(y[known, j], p[known, j]), abs=1e-6
                )
                assert r["log_loss"] == pytest.approx(
                    log_loss(y[known, j], p[known, j], labels=[0, 1]), abs=1e-6
                )
                checked += 1
    assert checked == 2 * 8 * 2 * NUM_LABELS
    # Hernia at n2's own test set has no positive: no AUROC, but calibrated and with an interval
    hernia = m.query("testset == 'local_n2' and label == 'Hernia'")
    assert hernia["auroc"].isna().all() and hernia["brier"].notna().all()
    assert hernia["brier_ci_low"].notna().all()


def test_summary_calibration(rendered):
    summary = json.loads(rendered.network.summary_json.read_text())
    assert summary["calibration"]["ece_bins"] == 10
    ecl = summary["methods"]["ecl"]
    per_site = [ecl["per_site"][s]["global"]["calibration"]["brier"] for s in summary["sites"]]
    assert ecl["calibration"]["brier"]["mean_site"] == pytest.approx(
        np.mean([e["value"] for e in per_site])
    )
    assert ecl["calibration"]["brier"]["gap_to_pooled"] == pytest.approx(
        np.mean([e["gap_to_pooled"] for e in per_site])
    )
    worst = max(per_site, key=lambda e: e["value"])
    assert ecl["calibration"]["brier"]["worst_site_value"] == worst["value"]
    pooled = summary["methods"]["pooled"]["calibration"]["ece"]
    assert pooled["gap_to_pooled"] == 0 and pooled["gap_ci_low"] == 0
    for e in per_site:
        assert e["ci_low"] <= e["value"] <= e["ci_high"]
        assert e["gap_ci_low"] <= e["gap_to_pooled"] <= e["gap_ci_high"]


def test_report_shows_the_calibration_section(rendered):
    html = rendered.network.html.read_text(encoding="utf-8")
    summary = json.loads(rendered.network.summary_json.read_text())
    section = html[html.index('<section id="calibration"') : html.index('<section id="data"')]
    assert html.index('<section id="findings"') < html.index('<section id="calibration"')
    table = section[section.index('id="calibration-table"') : section.index("</table>")]
    for method in ("ecl", "gossip", "fedavg", "pooled"):
        c = summary["methods"][method]["calibration"]
        for name in METRICS:
            assert f"{c[name]['mean_site']:.3f}" in table
    gap = summary["methods"]["ecl"]["calibration"]["brier"]
    gap_text = f"{fmt_gap(gap['gap_to_pooled'])} ({fmt_gap(gap['gap_ci_low'])} to "
    gap_text += f"{fmt_gap(gap['gap_ci_high'])})"
    assert gap_text in table  # with its paired interval
    assert section.count("<img ") == 1
    assert "equal-width bins" in section and "Brier score per hospital" in section
    md = rendered.network.markdown.read_text(encoding="utf-8")
    assert "## 4. AUROC per finding" in md and "## 5. Calibration (shared global test set)" in md
    assert md.index("## 5. Calibration") < md.index("## 6. Data") < md.index("## 8. Run")
    md_section = md[md.index("## 5. Calibration") : md.index("## 6. Data")]
    row = next(ln for ln in md_section.splitlines() if ln.startswith("| ECL (edge-consensus) |"))
    assert "reference" not in row and gap_text.replace("\u2212", "-") in row
    site_html = rendered.site.html.read_text(encoding="utf-8")
    site_section = site_html[site_html.index('<section id="calibration"') :]
    n3 = summary["methods"]["ecl"]["per_site"]["n3"]["global"]["calibration"]["brier"]
    assert f"{n3['value']:.3f} ({n3['ci_low']:.3f}\u2013{n3['ci_high']:.3f})" in site_section
    assert "<img " in site_section[: site_section.index("</section>")]
    assert "## 4. Calibration" in rendered.site.markdown.read_text(encoding="utf-8")


def test_report_without_pooled_has_no_gap_columns(tmp_path):
    rd = _paired_run(tmp_path)
    info = json.loads(rd.run_json.read_text())
    info["methods"] = ["ecl"]
    rd.run_json.write_text(json.dumps(info))
    paths = render_report(rd.root, n_resamples=10)
    md = paths.markdown.read_text(encoding="utf-8")
    head = next(ln for ln in md.splitlines() if ln.startswith("| Method | Brier score"))
    assert "gap" not in head
