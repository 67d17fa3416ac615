import json

import numpy as np
import pandas as pd
import pytest
from fakerun import HERNIA, make_fake_run, write_run_dir
from sklearn.metrics import roc_auc_score

from evaluation.compute import METRIC_COLUMNS, evaluate_run, write_metrics
from evaluation.rundata import load_run
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS, NUM_LABELS
from hospitalnet.rundir import RunDir, key, read_arrays


def _tiny_run(root):
    """Two sites, ecl + pooled, 4 global test images; only Atelectasis and Cardiomegaly known.

    Atelectasis y = [1, 1, 0, 0], Cardiomegaly y = [1, 0, 0, 0]; the other 12 labels unknown.
    AUROC by hand (count positive-over-negative pairs):
      pooled (both sites): A [.9 .8 .1 .2] -> 4/4 = 1;  C [.9 .5 .6 .1] -> 3/3 = 1;  macro 1
      ecl n1:              A [.9 .1 .5 .2] -> 2/4;      C [.5 .9 .1 .6] -> 1/3;    macro 5/12
      ecl n2:              A [.9 .8 .1 .2] -> 4/4;      C [.2 .5 .1 .6] -> 1/3;    macro 2/3
    """
    labels = np.full((4, NUM_LABELS), np.nan, dtype=np.float32)
    labels[:, 0] = [1, 1, 0, 0]
    labels[:, 1] = [1, 0, 0, 0]

    def probs(a, c):
        p = np.full((4, NUM_LABELS), 0.5, dtype=np.float32)
        p[:, 0], p[:, 1] = a, c
        return p

    pooled = probs([0.9, 0.8, 0.1, 0.2], [0.9, 0.5, 0.6, 0.1])
    predictions = {
        "pooled": {key("final", s, "global"): pooled for s in ("n1", "n2")},
        "ecl": {
            key("final", "n1", "global"): probs([0.9, 0.1, 0.5, 0.2], [0.5, 0.9, 0.1, 0.6]),
            key("final", "n2", "global"): probs([0.9, 0.8, 0.1, 0.2], [0.2, 0.5, 0.1, 0.6]),
        },
    }
    info = {
        "seed": 7,
        "mode": "simulation",
        "methods": ["ecl", "pooled"],
        "sites": ["n1", "n2"],
        "wall_seconds": {"total": 30.0, "per_method": {"ecl": 12.5, "pooled": 17.5}},
    }
    return write_run_dir(
        root,
        info=info,
        testsets={"global": (labels, np.array([11, 11, 12, 13]))},
        predictions=predictions,
    )


def test_summary_by_hand(tmp_path):
    ev = evaluate_run(load_run(_tiny_run(tmp_path).root), n_resamples=0)
    ecl, pooled = ev.summary["methods"]["ecl"], ev.summary["methods"]["pooled"]
    assert ecl["per_site"]["n1"]["global"]["macro_auroc"] == pytest.approx(5 / 12)
    assert ecl["per_site"]["n2"]["global"]["macro_auroc"] == pytest.approx(2 / 3)
    assert ecl["per_site"]["n1"]["global"]["n_excluded"] == 12
    assert ecl["mean_site_macro_auroc"] == pytest.approx(13 / 24)
    assert ecl["worst_site_macro_auroc"] == pytest.approx(5 / 12)
    assert ecl["worst_site"] == "n1"
    assert ecl["gap_to_pooled"] == pytest.approx(13 / 24 - 1)
    assert ecl["wall_seconds"] == 12.5
    assert pooled["mean_site_macro_auroc"] == pytest.approx(1.0)
    assert pooled["gap_to_pooled"] == 0.0
    assert ev.summary["headline_testset"] == "global" and ev.summary["reference"] == "pooled"
    assert ecl["per_site"]["n1"]["global"]["ci_low"] is None  # no bootstrap asked for
    row = ev.metrics.query("method == 'ecl' and site == 'n1' and label == 'Cardiomegaly'")
    assert row["gap_to_pooled"].item() == pytest.approx(1 / 3 - 1)


def test_summary_without_pooled_has_null_gap(tmp_path):
    rd = _tiny_run(tmp_path)
    info = json.loads(rd.run_json.read_text())
    info["methods"] = ["ecl"]
    rd.run_json.write_text(json.dumps(info))
    ev = evaluate_run(load_run(rd.root), n_resamples=0)
    assert ev.summary["reference"] is None
    assert ev.summary["methods"]["ecl"]["gap_to_pooled"] is None
    assert ev.metrics["gap_to_pooled"].isna().all()


