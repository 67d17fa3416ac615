"""The eight-hospital partition: by patient, sized, skewed on purpose, seeded, verified."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hospitalnet.cli import main
from hospitalnet.data.manifest import load_manifest
from hospitalnet.data.nih import NihLoader
from hospitalnet.data.partition import (
    DEFAULT_PROFILE,
    GLOBAL,
    PROFILES,
    SHARE_TOLERANCE,
    build_partition,
    js_divergence,
    label_distribution,
    network_identity,
    partition_dataset,
    summarise,
    verify_partition,
)
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS, NO_FINDING

from .fake_nih import fake_pooled_rows, index_of_rows, write_fake_nih

SITES = [f"n{k}" for k in range(1, 9)]
SHARES = [0.25, 0.20, 0.15, 0.12, 0.10, 0.08, 0.06, 0.04]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pooled():
    """3000 patients (about 7500 images) as a loader index; no pixels needed."""
    rows, test = fake_pooled_rows(3000, seed=7)
    return index_of_rows(rows, test)


@pytest.fixture(scope="module")
def parts(pooled):
    return {skew: build_partition(pooled, "default", skew, seed=1) for skew in (0.0, 1.0, 2.0)}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """A pooled NIH folder on disk: 240 patients, 2x2 PNGs, the world layout's nih/ folder."""
    rows, test = fake_pooled_rows(240, seed=3, max_images=3)
    world = tmp_path_factory.mktemp("world")
    write_fake_nih(world / "nih", rows, test=test, size=2)
    return world


# ------------------------------------------------------------------- by patient, verified


def test_no_patient_in_two_sites_or_in_train_and_test(parts):
    for part in parts.values():
        images = part.images
        assert (images.groupby("patient")["site"].nunique() == 1).all()
        assert (images.groupby("patient")["split"].nunique() == 1).all()
        assert not set(images["patient"]) & set(part.global_test["patient"])
        assert set(images["split"]) == {"train", "test"}


def test_verify_refuses_every_kind_of_overlap(parts):
    images, global_test = parts[1.0].images, parts[1.0].global_test
    verify_partition(images, global_test)  # the real one passes
    a, b = images.index[images["site"] == "n1"][0], images.index[images["site"] == "n2"][0]

    two_sites = images.copy()
    two_sites.loc[a, "patient"] = images.loc[b, "patient"]
    with pytest.raises(DataError, match="1 patient.* more than one site"):
        verify_partition(two_sites, global_test)

    site = images[images["site"] == "n3"]
    train_row = site.index[site["split"] == "train"][0]
    test_patient = site.loc[site["split"] == "test", "patient"].iloc[0]
    train_and_test = images.copy()
    train_and_test.loc[train_row, "patient"] = test_patient
    with pytest.raises(DataError, match="1 patient.* both the train and the test split"):
        verify_partition(train_and_test, global_test)

    leaked = global_test.copy()
    leaked.iloc[0, leaked.columns.get_loc("patient")] = images["patient"].iloc[0]
    with pytest.raises(DataError, match="1 patient.* global test set"):
        verify_partition(images, leaked)


def test_the_global_test_set_is_exactly_the_test_list(pooled, parts):
    part = parts[1.0]
    assert set(part.global_test["image_id"]) == set(
        pooled.loc[pooled["split"] == "test", "image_id"]
    )
    assert len(part.images) + len(part.global_test) == len(pooled)


def test_each_site_holds_out_a_fraction_of_its_patients(parts):
    images = parts[1.0].images
    for site in SITES:
        rows = images[images["site"] == site]
        n = rows["patient"].nunique()
        assert rows.loc[rows["split"] == "test", "patient"].nunique() == round(0.2 * n)


# -------------------------------------------------------------------------- sizes and skew


@pytest.mark.parametrize("skew", [0.0, 1.0, 2.0])
def test_image_shares_hold_within_tolerance_and_largest_is_5x_smallest(parts, skew):
    images = parts[skew].images
    counts = images["site"].value_counts().reindex(SITES).to_numpy()
    shares = counts / counts.sum()
    assert np.abs(shares - SHARES).max() <= SHARE_TOLERANCE + 1e-9
    assert counts.max() >= 5 * counts.min()


