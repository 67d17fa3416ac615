"""The world a run trains on: the built-in synthetic eight hospitals (generated once, cached,
reused) or a partitioned real data set, and its decoded tensors (:func:`load_world`).

Layout (``HOSPITALNET_WORLD``, default ``~/.cache/hospitalnet/world`` for the default settings;
other settings get a sibling folder named by their hash)::

    WORLD/nih/                 the pooled synthetic ChestX-ray14 set (NIH layout)
    WORLD/sites/<site>/        each hospital's manifest and image list (``hospitalnet partition``);
                               the sites of STORAGE keep their images in their own format there
                               (DICOM, or PNG + CSV manifest), as real hospitals do
    WORLD/partition.json       the skew summary
    WORLD/cache/               decoded tensors per site and image size
    WORLD/READY                written last: the settings the world was made with
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from hospitalnet.config import ExperimentConfig, PartitionConfig, WorldConfig
from hospitalnet.data.dataset import SiteTensors, load_site
from hospitalnet.data.export import export_site_as_csv, export_site_as_dicom
from hospitalnet.data.manifest import expand_vars, load_manifest
from hospitalnet.data.nih import NihLoader
from hospitalnet.data.partition import partition_dataset
from hospitalnet.data.synthetic import write_world
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS
from hospitalnet.rundir import RunDir, write_arrays
from hospitalnet.rundir_schema import (
    GLOBAL,
    DataSummary,
    GlobalTestData,
    PooledData,
    SiteData,
    label_key,
    local_testset,
    patient_key,
)

log = logging.getLogger(__name__)


# How some hospitals of the default world store their images, so that the default simulation
# really runs site-specific loaders: a DICOM archive written as DX MONOCHROME2, a CR archive in
# MONOCHROME1 with rescale slope/intercept and a VOI window, and a PNG tree with a CSV manifest.
STORAGE: dict[str, str] = {"n4": "dicom-mono2", "n6": "dicom-mono1-voi", "n7": "csv"}


def _store_site(root: Path, site: str, storage: str, seed: int) -> None:
    """Re-write ``site``'s images in ``storage`` format and point its manifest at them."""
    manifest_path = root / "sites" / site / f"{site}.yaml"
    manifest, data_root = load_manifest(manifest_path)
    loader = NihLoader(str(data_root), manifest.data.options, source=str(manifest_path))
    index = loader.index()
    out = root / "sites" / site / "archive"
    shutil.rmtree(out, ignore_errors=True)
    if storage == "csv":
        export_site_as_csv(index, loader.read_image, out, seed=seed)
        data = {"loader": "csv", "root": str(out), "options": {"manifest": "manifest.csv"}}
    else:
        style = "mono2" if storage == "dicom-mono2" else "mono1_voi"
        export_site_as_dicom(index, loader.read_image, out, style=style, seed=seed)
        data = {"loader": "dicom", "root": str(out), "options": {"labels_csv": "labels.csv"}}
    text = manifest.model_dump(mode="json")
    text["data"] = data
    manifest_path.write_text(yaml.safe_dump(text, sort_keys=False))


def world_seed(cfg: ExperimentConfig) -> int:
    """The seed the world is made with: ``world.seed``, or the run's seed when it is None."""
    return cfg.seed if cfg.world.seed is None else cfg.world.seed


def _settings(cfg: ExperimentConfig) -> dict:
    # world.seed enters as "seed" (the world's seed), so that world.seed None keeps the folder
    # names and READY files of worlds made before it existed
    return {
        "world": cfg.world.model_dump(exclude={"cache_dir", "root", "seed"}),
        "partition": cfg.partition.model_dump(),
        "seed": world_seed(cfg),
        "version": 4,  # bump when the generator or the partition changes
    }


def world_dir(cfg: ExperimentConfig) -> Path:
    base = Path(
        os.path.expanduser(
            cfg.world.cache_dir
            or os.environ.get("HOSPITALNET_WORLD")
            or "~/.cache/hospitalnet/world"
        )
    )
    default = ExperimentConfig(world=WorldConfig(), partition=PartitionConfig(), seed=0)
    if _settings(cfg) == _settings(default):
        return base
    digest = hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return base.with_name(f"{base.name}-{digest}")


def ensure_world(cfg: ExperimentConfig, *, progress: bool = True) -> Path:
    """Return the world folder for ``cfg``, generating it first if needed.

    With ``world.root`` set (a real data set partitioned by ``hospitalnet partition``), that
    folder is returned as it is: nothing is generated.
    """
    if cfg.world.root:
        text = expand_vars(cfg.world.root, source="world.root")
        given = Path(os.path.expanduser(text))
        if not (given / "partition.json").is_file():
            raise ConfigError(
                f"world.root: {given} has no partition.json (run `hospitalnet partition "
                f"--data ... --out {given}` first)"
            )
        return given
    root = world_dir(cfg)
    seed = world_seed(cfg)
    ready = root / "READY"
    if _ready_settings(ready) == _settings(cfg):
        return root
    log.info("generating the synthetic world (once; cached for later runs)")
    shutil.rmtree(root / "nih", ignore_errors=True)
    shutil.rmtree(root / "sites", ignore_errors=True)
    write_world(
        root / "nih",
        patients=cfg.world.patients,
        size=cfg.world.image_size,
        seed=seed,
        force=True,
        progress=progress,
    )
    partition_dataset(
        root / "nih",
        root,
        profile=cfg.partition.profile,
        skew=cfg.partition.skew,
        seed=seed,
        local_test_fraction=cfg.partition.local_test_fraction,
    )
    for site, storage in STORAGE.items():
        if (root / "sites" / site).is_dir():
            _store_site(root, site, storage, seed)
    ready.write_text(json.dumps(_settings(cfg)))
    return root