@pytest.fixture(scope="module")
def fake_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    make_fake_run(root)
    return evaluate_run(load_run(root), n_resamples=40)


def test_every_auroc_equals_sklearn_on_the_stored_predictions(fake_eval):
    run = fake_eval.run
    m = fake_eval.metrics
    assert list(m.columns) == METRIC_COLUMNS
    # 4 methods x 8 sites x (global + own) x 14 labels
    assert len(m) == 4 * 8 * 2 * NUM_LABELS
    checked = 0
    for method in run.methods:
        arrays = read_arrays(run.rundir.predictions(method))
        for (site, testset), rows in m[m["method"] == method].groupby(["site", "testset"]):
            y = run.testsets[testset].labels
            p = arrays[key("final", site, testset)]
            for _, r in rows.iterrows():
                j = LABELS.index(r["label"])
                known = ~np.isnan(y[:, j])
                if np.isnan(r["auroc"]):
                    assert len(np.unique(y[known, j])) < 2
                    continue
                assert r["auroc"] == pytest.approx(roc_auc_score(y[known, j], p[known, j]))
                assert r["n"] == known.sum() and r["n_pos"] == y[known, j].sum()
                checked += 1
    assert checked > 800


def test_undefined_and_unreliable_labels(fake_eval):
    m = fake_eval.metrics
    hernia = m[m["label"] == LABELS[HERNIA]]
    undefined = hernia[hernia["testset"] == "local_n2"]
    assert undefined["auroc"].isna().all() and (undefined["n_pos"] == 0).all()
    assert undefined["ci_low"].isna().all()
    shared = hernia[hernia["testset"] == "global"]
    assert (shared["n_pos"] == 6).all() and shared["unreliable"].all()
    macros = fake_eval.macros
    n2_local = macros[macros["testset"] == "local_n2"]
    assert (n2_local["n_excluded"] == 1).all() and (n2_local["n_defined"] == 13).all()
    for _, r in n2_local.iterrows():
        own = m[(m["method"] == r["method"]) & (m["site"] == "n2") & (m["testset"] == "local_n2")]
        assert r["macro_auroc"] == pytest.approx(own["auroc"].dropna().mean())
    edema = m[(m["testset"] == "local_n3") & (m["label"] == "Edema")]
    assert (edema["n"] == 35).all()  # 5 unknown labels masked out


def test_intervals_bracket_estimates_and_gaps_match(fake_eval):
    m = fake_eval.metrics.dropna(subset=["auroc"])
    inside = (m["ci_low"] <= m["auroc"] + 1e-12) & (m["auroc"] <= m["ci_high"] + 1e-12)
    assert inside.mean() > 0.95
    pooled = m[m["method"] == "pooled"].set_index(["site", "testset", "label"])["auroc"]
    ecl = m[m["method"] == "ecl"].set_index(["site", "testset", "label"])
    expected = ecl["auroc"] - pooled.reindex(ecl.index)
    np.testing.assert_allclose(ecl["gap_to_pooled"], expected)


def test_shared_model_scores_the_same_at_every_site(fake_eval):
    glob = fake_eval.metrics.query("method == 'pooled' and testset == 'global'")
    per_site = glob.pivot(index="label", columns="site", values="ci_low")
    assert (per_site.nunique(axis=1) == 1).all()


def test_curves_and_summary(fake_eval):
    c = fake_eval.curves
    assert len(c) == 4 * 8 * 5  # every method, site and eval point on the global test set
    run = fake_eval.run
    arrays = read_arrays(run.rundir.predictions("ecl"))
    probs = arrays[key("curve", 2, "n4", "global")].astype(float)
    y = run.testsets["global"].labels
    expected = np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in range(NUM_LABELS)])
    row = c.query("method == 'ecl' and site == 'n4' and k == 2")
    assert row["macro_auroc"].item() == pytest.approx(expected)
    assert row["epochs"].item() == 1.5
    curve = fake_eval.summary["methods"]["ecl"]["curve"]
    assert [p["k"] for p in curve] == [0, 1, 2, 3, 4]
    k2 = c.query("method == 'ecl' and k == 2")["macro_auroc"]
    assert curve[2]["mean_site_macro_auroc"] == pytest.approx(k2.mean())
    assert curve[2]["worst_site_macro_auroc"] == pytest.approx(k2.min())


