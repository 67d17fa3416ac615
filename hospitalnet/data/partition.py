"""Split a pooled NIH-format data set into hospitals by patient, with deliberate skew.

Only the pooled set's train_val patients are divided among the sites; the official test list stays
the global test set (a pooled set without one gets a seeded 20 % of its patients as global test,
with a warning). Each site then holds out ``local_test_fraction`` of its own patients as its local
test split. Every step works on patients, never on images.

The assignment (:func:`assign_sites`), for patient ``p`` and site ``s`` of a profile (the
profiles are in :mod:`hospitalnet.data.profiles`):

0. Eligibility. A site never receives a patient with a finding (on any of its films) that the
   site's profile lists as ``absent``. A patient no site may hold is left out of every site and
   counted in ``partition.json`` under ``unassigned`` (never dropped silently).
1. Affinity. ``log a[p, s] = sum of log label_affinity[s, l] over the patient's labels`` (the
   union over its films; "No Finding" when none of its films has a finding)
   ``+ sum over views v of (fraction of its films in view v) * log view_affinity[s, v]``, i.e.
   the product of the label multipliers times a view multiplier. A patient with many findings is
   pulled hard towards the sites that want them, as multimorbid patients are in reality.
2. Skew. ``P(s | p) proportional to c_s * exp(skew * log a[p, s])`` over the eligible sites
   (0 elsewhere); the per-site constants ``c_s`` are fitted (iterative proportional fitting) so
   that the *expected* image counts equal the profile's size shares whatever the skew: skew 0
   gives IID sites (among the eligible) of the same sizes, 1 the profile, > 1 a stronger bias.
3. Sampling. Each patient draws its site from ``P(. | p)`` (seeded).
4. Rebalancing. While some site's image share misses its target by more than
   :data:`SHARE_TOLERANCE`, the patient of the most over-full site that fits the most under-full
   site best (largest ``log P(dst | p) - log P(src | p)``) and whose move reduces the imbalance
   moves there (only to a site it is eligible for). Every site keeps at least
   :data:`MIN_PATIENTS_PER_SITE` patients (one train, one local test).

Heterogeneity is reported as the Jensen-Shannon divergence between a site's *label distribution*
and the pooled one: the occurrences of the 14 labels plus "No Finding" over the site's images,
normalised to sum to 1 (a film with two findings counts twice), compared with
``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2`` (scipy returns the distance, the square
root of the divergence). Base 2 puts it in [0, 1]: 0 = identical, 1 = disjoint.

Outputs of :func:`partition_dataset` under ``out_dir``::

    sites/<site>/images.csv   the site's Data_Entry rows (kept columns) + split (train/test)
    sites/<site>/<site>.yaml  a site manifest: loader nih, root = the pooled folder,
                              options.image_list = that images.csv, network = multiplex ring
    sites/global/...          the same for the global test set (site "global", split test)
    partition.json            the summary (see :func:`summarise`)
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.spatial.distance import jensenshannon

from hospitalnet.config import TopologyConfig
from hospitalnet.data.indexing import VIEWS
from hospitalnet.data.nih import NihLoader
from hospitalnet.data.profiles import (  # noqa: F401  (re-exported: the profiles lived here)
    CATEGORIES,
    DEFAULT_PROFILE,
    PROFILES,
    STRONG_PROFILE,
    NetworkProfile,
    SiteProfile,
    get_profile,
)
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS, NO_FINDING, NUM_LABELS
from hospitalnet.rundir_schema import GLOBAL  # the site id of the global test set's manifest
from hospitalnet.seeding import numpy_rng
from hospitalnet.topology import multiplex_ring

logger = logging.getLogger(__name__)

SHARE_TOLERANCE = 0.005  # rebalance until every site's image share is within 0.5 points of target
MIN_PATIENTS_PER_SITE = 2  # one for train, one for the local test split
GLOBAL_TEST_FRACTION_WITHOUT_LIST = 0.2  # patients held out when the pooled set has no test list
BASE_PORT = 50050  # site k of the profile listens on 127.0.0.1:(BASE_PORT + k), n1 -> 50051
SCHEMA = "hospitalnet.partition/1"


# ------------------------------------------------------------------------- label statistics


def label_distribution(labels: np.ndarray) -> np.ndarray:
    """Occurrences of the 14 labels plus No Finding over images (rows), normalised to sum 1.

    A NaN (unknown) label counts as no occurrence; a row counts as No Finding only when all 14
    labels are known zeros. All zeros when there is nothing to count.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, NUM_LABELS)
    positive = labels == 1
    normal = (labels == 0).all(axis=1)
    counts = np.append(positive.sum(axis=0), normal.sum()).astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (in [0, 1]); NaN if either distribution is empty."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(jensenshannon(p, q, base=2) ** 2)