def test_skew_zero_is_near_iid_and_skew_makes_sites_diverge(parts):
    jsd = {
        k: np.array([s["jsd"] for s in summarise(p)["sites"].values()]) for k, p in parts.items()
    }
    assert jsd[0.0].max() < 0.02
    assert jsd[1.0].mean() > 3 * jsd[0.0].mean()
    assert jsd[2.0].mean() > jsd[1.0].mean()


def test_biased_sites_over_represent_their_labels_at_skew_1(parts):
    summary = summarise(parts[1.0])
    pooled = summary["pooled"]["prevalence"]
    sites = summary["sites"]

    def ratio(site, label):
        return sites[site]["prevalence"][label] / pooled[label]

    assert ratio("n3", "Mass") > 2 and ratio("n3", "Nodule") > 2
    assert ratio("n4", "Emphysema") > 2 and ratio("n4", "Fibrosis") > 2
    assert ratio("n5", "Cardiomegaly") > 2
    assert ratio("n7", "Pneumonia") > 2
    assert ratio("n2", "Effusion") > 1.4
    assert sites["n8"]["no_finding"] > summary["pooled"]["no_finding"]
    ap_share = {s: v["views"]["AP"] / v["images"] for s, v in sites.items()}
    assert ap_share["n2"] > ap_share["n1"] > ap_share["n3"]
    assert [o["label"] for o in sites["n3"]["over_represented"]][:2] in (
        ["Mass", "Nodule"],
        ["Nodule", "Mass"],
    )


def test_same_seed_same_partition_other_seed_differs(pooled, parts):
    again = build_partition(pooled, "default", 1.0, seed=1)
    other = build_partition(pooled, "default", 1.0, seed=2)
    pd.testing.assert_frame_equal(again.images, parts[1.0].images)
    assert not again.images["site"].equals(other.images["site"])


def test_a_pool_without_a_test_list_gets_a_seeded_global_test_set(pooled):
    unsplit = pooled.assign(split="")

    part = build_partition(unsplit, "default", 1.0, seed=4)

    patients = unsplit["patient"].nunique()
    assert part.global_test["patient"].nunique() == round(0.2 * patients)
    verify_partition(part.images, part.global_test)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"skew": -0.5}, ConfigError, "skew must be >= 0"),
        ({"local_test_fraction": 1.0}, ConfigError, "local test fraction"),
        ({"profile": "nine-hospitals"}, ConfigError, "unknown profile 'nine-hospitals'"),
    ],
)
def test_bad_arguments(pooled, kwargs, error, message):
    with pytest.raises(error, match=message):
        build_partition(pooled, **kwargs)


def test_too_few_patients_for_the_sites(pooled):
    few = pooled[pooled["patient"].isin(pooled["patient"].unique()[:12])]
    with pytest.raises(DataError, match="too few for 8 sites"):
        build_partition(few.assign(split="train"))


# ---------------------------------------------------------------------------- statistics


def test_js_divergence_by_hand():
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    m = (p + q) / 2  # [0.75, 0.25]
    kl_pm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_qm = 1.0 * math.log2(1.0 / 0.75)
    assert js_divergence(p, q) == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm)
    assert js_divergence(p, q) == pytest.approx(0.311278, abs=1e-6)
    assert js_divergence(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)
    assert js_divergence(p, p) == pytest.approx(0.0)
    assert math.isnan(js_divergence(p, np.zeros(2)))
    assert m.sum() == 1


def test_label_distribution_by_hand():
    labels = np.zeros((4, len(LABELS)))
    labels[0, [0, 1]] = 1  # Atelectasis + Cardiomegaly: two occurrences
    labels[1, 0] = 1
    labels[2, :] = np.nan  # unknown: counts nowhere
    # row 3: No Finding

    dist = label_distribution(labels)

    assert len(dist) == len(LABELS) + 1
    assert dist[0] == pytest.approx(2 / 4) and dist[1] == pytest.approx(1 / 4)
    assert dist[-1] == pytest.approx(1 / 4) and dist.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------- files and the command