def test_written_files(fake_eval, tmp_path):
    write_metrics(fake_eval, tmp_path / "metrics.csv", tmp_path / "summary.json")
    back = pd.read_csv(tmp_path / "metrics.csv")
    assert list(back.columns) == METRIC_COLUMNS
    assert back["auroc"].isna().sum() == fake_eval.metrics["auroc"].isna().sum() > 0
    assert "NaN" in (tmp_path / "metrics.csv").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: no NaN
    assert set(summary["methods"]) == {"ecl", "gossip", "fedavg", "pooled"}
    for fields in summary["methods"].values():
        assert {
            "mean_site_macro_auroc",
            "worst_site_macro_auroc",
            "gap_to_pooled",
            "wall_seconds",
            "per_site",
        } <= set(fields)


def test_site_run_without_global_test_set(tmp_path):
    make_fake_run(tmp_path, sites=["n3"], methods=["ecl"], with_global=False)
    ev = evaluate_run(load_run(tmp_path), n_resamples=20)
    assert set(ev.metrics["testset"]) == {"local_n3"}
    assert ev.summary["headline_testset"] == "local"
    assert ev.summary["methods"]["ecl"]["mean_site_macro_auroc"] is not None
    assert len(ev.curves) == 5


# --- a broken run directory is named in one line -----------------------------------------------


def test_missing_run_json(tmp_path):
    make_fake_run(tmp_path, n_global=40, n_local=10)
    RunDir(tmp_path).run_json.unlink()
    with pytest.raises(DataError, match=r"run\.json: missing"):
        load_run(tmp_path)


def test_corrupt_files_are_named(tmp_path):
    rd = make_fake_run(tmp_path, n_global=40, n_local=10)
    rd.testsets.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"testsets\.npz: unreadable"):
        load_run(tmp_path)


def test_invalid_json_is_named(tmp_path):
    rd = make_fake_run(tmp_path, n_global=40, n_local=10)
    rd.network_json.write_text("{broken")
    with pytest.raises(DataError, match=r"network\.json: invalid JSON"):
        load_run(tmp_path)


def test_missing_predictions_file_and_key(tmp_path):
    rd = make_fake_run(tmp_path, n_global=40, n_local=10)
    arrays = read_arrays(rd.predictions("gossip"))
    del arrays[key("final", "n5", "global")]
    np.savez(rd.predictions("gossip"), **arrays)
    with pytest.raises(DataError, match=r"gossip\.npz: missing array 'final__n5__global'"):
        evaluate_run(load_run(tmp_path), n_resamples=0)
    rd.predictions("ecl").unlink()
    with pytest.raises(DataError, match=r"predictions/ecl\.npz: missing"):
        load_run(tmp_path)


def test_wrong_shapes_and_values_are_named(tmp_path):
    rd = make_fake_run(tmp_path, n_global=40, n_local=10)
    arrays = read_arrays(rd.predictions("ecl"))
    arrays[key("final", "n1", "global")] = arrays[key("final", "n1", "global")][:5]
    np.savez(rd.predictions("ecl"), **arrays)
    with pytest.raises(DataError, match=r"ecl\.npz: final__n1__global: shape"):
        evaluate_run(load_run(tmp_path), n_resamples=0)
    tests = read_arrays(rd.testsets)
    tests["global__labels"][0, 0] = 2.0
    np.savez(rd.testsets, **tests)
    with pytest.raises(DataError, match=r"global__labels: values other than 0, 1 and NaN"):
        load_run(tmp_path)


def test_bad_run_json_values(tmp_path):
    rd = make_fake_run(tmp_path, n_global=40, n_local=10)
    info = json.loads(rd.run_json.read_text())
    info["methods"] = ["../../etc"]
    rd.run_json.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"run\.json: methods: invalid name"):
        load_run(tmp_path)
    info["methods"], info["seed"] = ["ecl"], "zero"
    rd.run_json.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"run\.json: seed"):
        load_run(tmp_path)


def test_bad_wall_time_is_named(tmp_path):
    rd = _tiny_run(tmp_path)
    info = json.loads(rd.run_json.read_text())
    info["wall_seconds"]["per_method"]["ecl"] = "fast"
    rd.run_json.write_text(json.dumps(info))
    with pytest.raises(
        DataError, match=r"run\.json: wall_seconds\.per_method\.ecl: Input should be a valid number"
    ):
        evaluate_run(load_run(tmp_path), n_resamples=0)


def test_unknown_site_is_named(tmp_path):
    make_fake_run(tmp_path, n_global=40, n_local=10)
    with pytest.raises(DataError, match="site 'n9' is not part of this run"):
        evaluate_run(load_run(tmp_path), ["n9"])