# ------------------------------------------------------------------------------- assignment


@dataclass(frozen=True)
class Patients:
    """The per-patient table the assignment works on (rows sorted by pseudonym)."""

    ids: np.ndarray  # pseudonyms
    images: np.ndarray  # images per patient
    log_affinity: np.ndarray  # (patients, sites), before skew
    eligible: np.ndarray  # (patients, sites) bool: the patient has no finding the site lacks

    def subset(self, keep: np.ndarray) -> Patients:
        return Patients(
            self.ids[keep], self.images[keep], self.log_affinity[keep], self.eligible[keep]
        )


def patient_affinities(index: pd.DataFrame, profile: NetworkProfile) -> Patients:
    """Each patient's log-affinity to each site of ``profile`` (see the module docstring)."""
    codes, ids = pd.factorize(index["patient"], sort=True)
    n_patients = len(ids)
    counts = np.bincount(codes, minlength=n_patients)
    # The patient's labels: the union over its films (unknown = not present).
    positive = (index[list(LABELS)].to_numpy(np.float64) == 1).astype(np.int64)
    has_label = np.zeros((n_patients, NUM_LABELS), dtype=np.int64)
    np.add.at(has_label, codes, positive)
    has_label = has_label > 0
    categories = np.column_stack([has_label, ~has_label.any(axis=1)]).astype(np.float64)
    # The patient's view: the fraction of its films taken PA and AP.
    view_share = (
        np.column_stack(
            [
                np.bincount(
                    codes, weights=(index["view"] == v).to_numpy(np.float64), minlength=n_patients
                )
                for v in VIEWS
            ]
        )
        / counts[:, None]
    )
    log_labels = np.array(
        [[np.log(s.label_affinity.get(c, 1.0)) for s in profile.sites] for c in CATEGORIES]
    )
    log_views = np.array(
        [[np.log(s.view_affinity.get(v, 1.0)) for s in profile.sites] for v in VIEWS]
    )
    log_affinity = categories @ log_labels + view_share @ log_views
    absent = np.array([[name in s.absent for s in profile.sites] for name in LABELS])
    eligible = ~(has_label.astype(np.int64) @ absent.astype(np.int64) > 0)
    return Patients(np.asarray(ids, dtype=str), counts.astype(np.int64), log_affinity, eligible)