def test_partition_dataset_writes_site_folders_manifests_and_summary(small_world):
    out = small_world
    summary = partition_dataset(out / "nih", out, seed=0)

    on_disk = json.loads((out / "partition.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["schema"] == "hospitalnet.partition/1"
    assert list(summary["sites"]) == SITES and summary["labels"] == list(LABELS)
    for key in ("images", "patients", "prevalence", "jsd", "views"):
        assert key in summary["pooled"] and key in summary["global_test"]
    seen: dict[str, str] = {}
    for site, stats in summary["sites"].items():
        for key in ("description", "train_images", "test_images", "positives", "over_represented"):
            assert key in stats
        assert set(stats["prevalence"]) == set(LABELS)
        table = pd.read_csv(out / "sites" / site / "images.csv", dtype=str)
        for column in ("Image Index", "Finding Labels", "Patient ID", "View Position", "split"):
            assert column in table.columns
        manifest, root = load_manifest(out / "sites" / site / f"{site}.yaml")
        assert manifest.data.loader == "nih" and root == (out / "nih").resolve()
        assert manifest.data.options["image_list"] == f"../sites/{site}/images.csv"
        assert manifest.network.model_dump(include={"address", "neighbours"}) == network_identity(
            DEFAULT_PROFILE, site
        )
        idx = NihLoader(str(root), manifest.data.options).index()
        assert len(idx) == stats["images"] == len(table)
        assert (idx["split"] == "train").sum() == stats["train_images"]
        train = set(idx.loc[idx["split"] == "train", "patient"])
        test = set(idx.loc[idx["split"] == "test", "patient"])
        assert train and test and not train & test
        for p in train | test:
            assert seen.setdefault(p, site) == site, "a patient in two sites"
    manifest, root = load_manifest(out / "sites" / GLOBAL / f"{GLOBAL}.yaml")
    idx = NihLoader(str(root), manifest.data.options).index()
    assert set(idx["split"]) == {"test"} and len(idx) == summary["global_test"]["images"]
    assert not set(idx["patient"]) & set(seen)


def test_cli_prints_the_summary_table(small_world, tmp_path, capsys):
    code = main(
        ["partition", "--data", str(small_world / "nih"), "--out", str(tmp_path), "--skew", "1.5"]
    )

    printed = capsys.readouterr().out
    assert code == 0
    for site in SITES:
        assert f"\n{site} " in printed
    assert "cancer centre" in printed and "JSD" in printed and "global" in printed
    assert json.loads((tmp_path / "partition.json").read_text())["skew"] == 1.5


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["partition", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hospitalnet: error:") and "Data_Entry_2017.csv" in err
    assert "\n" not in err
    assert main(["partition", "--data", str(tmp_path), "--out", "o", "--profile", "x"]) == 2
    assert "unknown profile 'x'" in capsys.readouterr().err


def test_committed_manifests_match_the_network_and_the_world_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSPITALNET_WORLD", str(tmp_path))
    assert list(PROFILES) == ["default", "strong"]
    for site in SITES:
        manifest, root = load_manifest(REPO / "sites" / f"{site}.yaml")
        assert manifest.site == site
        assert manifest.description == next(
            s.description for s in DEFAULT_PROFILE.sites if s.site == site
        )
        identity = manifest.network.model_dump(include={"address", "neighbours"})
        assert identity == network_identity(DEFAULT_PROFILE, site)
        assert root.is_relative_to(tmp_path)
        if manifest.data.loader == "nih":
            assert root == tmp_path / "nih"
            assert manifest.data.options == {"image_list": f"../sites/{site}/images.csv"}


def test_profiles_are_well_formed():
    prof = DEFAULT_PROFILE
    assert [s.site for s in prof.sites] == SITES
    assert [s.share for s in prof.sites] == SHARES
    assert prof.sites[2].label_affinity["Mass"] > 1 and NO_FINDING in prof.sites[7].label_affinity
