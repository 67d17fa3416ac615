"""The partition profiles, and the `strong` one: sites that lack whole findings (a hard rule)."""

import json

import numpy as np
import pandas as pd
import pytest

from hospitalnet.cli import main
from hospitalnet.data.partition import build_partition, format_summary, summarise, verify_partition
from hospitalnet.data.profiles import (
    DEFAULT_PROFILE,
    PROFILES,
    STRONG_PROFILE,
    NetworkProfile,
    SiteProfile,
    get_profile,
)
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS

from .fake_nih import fake_pooled_rows, index_of_rows, write_fake_nih

SKEWS = (0.0, 1.0, 2.0)


@pytest.fixture(scope="module")
def pooled():
    """3000 patients (about 7500 images) with ChestX-ray14's prevalences; no pixels needed."""
    rows, test = fake_pooled_rows(3000, seed=11)
    return index_of_rows(rows, test)


@pytest.fixture(scope="module")
def parts(pooled):
    return {skew: build_partition(pooled, "strong", skew, seed=2) for skew in SKEWS}


def _lacks(site: str) -> list[str]:
    return sorted(next(s for s in STRONG_PROFILE.sites if s.site == site).absent)


# -------------------------------------------------------------------------------- the profile


def test_registry_names_both_profiles():
    assert get_profile("strong") is STRONG_PROFILE and get_profile("default") is DEFAULT_PROFILE
    assert set(PROFILES) == {"default", "strong"}
    assert all(not s.absent for s in DEFAULT_PROFILE.sites)  # default: no site lacks a finding


def test_strong_sites_lack_3_to_5_findings_each_missing_at_about_2_sites():
    lacking = [len(s.absent) for s in STRONG_PROFILE.sites]
    assert len(lacking) == 8 and all(3 <= n <= 5 for n in lacking)
    missing_at = {name: sum(name in s.absent for s in STRONG_PROFILE.sites) for name in LABELS}
    assert all(1 <= n <= 3 for n in missing_at.values()), missing_at
    assert sum(missing_at.values()) / len(LABELS) == pytest.approx(2.0, abs=0.25)
    shares = [s.share for s in STRONG_PROFILE.sites]
    assert max(shares) / min(shares) >= 5


def test_a_finding_no_site_may_hold_and_a_bad_name_are_refused():
    with pytest.raises(ConfigError, match="bad absent finding 'Cough'"):
        SiteProfile("n1", "x", 1.0, absent=frozenset({"Cough"}))
    with pytest.raises(ConfigError, match="bad absent finding 'No Finding'"):
        SiteProfile("n1", "x", 1.0, absent=frozenset({"No Finding"}))
    sites = (
        SiteProfile("a", "x", 0.5, absent=frozenset({"Hernia", "Mass"})),
        SiteProfile("b", "y", 0.5, absent=frozenset({"Hernia"})),
    )
    with pytest.raises(ConfigError, match="profile p: no site may hold Hernia$"):
        NetworkProfile("p", sites)


# ------------------------------------------------------------------------------ the partition


@pytest.mark.parametrize("skew", SKEWS)
def test_no_site_image_carries_a_finding_the_site_lacks(parts, skew):
    images = parts[skew].images
    for site in STRONG_PROFILE.sites:
        rows = images[images["site"] == site.site]
        for split in ("train", "test"):
            part = rows[rows["split"] == split]
            assert len(part) > 0
            positives = (part[sorted(site.absent)] == 1).sum()
            assert positives.sum() == 0, (site.site, split, positives[positives > 0].to_dict())


@pytest.mark.parametrize("skew", SKEWS)
def test_every_finding_is_held_somewhere_and_sizes_are_skewed_5x(parts, skew):
    images = parts[skew].images
    train = images[images["split"] == "train"]
    for name in LABELS:
        holders = set(train.loc[train[name] == 1, "site"])
        assert holders, name
        assert not holders & {s.site for s in STRONG_PROFILE.sites if name in s.absent}
    sizes = train["site"].value_counts()
    assert len(sizes) == 8 and sizes.max() >= 5 * sizes.min()