def site_probabilities(
    patients: Patients, shares: np.ndarray, skew: float, *, iterations: int = 1000
) -> np.ndarray:
    """``P(site | patient)`` with the per-site constants fitted so that the expected image
    counts match ``shares`` (iterative proportional fitting, in log space). 0 where the patient
    is not eligible; every patient must be eligible somewhere."""
    logits = np.where(patients.eligible, skew * patients.log_affinity, -np.inf)
    weights = patients.images.astype(np.float64)
    target = shares / shares.sum()
    bias = np.log(target)
    for _ in range(iterations):
        z = logits + bias
        prob = np.exp(z - z.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        expected = weights @ prob / weights.sum()
        if np.max(np.abs(expected - target)) < 1e-9:
            break
        bias += np.log(target / np.maximum(expected, 1e-300))
    return prob


def assign_sites(
    patients: Patients,
    profile: NetworkProfile,
    skew: float,
    rng: np.random.Generator,
    *,
    tolerance: float = SHARE_TOLERANCE,
) -> np.ndarray:
    """The site (position in ``profile.sites``) of every patient; see the module docstring."""
    n_sites = len(profile.sites)
    if len(patients.ids) < MIN_PATIENTS_PER_SITE * n_sites:
        raise DataError(
            f"partition: {len(patients.ids)} train_val patient(s) are too few for "
            f"{n_sites} sites (need at least {MIN_PATIENTS_PER_SITE * n_sites})"
        )
    shares = np.array([s.share for s in profile.sites])
    if not patients.eligible.any(axis=1).all():
        raise DataError("partition: some patients fit no site; leave them out first")
    eligible_counts = patients.eligible.sum(axis=0)
    short = [s.site for s, n in zip(profile.sites, eligible_counts) if n < MIN_PATIENTS_PER_SITE]
    if short:
        raise DataError(
            f"partition: site(s) {', '.join(short)} of profile {profile.name}: fewer than "
            f"{MIN_PATIENTS_PER_SITE} patients have none of the findings the site lacks"
        )
    prob = site_probabilities(patients, shares, skew)
    u = rng.random(len(patients.ids))
    # the first site whose cumulative probability reaches u (u < 1), never an ineligible one
    site = np.minimum((prob.cumsum(axis=1) < u[:, None]).sum(axis=1), n_sites - 1)
    site = np.where(patients.eligible[np.arange(len(site)), site], site, prob.argmax(axis=1))
    log_prob = np.log(np.maximum(prob, 1e-300))
    _rebalance(site, patients.images, shares, log_prob, patients.eligible, tolerance)
    _ensure_minimum(site, patients.images, log_prob, patients.eligible)
    return site


def _rebalance(
    site: np.ndarray,
    images: np.ndarray,
    shares: np.ndarray,
    log_prob: np.ndarray,
    eligible: np.ndarray,
    tol: float,
) -> None:
    """Move patients from over-full to under-full sites until all shares are within ``tol``
    (a patient only to a site it is eligible for)."""
    total = images.sum()
    target = shares / shares.sum() * total
    load = np.bincount(site, weights=images, minlength=len(shares))
    for _ in range(len(site)):
        excess = load - target
        src, dst = int(np.argmax(excess)), int(np.argmin(excess))
        if max(excess[src], -excess[dst]) <= tol * total:
            return
        # Moving w images lowers the sum of squared excesses iff w < excess[src] - excess[dst].
        movable = (site == src) & eligible[:, dst] & (images < excess[src] - excess[dst])
        if np.count_nonzero(site == src) <= MIN_PATIENTS_PER_SITE or not movable.any():
            break
        fit = np.where(movable, log_prob[:, dst] - log_prob[:, src], -np.inf)
        p = int(np.argmax(fit))
        site[p] = dst
        load[src] -= images[p]
        load[dst] += images[p]
    worst = np.max(np.abs(load - target)) / total
    logger.warning("partition: site shares within %.1f points of target, not closer", 100 * worst)


def _ensure_minimum(
    site: np.ndarray, images: np.ndarray, log_prob: np.ndarray, eligible: np.ndarray
) -> None:
    """Give every site :data:`MIN_PATIENTS_PER_SITE` patients, taken from the largest site (by
    images) that can spare one eligible there."""
    n_sites = eligible.shape[1]
    for dst in range(n_sites):
        while np.count_nonzero(site == dst) < MIN_PATIENTS_PER_SITE:
            counts = np.bincount(site, minlength=n_sites)
            load = np.bincount(site, weights=images, minlength=n_sites)
            donors = [
                s
                for s in np.argsort(-load, kind="stable")
                if s != dst
                and counts[s] > MIN_PATIENTS_PER_SITE
                and (eligible[site == s, dst]).any()
            ]
            if not donors:
                raise DataError(f"partition: site {dst + 1} of the profile gets too few patients")
            src = int(donors[0])
            fit = np.where(
                (site == src) & eligible[:, dst], log_prob[:, dst] - log_prob[:, src], -np.inf
            )
            site[int(np.argmax(fit))] = dst


def local_test_patients(
    patients: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """``round(fraction * n)`` of a site's patients (at least 1, at most n - 1) for local test."""
    n = len(patients)
    n_test = min(max(int(round(fraction * n)), 1), n - 1) if n >= 2 else 0
    return np.sort(patients)[rng.permutation(n)[:n_test]]


# -------------------------------------------------------------------------------- partition


@dataclass(frozen=True)
class Partition:
    """The result: index rows with the site and local split of every partitioned image.

    ``images`` holds the pooled train_val rows (the loader's index columns) plus ``site``; its
    ``split`` is the site's local split. ``global_test`` holds the global test rows (split test).
    ``unassigned`` holds the train_val rows of patients no site of the profile may hold (a
    finding every eligible site lacks); they are in no site and counted in the summary.
    """

    profile: NetworkProfile
    skew: float
    seed: int
    local_test_fraction: float
    images: pd.DataFrame
    global_test: pd.DataFrame
    unassigned: pd.DataFrame


def build_partition(
    index: pd.DataFrame,
    profile: str | NetworkProfile = "default",
    skew: float = 1.0,
    seed: int = 0,
    local_test_fraction: float = 0.2,
) -> Partition:
    """Partition a pooled loader index (no pixels needed). Pure: no files are read or written.

    ``index`` has the loader contract's columns; rows with split "test" form the global test set,
    the others (split "train" or "") are divided among the sites.
    """
    prof = profile if isinstance(profile, NetworkProfile) else get_profile(profile)
    if not skew >= 0:
        raise ConfigError(f"partition: skew must be >= 0, got {skew}")
    if not 0 < local_test_fraction < 1:
        raise ConfigError(
            f"partition: local test fraction must be in (0, 1), got {local_test_fraction}"
        )
    index = index.reset_index(drop=True)
    is_test = (index["split"] == "test").to_numpy()
    if not is_test.any():
        is_test = _carve_global_test(index, seed)
    unlisted = int((index["split"] == "").sum())
    if unlisted and (index["split"] != "").any():
        logger.warning("partition: %d image(s) in neither split list taken as train_val", unlisted)
    pool = index[~is_test].copy()
    global_test = index[is_test].assign(split="test")
    if pool.empty:
        raise DataError("partition: no train_val images to partition")

    patients = patient_affinities(pool, prof)
    placeable = patients.eligible.any(axis=1)
    unassigned = pool[pool["patient"].isin(set(patients.ids[~placeable]))]
    if len(unassigned):
        logger.warning(
            "partition: %d patient(s) (%d image(s)) have findings no site of profile %s may "
            "hold; they are in no site (partition.json: unassigned)",
            int((~placeable).sum()),
            len(unassigned),
            prof.name,
        )
        pool = pool[~pool.index.isin(unassigned.index)].copy()
        patients = patients.subset(placeable)
    if pool.empty:
        raise DataError(f"partition: no train_val patient fits a site of profile {prof.name}")
    site_of = assign_sites(patients, prof, skew, numpy_rng(seed, "partition", prof.name, "assign"))
    site_ids = np.array(prof.site_ids)
    pool["site"] = pd.Series(site_ids[site_of], index=patients.ids).reindex(pool["patient"]).values
    test_patients: set[str] = set()
    for s in prof.site_ids:
        members = np.asarray(patients.ids[site_ids[site_of] == s])
        rng = numpy_rng(seed, "partition", prof.name, "local-test", s)
        test_patients.update(local_test_patients(members, local_test_fraction, rng).tolist())
    pool["split"] = np.where(pool["patient"].isin(test_patients), "test", "train")
    verify_partition(pool, global_test, prof)
    return Partition(
        prof, float(skew), int(seed), float(local_test_fraction), pool, global_test, unassigned
    )


def _carve_global_test(index: pd.DataFrame, seed: int) -> np.ndarray:
    patients = np.sort(index["patient"].unique())
    n = int(round(GLOBAL_TEST_FRACTION_WITHOUT_LIST * len(patients)))
    chosen = numpy_rng(seed, "partition", "global-test").permutation(patients)[:n]
    logger.warning(
        "partition: no test_list.txt images; %d of %d patients held out as the global test set",
        n,
        len(patients),
    )
    return index["patient"].isin(set(chosen)).to_numpy()


def verify_partition(
    images: pd.DataFrame, global_test: pd.DataFrame, profile: NetworkProfile | None = None
) -> None:
    """Refuse a partition where a patient is in two sites, in both train and test of a site, in
    a site and the global test set, or (given the profile) at a site that lacks one of its
    findings. Messages give counts, never ids."""
    sites_per_patient = images.groupby("patient")["site"].nunique()
    if (sites_per_patient > 1).any():
        n = int((sites_per_patient > 1).sum())
        raise DataError(f"partition: refusing: {n} patient(s) in more than one site")
    splits_per_patient = images.groupby("patient")["split"].nunique()
    if (splits_per_patient > 1).any():
        n = int((splits_per_patient > 1).sum())
        raise DataError(
            f"partition: refusing: {n} patient(s) in both the train and the test split of a site"
        )
    shared = set(images["patient"]) & set(global_test["patient"])
    if shared:
        raise DataError(
            f"partition: refusing: {len(shared)} patient(s) in a site and in the global test set"
        )
    for site in profile.sites if profile is not None else ():
        rows = images[images["site"] == site.site]
        held = [n for n in sorted(site.absent) if (rows[n] == 1).any()]
        if held:
            raise DataError(
                f"partition: refusing: site {site.site} holds {', '.join(held)}, which it lacks"
            )


# ---------------------------------------------------------------------------------- summary


def _stats(rows: pd.DataFrame, pooled_dist: np.ndarray, *, over_train: bool) -> dict[str, Any]:
    """Counts, prevalence, views and JSD of ``rows``; prevalence over the train rows when
    ``over_train``, else over all rows."""
    labels = rows[list(LABELS)].to_numpy(np.float64)
    train = (rows["split"] == "train").to_numpy()
    basis = labels[train] if over_train else labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a label unknown on every row: NaN
        prevalence = np.nanmean(basis, axis=0) if len(basis) else np.full(NUM_LABELS, np.nan)
    normal = (basis == 0).all(axis=1)
    views = {v: int((rows["view"] == v).sum()) for v in VIEWS}
    unknown_view = int((~rows["view"].isin(VIEWS)).sum())
    if unknown_view:
        views["unknown"] = unknown_view
    return {
        "images": int(len(rows)),
        "patients": int(rows["patient"].nunique()),
        "train_images": int(train.sum()),
        "test_images": int((rows["split"] == "test").sum()),
        "train_patients": int(rows.loc[train, "patient"].nunique()),
        "test_patients": int(rows.loc[rows["split"] == "test", "patient"].nunique()),
        "prevalence": {n: _num(v) for n, v in zip(LABELS, prevalence)},
        "no_finding": _num(normal.mean()) if len(basis) else None,
        "positives": {
            part: {n: int(v) for n, v in zip(LABELS, (labels[mask] == 1).sum(axis=0))}
            for part, mask in (("train", train), ("test", (rows["split"] == "test").to_numpy()))
        },
        "views": views,
        "jsd": _num(js_divergence(label_distribution(labels), pooled_dist)),
    }


def _num(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def over_represented(
    prevalence: Mapping[str, float | None],
    pooled: Mapping[str, float | None],
    positives: Mapping[str, int],
    *,
    top: int = 3,
    min_ratio: float = 1.25,
    min_positives: int = 3,
) -> list[tuple[str, float]]:
    """The ``top`` labels with the highest prevalence ratio site / pooled above ``min_ratio``,
    among labels with at least ``min_positives`` positive images at the site (a single Hernia
    film in a small site is noise, not a character)."""
    ratios = []
    for name, p in prevalence.items():
        q = pooled.get(name)
        if p is not None and q and positives.get(name, 0) >= min_positives:
            ratios.append((name, p / q))
    ratios.sort(key=lambda t: -t[1])
    return [(n, round(r, 2)) for n, r in ratios[:top] if r > min_ratio]


def summarise(part: Partition) -> dict[str, Any]:
    """The partition.json summary.

    ``sites.<id>``: description, target_share, share (of partitioned images), images, patients,
    train/test images and patients, prevalence (fraction of the site's *train* images positive,
    per label; NaN labels excluded), no_finding (fraction of train images with all 14 negative),
    positives (train/test counts per label), views, jsd (label distribution of all the site's
    images vs the pooled one), over_represented, absent (the findings the profile's site never
    holds), manifest. ``pooled`` (all partitioned images) and ``global_test`` carry the same
    statistics (their prevalence is over all their images). ``unassigned``: patients, images and
    positives per label of the train_val patients no site may hold (in no site, not in pooled).
    """
    pooled_dist = label_distribution(part.images[list(LABELS)].to_numpy(np.float64))
    pooled = _stats(part.images, pooled_dist, over_train=False)
    total = max(len(part.images), 1)
    sites: dict[str, Any] = {}
    for prof in part.profile.sites:
        rows = part.images[part.images["site"] == prof.site]
        stats = _stats(rows, pooled_dist, over_train=True)
        prev = {**stats["prevalence"], NO_FINDING: stats["no_finding"]}
        ref = {**pooled["prevalence"], NO_FINDING: pooled["no_finding"]}
        train = rows[rows["split"] == "train"]
        positives = {
            **stats["positives"]["train"],
            NO_FINDING: int((train[list(LABELS)].to_numpy() == 0).all(axis=1).sum()),
        }
        sites[prof.site] = {
            "description": prof.description,
            "target_share": prof.share,
            "share": round(len(rows) / total, 6),
            **stats,
            "over_represented": [
                {"label": n, "ratio": r} for n, r in over_represented(prev, ref, positives)
            ],
            "absent": sorted(prof.absent, key=LABELS.index),
            "manifest": f"sites/{prof.site}/{prof.site}.yaml",
        }
    global_stats = _stats(part.global_test, pooled_dist, over_train=False)
    global_stats["manifest"] = f"sites/{GLOBAL}/{GLOBAL}.yaml"
    return {
        "schema": SCHEMA,
        "profile": part.profile.name,
        "skew": part.skew,
        "seed": part.seed,
        "local_test_fraction": part.local_test_fraction,
        "labels": list(LABELS),
        "jsd_definition": (
            "Jensen-Shannon divergence, base 2, between the distributions of label occurrences "
            "(14 labels + No Finding, normalised) of the set and of the pooled train_val images"
        ),
        "sites": sites,
        "pooled": pooled,
        "global_test": global_stats,
        "unassigned": {
            "patients": int(part.unassigned["patient"].nunique()),
            "images": int(len(part.unassigned)),
            "positives": {n: int((part.unassigned[n] == 1).sum()) for n in LABELS},
            "why": "every site of the profile lacks at least one of their findings",
        },
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """A plain-text table: site, character, images, share, patients, JSD, over-represented."""
    head = f"{'site':8}{'character':30}{'images':>8}{'share':>7}{'patients':>9}{'JSD':>7}  "
    lines = [head + "over-represented (x pooled prevalence)"]
    for site, s in summary["sites"].items():
        top = ", ".join(f"{o['label']} x{o['ratio']:.1f}" for o in s["over_represented"])
        lines.append(
            f"{site:8}{s['description'][:29]:30}{s['images']:8d}{100 * s['share']:6.1f}%"
            f"{s['patients']:9d}{_fmt(s['jsd'])}  {top or '-'}"
            + (f"; lacks {', '.join(s['absent'])}" if s.get("absent") else "")
        )
    for key, name, title in (
        ("pooled", "pooled", "all sites (train_val)"),
        ("global_test", GLOBAL, "global test set"),
    ):
        s = summary[key]
        lines.append(f"{name:8}{title:30}{s['images']:8d}{'':7}{s['patients']:9d}{_fmt(s['jsd'])}")
    left = summary.get("unassigned", {})
    if left.get("patients"):
        lines.append(
            f"{'-':8}{'unassigned: no site may hold':30}{left['images']:8d}{'':7}"
            f"{left['patients']:9d}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return f"{value:7.3f}" if value is not None else f"{'n/a':>7}"


# ---------------------------------------------------------------------------------- writing


SITE_HEADER = """\
# Hospital {site} ({description}), written by `hospitalnet partition` (profile {profile}).
# Its images are the rows of images.csv (split = its local train/test) inside the pooled
# NIH-format folder data.root. To use real data for this hospital instead, change data.loader /
# data.root / data.options (see README, "Site data") and network.* to its address and peers.
"""
GLOBAL_HEADER = """\
# The global test set (the pooled data set's test list), written by `hospitalnet partition`.
# Shared for evaluation only: no hospital trains on it.
"""


# NihLoader options `hospitalnet partition` passes on (the others it sets itself).
PARTITION_LOADER_OPTIONS = ("on_missing_image", "on_bad", "unknown_labels")


def _manifest_paths(data_dir: Path, folder: Path) -> tuple[str, str]:
    """``data.root`` and ``options.image_list`` for a manifest in ``folder``.

    The root is written as given when absolute, else relative to the manifest's folder (which is
    how manifests resolve a relative root). The image list is written relative to the root when
    it lies next to it (the world layout ``nih/`` + ``sites/``), else absolute.
    """
    root = str(data_dir) if data_dir.is_absolute() else os.path.relpath(data_dir, folder)
    image_list = os.path.relpath((folder / "images.csv").resolve(), data_dir.resolve())
    if image_list.startswith(os.path.join(os.pardir, os.pardir)):
        image_list = str((folder / "images.csv").resolve())
    return root, Path(image_list).as_posix()


def _write_site(
    out_dir: Path,
    site: str,
    description: str,
    profile: NetworkProfile,
    entries: pd.DataFrame,
    rows: pd.DataFrame,
    data_dir: Path,
    loader_options: dict[str, str],
) -> None:
    folder = out_dir / "sites" / site
    folder.mkdir(parents=True, exist_ok=True)
    table = entries.loc[rows["image_id"].to_numpy()].drop(columns="split")
    table.assign(split=rows["split"].to_numpy()).to_csv(folder / "images.csv", index=False)
    root, image_list = _manifest_paths(data_dir, folder)
    manifest: dict[str, Any] = {
        "site": site,
        "description": description,
        "data": {
            "loader": "nih",
            "root": root,
            "options": {"image_list": image_list, **loader_options},
        },
    }
    if site != GLOBAL:
        manifest["network"] = network_identity(profile, site)
    header = GLOBAL_HEADER if site == GLOBAL else SITE_HEADER
    text = header.format(site=site, description=description, profile=profile.name)
    text += yaml.safe_dump(manifest, sort_keys=False)
    (folder / f"{site}.yaml").write_text(text, encoding="utf-8")


def network_identity(profile: NetworkProfile, site: str) -> dict[str, Any]:
    """Address and multiplex-ring (+-1, +-2) neighbours of ``site`` on one machine."""
    ids = profile.site_ids
    ring = multiplex_ring(ids, TopologyConfig(kind="multiplex_ring"), 0)

    def address(s: str) -> str:
        return f"127.0.0.1:{BASE_PORT + 1 + ids.index(s)}"

    return {
        "address": address(site),
        "neighbours": {n: address(n) for n in ring.neighbours(site)},
    }


def partition_dataset(
    data_dir: str | Path,
    out_dir: str | Path,
    profile: str = "default",
    skew: float = 1.0,
    seed: int = 0,
    local_test_fraction: float = 0.2,
    loader_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Partition the NIH-format folder ``data_dir`` into site folders under ``out_dir``.

    Reads ``data_dir`` through :class:`~hospitalnet.data.nih.NihLoader` (every listed PNG must be
    on disk unless ``loader_options`` say ``on_missing_image: skip``), writes the files listed in
    the module docstring, returns the summary (also written as ``out_dir/partition.json``).
    ``loader_options`` (``on_missing_image``, ``on_bad``, ``unknown_labels``) apply to this read
    and are written into every manifest's ``data.options``, so the sites read the data the same
    way.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    prof = get_profile(profile)
    loader_options = dict(loader_options or {})
    unknown = sorted(set(loader_options) - set(PARTITION_LOADER_OPTIONS))
    if unknown:
        raise ConfigError(f"partition: loader option(s) {', '.join(unknown)} cannot be set here")
    loader = NihLoader(
        str(data_dir), {"split_lists": True, **loader_options}, source=f"--data {data_dir}"
    )
    index = loader.index()
    entries = loader.entries().set_index("Image Index", drop=False)
    part = build_partition(index, prof, skew, seed, local_test_fraction)
    summary = summarise(part)
    for s in prof.sites:
        rows = part.images[part.images["site"] == s.site]
        _write_site(out_dir, s.site, s.description, prof, entries, rows, data_dir, loader_options)
    _write_site(
        out_dir,
        GLOBAL,
        "global test set (pooled test list)",
        prof,
        entries,
        part.global_test,
        data_dir,
        loader_options,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "partition.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