def _ready_settings(ready: Path) -> object:
    """The settings a finished world recorded; None when READY is absent or damaged (the world
    is then generated again rather than trusted)."""
    try:
        return json.loads(ready.read_bytes())
    except (OSError, ValueError):  # ValueError covers bad JSON and bad UTF-8
        return None


def read_partition(root: Path) -> dict:
    """``root/partition.json`` (written by ``hospitalnet partition``), checked for the keys the
    run reads; a damaged file is one :class:`DataError` line naming it."""
    path = root / "partition.json"
    try:
        part = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run `hospitalnet partition` first)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    except ValueError:
        raise DataError(f"{path}: not valid JSON (truncated or damaged); partition again") from None
    if not isinstance(part, dict):
        raise DataError(f"{path}: expected a JSON object")
    for name in ("sites", "pooled", "global_test"):
        if not isinstance(part.get(name), dict):
            raise DataError(f"{path}: {name}: missing or not an object; partition again")
    return part


# ---- the decoded world ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One split of a site's decoded images: what training and evaluation need."""

    images: torch.Tensor  # uint8 [N, 1, S, S]
    labels: torch.Tensor  # float32 [N, 14], NaN = unknown
    patients: torch.Tensor  # int64 [N] pseudonymous codes

    @classmethod
    def of(cls, tensors: SiteTensors, split: str) -> Split:
        idx = torch.from_numpy(tensors.indices(split))
        return cls(tensors.images[idx], tensors.labels[idx], tensors.patients[idx])

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class World:
    """The decoded data of a run: each site's train / local-test tensors and the global test set."""

    train: dict[str, Split]
    local_test: dict[str, Split]
    global_test: Split
    loaders: dict[str, str]
    descriptions: dict[str, str]
    partition: dict
    # site -> (skip reasons, conversion notes) from loading its images (SiteTensors)
    load_counts: dict[str, tuple[dict[str, int], dict[str, int]]] = field(default_factory=dict)

    def testset_arrays(self) -> dict[str, np.ndarray]:
        """``testsets.npz``: labels and patient codes of the global and every local test set."""
        sets = {
            GLOBAL: self.global_test,
            **{local_testset(s): t for s, t in self.local_test.items()},
        }
        arrays = {}
        for name, split in sets.items():
            arrays[label_key(name)] = split.labels.numpy()
            arrays[patient_key(name)] = split.patients.numpy()
        return arrays

    def data_summary(self) -> DataSummary:
        """``data.json``: sizes, prevalence, JSD and views per site, from ``partition.json``."""
        part = self.partition
        keys = ("description", "patients", "train_images", "test_images", "prevalence", "jsd")
        sites = {
            site: SiteData(
                **{k: s[k] for k in keys},
                views=s["views"],
                loader=self.loaders[site],
                skipped=self.load_counts.get(site, ({}, {}))[0],
                converted=self.load_counts.get(site, ({}, {}))[1],
            )
            for site, s in part["sites"].items()
        }
        return DataSummary(
            labels=list(LABELS),
            sites=sites,
            pooled=PooledData(
                train_images=part["pooled"]["images"], prevalence=part["pooled"]["prevalence"]
            ),
            global_test=GlobalTestData(
                **{k: part["global_test"][k] for k in ("images", "patients", "prevalence")}
            ),
        )

    def pooled_train(self) -> Split:
        """Every site's training images in one set (the pooled reference; no patient codes)."""
        parts = list(self.train.values())
        return Split(
            torch.cat([p.images for p in parts]),
            torch.cat([p.labels for p in parts]),
            torch.zeros(0, dtype=torch.int64),
        )


def load_world(cfg: ExperimentConfig, root: Path, *, progress: bool) -> World:
    """Decode every site of the world at ``root`` (cached under ``root/cache``)."""
    partition = read_partition(root)
    cache = root / "cache"
    train, local, loaders, descriptions = {}, {}, {}, {}
    counts: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for site in tqdm(
        list(partition["sites"]), desc="load sites", unit="site", disable=not progress
    ):
        manifest_path = root / "sites" / site / f"{site}.yaml"
        manifest, _ = load_manifest(manifest_path)
        tensors = load_site(manifest_path, cfg.data.image_size, cache, progress=progress)
        train[site], local[site] = Split.of(tensors, "train"), Split.of(tensors, "test")
        loaders[site], descriptions[site] = manifest.data.loader, manifest.description
        counts[site] = (dict(tensors.skip_reasons), dict(tensors.notes))
        if len(train[site]) == 0:
            raise DataError(f"site {site}: no training images; it cannot take part")
    global_test = load_site(
        root / "sites" / GLOBAL / f"{GLOBAL}.yaml", cfg.data.image_size, cache, progress=progress
    )
    return World(
        train, local, Split.of(global_test, "test"), loaders, descriptions, partition, counts
    )


def write_testsets_and_data(run: RunDir, world: World) -> None:
    """A run's ``testsets.npz`` and ``data.json`` (the simulation and the process launcher)."""
    write_arrays(run.testsets, world.testset_arrays())
    world.data_summary().write(run.data_json)
