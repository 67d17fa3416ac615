"""Split a pooled NIH-format data set into hospitals by patient, with deliberate skew.

Only the train_val patients are divided among the sites (the official test list stays the global
test set); each site then holds out ``local_test_fraction`` of its own patients as its local test
split. Assignment: every patient gets an affinity to every site,

    affinity(p, s) = c_s * (prod over the patient's labels of multiplier(s, label)
                            * view_preference(s, view of the patient)) ** skew

and is drawn from the normalised affinities. The per-site constants c_s are fitted first
(iterative proportional fitting on the expected image counts) so that the sites keep their size
shares whatever the skew: skew 0 gives IID sites of the same sizes, 1 the profile, > 1 stronger.
A patient's labels are the union over its train_val images ("No Finding" when none).

Heterogeneity is reported as the Jensen-Shannon divergence (base 2, in [0, 1]) between a site's
distribution of label occurrences over the 14 labels plus No Finding and the pooled one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.spatial.distance import jensenshannon

from hospitalnet.data.nih import NihLoader
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS, NO_FINDING
from hospitalnet.seeding import numpy_rng


@dataclass(frozen=True)
class SiteProfile:
    site: str
    description: str
    share: float
    multipliers: dict[str, float] = field(default_factory=dict)  # label (or No Finding) -> x
    view_preference: dict[str, float] = field(default_factory=dict)  # "AP"/"PA" -> x


DEFAULT_PROFILE: tuple[SiteProfile, ...] = (
    SiteProfile("n1", "large university hospital", 0.25),
    SiteProfile(
        "n2",
        "tertiary ICU-heavy centre",
        0.20,
        {"Effusion": 3, "Atelectasis": 3, "Edema": 3, "Pneumothorax": 3, "Consolidation": 2.5},
        {"AP": 3},
    ),
    SiteProfile("n3", "cancer centre", 0.15, {"Mass": 8, "Nodule": 8}, {"PA": 2}),
    SiteProfile(
        "n4",
        "pulmonary clinic",
        0.12,
        {"Emphysema": 8, "Fibrosis": 8, "Pleural_Thickening": 6},
        {"PA": 2},
    ),
    SiteProfile(
        "n5", "cardiology hospital", 0.10, {"Cardiomegaly": 8, "Edema": 4, "Effusion": 2.5}
    ),
    SiteProfile(
        "n6",
        "community hospital",
        0.08,
        {NO_FINDING: 3, "Infiltration": 2, "Pneumonia": 2},
        {"PA": 2},
    ),
    SiteProfile(
        "n7",
        "infectious-disease hospital",
        0.06,
        {"Pneumonia": 8, "Infiltration": 3, "Consolidation": 3},
        {"AP": 3},
    ),
    SiteProfile("n8", "small rural clinic", 0.04, {NO_FINDING: 5, "Hernia": 10}, {"PA": 2}),
)
PROFILES: dict[str, tuple[SiteProfile, ...]] = {"default": DEFAULT_PROFILE}
CATEGORIES = (*LABELS, NO_FINDING)
KEEP_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)


def label_distribution(labels: np.ndarray) -> np.ndarray:
    """Occurrences of the 14 labels plus No Finding over images, normalised to sum 1."""
    known = np.nan_to_num(labels, nan=0.0)
    counts = np.concatenate([known.sum(axis=0), [(known.sum(axis=1) == 0).sum()]])
    return counts / max(counts.sum(), 1.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    return float(jensenshannon(p, q, base=2) ** 2)


def _patient_table(index: pd.DataFrame) -> pd.DataFrame:
    grouped = index.groupby("patient", sort=True)
    pt = grouped[list(LABELS)].max().fillna(0)
    pt[NO_FINDING] = (pt[list(LABELS)].sum(axis=1) == 0).astype(float)
    pt["images"] = grouped.size()
    pt["ap"] = grouped["view"].apply(lambda v: (v == "AP").mean() >= 0.5)
    return pt


def assign_sites(
    index: pd.DataFrame, profile: tuple[SiteProfile, ...], skew: float, rng: np.random.Generator
) -> pd.Series:
    """Patient pseudonym -> site id, for the patients of ``index``."""
    pt = _patient_table(index)
    n_sites = len(profile)
    log_aff = np.zeros((len(pt), n_sites))
    for s, prof in enumerate(profile):
        for cat, mult in prof.multipliers.items():
            log_aff[:, s] += pt[cat].to_numpy() * np.log(mult)
        ap = pt["ap"].to_numpy()
        log_aff[:, s] += np.where(
            ap,
            np.log(prof.view_preference.get("AP", 1.0)),
            np.log(prof.view_preference.get("PA", 1.0)),
        )
    aff = np.exp(skew * (log_aff - log_aff.max(axis=1, keepdims=True)))
    shares = np.array([p.share for p in profile])
    shares = shares / shares.sum()
    images = pt["images"].to_numpy(dtype=float)
    c = np.ones(n_sites)
    for _ in range(200):  # fit c so that expected image counts match the shares
        prob = aff * c
        prob /= prob.sum(axis=1, keepdims=True)
        expected = (prob * images[:, None]).sum(axis=0) / images.sum()
        c *= shares / np.maximum(expected, 1e-12)
    prob = aff * c
    prob /= prob.sum(axis=1, keepdims=True)
    u = rng.random(len(pt))[:, None]
    choice = (prob.cumsum(axis=1) < u).sum(axis=1).clip(0, n_sites - 1)
    return pd.Series([profile[k].site for k in choice], index=pt.index)


def local_test_patients(patients: list[str], fraction: float, rng: np.random.Generator) -> set[str]:
    order = rng.permutation(len(patients))
    n_test = max(1, int(round(fraction * len(patients)))) if len(patients) > 1 else 0
    return {patients[i] for i in order[:n_test]}


def _site_summary(idx: pd.DataFrame, pooled_dist: np.ndarray, description: str = "") -> dict:
    labels = idx[list(LABELS)].to_numpy(dtype=float)
    train = idx["split"] == "train"
    train_labels = labels[train.to_numpy()] if train.any() else labels
    return {
        "description": description,
        "images": int(len(idx)),
        "patients": int(idx["patient"].nunique()),
        "train_images": int(train.sum()),
        "test_images": int((idx["split"] == "test").sum()),
        "prevalence": {
            n: float(np.nanmean(train_labels[:, j])) if len(train_labels) else 0.0
            for j, n in enumerate(LABELS)
        },
        "views": {v: int((idx["view"] == v).sum()) for v in ("PA", "AP")},
        "jsd": js_divergence(label_distribution(train_labels), pooled_dist),
    }


def partition_dataset(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    profile: str = "default",
    skew: float = 1.0,
    seed: int = 0,
    local_test_fraction: float = 0.2,
    data_root_in_manifest: str | None = None,
) -> dict:
    """Partition ``data_dir`` (NIH layout) into site folders under ``out_dir``; return the summary.

    ``out_dir/sites/<site>/images.csv`` (the Data_Entry columns plus ``split``) and
    ``out_dir/sites/<site>/<site>.yaml`` (a manifest reading it with the ``nih`` loader) for every
    site, ``out_dir/sites/global/`` for the global test set, and ``out_dir/partition.json``.
    """
    if profile not in PROFILES:
        raise ConfigError(f"--profile: unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    if skew < 0:
        raise ConfigError(f"--skew must be >= 0, got {skew}")
    if not 0 < local_test_fraction < 1:
        raise ConfigError(f"--local-test-fraction must be in (0, 1), got {local_test_fraction}")
    sites = PROFILES[profile]
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    loader = NihLoader(str(data_dir), {"split_lists": True}, source=str(data_dir))
    index = loader.index()
    raw = loader.entries()
    raw = raw.set_index("Image Index", drop=False)
    pool = index[index["split"] != "test"]
    global_test = index[index["split"] == "test"]
    if pool.empty:
        raise DataError(f"{data_dir}: no train_val images to partition")

    site_of = assign_sites(pool, sites, skew, numpy_rng(seed, "partition", "assign"))
    pooled_dist = label_distribution(pool[list(LABELS)].to_numpy(dtype=float))
    summary: dict = {"profile": profile, "skew": skew, "seed": seed, "sites": {}}
    root_text = data_root_in_manifest or str(data_dir)
    for k, prof in enumerate(sites):
        idx = pool[pool["patient"].map(site_of) == prof.site].copy()
        patients = sorted(idx["patient"].unique())
        test_p = local_test_patients(
            patients, local_test_fraction, numpy_rng(seed, "partition", "local-test", prof.site)
        )
        idx["split"] = np.where(idx["patient"].isin(test_p), "test", "train")
        _check_disjoint(idx)
        _write_site(out_dir, prof.site, prof.description, raw, idx, root_text, k, sites)
        summary["sites"][prof.site] = _site_summary(idx, pooled_dist, prof.description)
    gt = global_test.copy()
    gt["split"] = "test"
    _write_site(
        out_dir, "global", "global test set (pooled distribution)", raw, gt, root_text, None, sites
    )
    summary["pooled"] = _site_summary(pool.assign(split="train"), pooled_dist)
    summary["global_test"] = _site_summary(gt, pooled_dist)
    all_sites = [set(pool.loc[pool["patient"].map(site_of) == p.site, "patient"]) for p in sites]
    for a in range(len(all_sites)):
        for b in range(a + 1, len(all_sites)):
            assert not all_sites[a] & all_sites[b], "a patient was assigned to two sites"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "partition.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_disjoint(idx: pd.DataFrame) -> None:
    train = set(idx.loc[idx["split"] == "train", "patient"])
    test = set(idx.loc[idx["split"] == "test", "patient"])
    if train & test:
        raise DataError("partition: refusing a split with a patient in both train and test")


def _write_site(
    out_dir: Path,
    site: str,
    description: str,
    raw: pd.DataFrame,
    idx: pd.DataFrame,
    root_text: str,
    k: int | None,
    sites: tuple[SiteProfile, ...],
) -> None:
    folder = out_dir / "sites" / site
    folder.mkdir(parents=True, exist_ok=True)
    rows = raw.loc[idx["image_id"].to_numpy(), [c for c in KEEP_COLUMNS if c in raw.columns]]
    rows = rows.assign(split=idx["split"].to_numpy())
    rows.to_csv(folder / "images.csv", index=False)
    manifest = {
        "site": site,
        "description": description,
        "data": {
            "loader": "nih",
            "root": root_text,
            "options": {"image_list": str((folder / "images.csv").resolve())},
        },
    }
    if k is not None:
        n = len(sites)
        neighbours = sorted({(k + d) % n for d in (-2, -1, 1, 2)} - {k})
        manifest["network"] = {
            "address": f"127.0.0.1:{50051 + k}",
            "neighbours": {sites[j].site: f"127.0.0.1:{50051 + j}" for j in neighbours},
        }
    (folder / f"{site}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def format_summary(summary: dict) -> str:
    """A plain-text table: site, character, images, patients, over-represented labels, JSD."""
    pooled = summary["pooled"]["prevalence"]
    lines = [
        f"{'site':6} {'character':30} {'images':>7} {'patients':>8} {'JSD':>6}  over-represented"
    ]
    for site, s in summary["sites"].items():
        ratio = {n: s["prevalence"][n] / pooled[n] for n in LABELS if pooled[n] > 0}
        top = [
            f"{n} x{r:.1f}" for n, r in sorted(ratio.items(), key=lambda t: -t[1])[:3] if r > 1.3
        ]
        lines.append(
            f"{site:6} {s['description'][:30]:30} {s['images']:7d} {s['patients']:8d} "
            f"{s['jsd']:6.3f}  {', '.join(top) or '-'}"
        )
    g = summary["global_test"]
    lines.append(
        f"{'global':6} {'global test set':30} {g['images']:7d} {g['patients']:8d} {g['jsd']:6.3f}"
    )
    return "\n".join(lines)