def test_patients_no_site_may_hold_are_counted_not_lost(pooled, parts):
    part = parts[1.0]
    # by hand: a patient fits no site when every site lacks one of its findings (any film)
    findings = pooled[pooled["split"] != "test"].groupby("patient")[list(LABELS)].max() == 1
    fits_nowhere = [
        p
        for p, row in findings.iterrows()
        if all(any(row[n] for n in s.absent) for s in STRONG_PROFILE.sites)
    ]
    assert fits_nowhere  # this pool has some, so the bookkeeping is exercised
    assert set(part.unassigned["patient"]) == set(fits_nowhere)
    assert not set(part.images["patient"]) & set(fits_nowhere)
    assert len(part.images) + len(part.unassigned) + len(part.global_test) == len(pooled)

    left = summarise(part)["unassigned"]
    assert left["patients"] == len(fits_nowhere)
    assert left["images"] == len(part.unassigned)
    assert left["positives"] == {n: int((part.unassigned[n] == 1).sum()) for n in LABELS}
    assert f"{left['images']:8d}" in format_summary(summarise(part)).splitlines()[-1]


def test_summary_lists_what_each_site_lacks(parts):
    summary = summarise(parts[1.0])
    for site in STRONG_PROFILE.sites:
        s = summary["sites"][site.site]
        assert sorted(s["absent"]) == sorted(site.absent)
        assert all(s["positives"][part][n] == 0 for part in ("train", "test") for n in s["absent"])
    text = format_summary(summary)
    assert "lacks Fibrosis, Pleural_Thickening, Hernia" in text  # n1, in label order


def test_verify_refuses_a_site_holding_a_finding_it_lacks(parts):
    images, global_test = parts[1.0].images, parts[1.0].global_test
    verify_partition(images, global_test, STRONG_PROFILE)
    broken = images.copy()
    row = broken.index[broken["site"] == "n8"][0]
    broken.loc[row, "Pneumonia"] = 1.0
    with pytest.raises(DataError, match="site n8 holds Pneumonia, which it lacks"):
        verify_partition(broken, global_test, STRONG_PROFILE)


def test_too_few_patients_for_a_lacking_site_is_a_data_error():
    # 40 patients, every one with Infiltration: n7 and n8 (which lack it) can get nobody
    rows = [(f"{p:08d}_000.png", "Infiltration", p, "PA") for p in range(1, 41)]
    index = index_of_rows(rows, set())
    with pytest.raises(DataError, match=r"site\(s\) n7, n8 of profile strong: fewer than 2"):
        build_partition(index, "strong", 1.0, seed=0)


def test_same_seed_same_strong_partition(pooled, parts):
    again = build_partition(pooled, "strong", 1.0, seed=2)
    pd.testing.assert_frame_equal(again.images, parts[1.0].images)
    other = build_partition(pooled, "strong", 1.0, seed=3)
    assert not np.array_equal(other.images["site"].to_numpy(), again.images["site"].to_numpy())


def test_cli_partitions_with_the_strong_profile(tmp_path, capsys):
    rows, test = fake_pooled_rows(400, seed=5, max_images=3)
    write_fake_nih(tmp_path / "nih", rows, test=test, size=2)
    argv = ["partition", "--data", str(tmp_path / "nih"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--profile", "strong"]) == 0
    printed = capsys.readouterr().out
    assert "lacks Infiltration, Pneumonia, Consolidation" in printed  # n8
    summary = json.loads((tmp_path / "out" / "partition.json").read_text())
    assert summary["profile"] == "strong" and "unassigned" in summary
    for site in STRONG_PROFILE.sites:
        table = pd.read_csv(tmp_path / "out" / "sites" / site.site / "images.csv")
        for name in site.absent:
            assert not table["Finding Labels"].str.split("|").map(lambda f, n=name: n in f).any()
