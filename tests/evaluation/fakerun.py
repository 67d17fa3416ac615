"""A fake run directory in the layout of hospitalnet.rundir, for the evaluation tests.

Predictions are random but seeded, with a controlled signal: the better the method (pooled > ecl >
fedavg > gossip), the further positives' probabilities sit above negatives'. Built-in corner cases:
Hernia has fewer than 10 positives on the global test set (unreliable) and none at all on n2's local
test set (undefined); a few Edema labels of n3's local test set are unknown (NaN). Canary strings sit
where an identifier or a path could leak (config values, a site description, the command line,
patient codes) so the privacy test can check that none reaches an output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hospitalnet.labels import LABELS, NUM_LABELS
from hospitalnet.rundir import RunDir, key, write_arrays
from hospitalnet.rundir_schema import DataSummary, History, NetworkRecord, RunInfo

SITES = [f"n{i}" for i in range(1, 9)]
METHODS = ["ecl", "gossip", "fedavg", "pooled"]
QUALITY = {"pooled": 2.2, "ecl": 1.9, "fedavg": 1.3, "gossip": 1.0, "local": 0.7}
HERNIA = LABELS.index("Hernia")
EDEMA = LABELS.index("Edema")
EVAL_POINTS = 5

CANARY_CONFIG_PATH = "CANARY_PATH_123"
CANARY_DESCRIPTION = "CANARY_DESC_456"
CANARY_COMMAND = "CANARY_CMD_789"
PATIENT_CODE_BASE = 918_273_000  # codes 918273000.. are canaries too: they must never be printed
CANARIES = (CANARY_CONFIG_PATH, CANARY_DESCRIPTION, CANARY_COMMAND)


def write_run_dir(
    root: Path,
    *,
    info: dict[str, Any],
    testsets: dict[str, tuple[np.ndarray, np.ndarray]],
    predictions: dict[str, dict[str, np.ndarray]],
    histories: dict[str, dict[str, Any]] | None = None,
    data: dict[str, Any] | None = None,
    network: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> RunDir:
    """Write the files of a run directory exactly as training would (through the schema types,
    so a fake that drifts from the schema fails here)."""
    rd = RunDir(root)
    rd.root.mkdir(parents=True, exist_ok=True)
    RunInfo.model_validate(info).write(rd.run_json)
    arrays = {}
    for name, (labels, patients) in testsets.items():
        arrays[key(name, "labels")] = labels.astype(np.float32)
        arrays[key(name, "patients")] = patients.astype(np.int64)
    write_arrays(rd.testsets, arrays)
    for method, arrs in predictions.items():
        write_arrays(rd.predictions(method), arrs)
    for method, history in (histories or {}).items():
        History.model_validate(history).write(rd.history(method))
    if data is not None:
        DataSummary.model_validate(data).write(rd.data_json)
    if network is not None:
        NetworkRecord.model_validate(network).write(rd.network_json)
    if config is not None:
        rd.config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return rd


def _labels(rng: np.random.Generator, n: int, prevalence: np.ndarray) -> np.ndarray:
    return (rng.random((n, NUM_LABELS)) < prevalence).astype(np.float32)


def _patients(rng: np.random.Generator, n_images: int, n_patients: int, first: int) -> np.ndarray:
    """Every patient gets at least one image; the rest are spread at random (sorted by patient)."""
    extra = rng.integers(0, n_patients, size=n_images - n_patients)
    return PATIENT_CODE_BASE + first + np.sort(np.r_[np.arange(n_patients), extra])


def _probs(rng: np.random.Generator, labels: np.ndarray, quality: float) -> np.ndarray:
    y = np.nan_to_num(labels, nan=0.0)
    logits = quality * (2.0 * y - 1.0) * 0.33 + rng.normal(0.0, 1.0, size=y.shape) - 1.0
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def make_fake_run(
    root: Path,
    *,
    seed: int = 0,
    methods: list[str] | None = None,
    sites: list[str] | None = None,
    n_global: int = 200,
    n_local: int = 40,
    with_global: bool = True,
) -> RunDir:
    """The standard fake run: 8 sites, ecl/gossip/fedavg + pooled, global and local test sets."""
    methods = list(METHODS if methods is None else methods)
    sites = list(SITES if sites is None else sites)
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.08, 0.35, NUM_LABELS)
    testsets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if with_global:
        labels = _labels(rng, n_global, prevalence)
        labels[:, HERNIA] = 0.0
        labels[rng.choice(n_global, size=6, replace=False), HERNIA] = 1.0
        testsets["global"] = (labels, _patients(rng, n_global, n_global * 2 // 5, 0))
    for i, site in enumerate(SITES):
        if site not in sites:
            continue
        labels = _labels(rng, n_local, prevalence * (0.6 + 0.1 * i))
        if site == "n2":
            labels[:, HERNIA] = 0.0
        if site == "n3":
            labels[:5, EDEMA] = np.nan
        testsets[f"local_{site}"] = (
            labels,
            _patients(rng, n_local, n_local // 2, 10_000 * (i + 1)),
        )

    predictions: dict[str, dict[str, np.ndarray]] = {}
    histories: dict[str, dict[str, Any]] = {}
    for method in methods:
        arrays: dict[str, np.ndarray] = {}
        shared = method in ("pooled", "fedavg")
        for i, site in enumerate(sites):
            site_quality = QUALITY.get(method, 1.0) * (1.0 if shared else 0.85 + 0.04 * i)
            model_rng = np.random.default_rng([seed, 0 if shared else i, len(method)])
            for name in ("global", f"local_{site}"):
                if name not in testsets:
                    continue
                arrays[key("final", site, name)] = _probs(
                    model_rng, testsets[name][0], site_quality
                )
                if name == "global" or not with_global:
                    for k in range(EVAL_POINTS):
                        q = site_quality * (k + 1) / EVAL_POINTS
                        arrays[key("curve", k, site, name)] = _probs(
                            model_rng, testsets[name][0], q
                        ).astype(np.float16)
        predictions[method] = arrays
        histories[method] = {
            "eval_points": [
                {
                    "k": k,
                    "local_steps": 100 * (k + 1),
                    "epochs": 0.5 * (k + 1),
                    "virtual_time": 110.0 * (k + 1),
                }
                for k in range(EVAL_POINTS)
            ],
            "loss": [
                {
                    "site": s,
                    "local_step": step,
                    "loss": float(
                        0.45 * np.exp(-step / 250) + 0.45 - 0.05 * QUALITY.get(method, 1)
                    ),
                }
                for s in sites
                for step in range(0, 500, 50)
            ],
            "events": [{"time": 250.0, "site": "n4", "kind": "edge_inactive", "peer": "n5"}],
        }
    info = {
        "seed": seed,
        "mode": "simulation" if len(sites) > 1 else "deployment",
        "methods": methods,
        "sites": sites,
        "started": "2025-01-02T03:04:05+00:00",
        "wall_seconds": {
            "total": 95.0 * len(methods),
            "per_method": {m: 90.0 + 5 * i for i, m in enumerate(methods)},
        },
        "versions": {"hospitalnet": "0.1.0", "python": "3.11.2", "torch": "2.14.1"},
        "device": "cpu",
        "command": f"hospitalnet simulate --out /home/alice/{CANARY_COMMAND}/run1",
    }
    return write_run_dir(
        root,
        info=info,
        testsets=testsets,
        predictions=predictions,
        histories=histories,
        data=_data_json(rng, sites, testsets, prevalence),
        network=_network_json(sites, methods),
        config=_config(seed, methods),
    )


def _data_json(rng, sites, testsets, prevalence) -> dict[str, Any]:
    per_site = {}
    for i, site in enumerate(sites):
        train = int(300 + 150 * ((i * 5) % 8))
        site_prev = np.clip(prevalence * (0.4 + 0.2 * i) * rng.uniform(0.5, 1.5, NUM_LABELS), 0, 1)
        local = testsets.get(f"local_{site}")
        per_site[site] = {
            "description": f"Hospital {site}: PNG export under /srv/{CANARY_DESCRIPTION}/images",
            "loader": "nih_png" if i % 2 == 0 else "dicom",
            "train_images": train,
            "test_images": 0 if local is None else int(local[0].shape[0]),
            "patients": train // 3,
            "prevalence": {name: float(p) for name, p in zip(LABELS, site_prev)},
            "jsd": float(0.02 + 0.03 * i),
            "views": {"PA": train * 2 // 3, "AP": train - train * 2 // 3},
        }
    total = sum(v["train_images"] for v in per_site.values())
    out: dict[str, Any] = {
        "labels": list(LABELS),
        "sites": per_site,
        "pooled": {
            "train_images": total,
            "prevalence": {name: float(p) for name, p in zip(LABELS, prevalence)},
        },
    }
    if "global" in testsets:
        labels, patients = testsets["global"]
        out["global_test"] = {
            "images": int(labels.shape[0]),
            "patients": int(np.unique(patients).size),
            "prevalence": {n: float(np.nanmean(labels[:, j])) for j, n in enumerate(LABELS)},
        }
    return out


def _edge(a: str, b: str, scale: int, inactive: bool = False) -> dict[str, Any]:
    return {
        "a": a,
        "b": b,
        "messages": {f"{a}->{b}": 60 * scale, f"{b}->{a}": 58 * scale},
        "bytes": {f"{a}->{b}": 60 * scale * 1_200_000, f"{b}->{a}": 58 * scale * 1_200_000},
        "dropped": 3 if inactive else 0,
        "stale": 2 * scale,
        "duplicates": 1,
        "rejected": 0,
        "inactive_events": 1 if inactive else 0,
        "active_at_end": not inactive,
    }


def _network_json(sites: list[str], methods: list[str]) -> dict[str, Any]:
    ring = (
        [[sites[i], sites[(i + 1) % len(sites)]] for i in range(len(sites))]
        if len(sites) > 2
        else []
    )
    chords = [[sites[i], sites[i + 4]] for i in range(0, 4, 2) if i + 4 < len(sites)]
    edges = ring + chords
    out: dict[str, Any] = {
        "topology": {"kind": "multiplex_ring", "nodes": sites, "edges": edges},
        "methods": {},
    }
    for method in methods:
        if method in ("ecl", "gossip"):
            out["methods"][method] = {
                "edges": [
                    _edge(
                        a, b, 1 + (i % 3), inactive=(method == "gossip" and (a, b) == ("n4", "n5"))
                    )
                    for i, (a, b) in enumerate(edges)
                ],
                "isolated_sites": [],
                "dead_sites": [],
            }
        elif method == "fedavg":
            out["methods"][method] = {
                "edges": [_edge(s, "server", 2) for s in sites],
                "isolated_sites": [],
                "dead_sites": [],
            }
    return out


def _config(seed: int, methods: list[str]) -> dict[str, Any]:
    return {
        "seed": seed,
        "methods": methods,
        "world": {
            "patients": 3000,
            "image_size": 128,
            "cache_dir": f"/data/{CANARY_CONFIG_PATH}/cache",
        },
        "partition": {"profile": "default", "skew": 1.0, "local_test_fraction": 0.2},
        "data": {"image_size": 64, "root": f"C:\\Users\\bob\\{CANARY_CONFIG_PATH}\\nih"},
        "model": {"name": "smallcnn", "width": 32, "groups": 8},
        "training": {"batch_size": 32, "local_steps": 500, "lr": 0.05, "eval_points": 5},
        "ecl": {"theta": 0.8, "eta": "auto"},
        "topology": {"kind": "multiplex_ring"},
        "network": {"exchange_every": 8, "drop_prob": 0.0},
    }
