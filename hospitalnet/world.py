"""The built-in synthetic eight-hospital world: generated once, cached, reused.

Layout (``HOSPITALNET_WORLD``, default ``~/.cache/hospitalnet/world`` for the default settings;
other settings get a sibling folder named by their hash)::

    WORLD/nih/                 the pooled synthetic ChestX-ray14 set (NIH layout)
    WORLD/sites/<site>/        each hospital's manifest and image list (``hospitalnet partition``)
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
from pathlib import Path

from hospitalnet.config import ExperimentConfig, PartitionConfig, WorldConfig
from hospitalnet.data.partition import partition_dataset
from hospitalnet.data.synthetic import write_world

log = logging.getLogger(__name__)


def _settings(cfg: ExperimentConfig) -> dict:
    return {
        "world": cfg.world.model_dump(exclude={"cache_dir"}),
        "partition": cfg.partition.model_dump(),
        "seed": cfg.seed,
        "version": 1,
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
    """Return the world folder for ``cfg``, generating it first if needed."""
    root = world_dir(cfg)
    ready = root / "READY"
    if ready.is_file() and json.loads(ready.read_text()) == _settings(cfg):
        return root
    log.info("generating the synthetic world (once; cached for later runs)")
    shutil.rmtree(root / "nih", ignore_errors=True)
    shutil.rmtree(root / "sites", ignore_errors=True)
    write_world(
        root / "nih",
        patients=cfg.world.patients,
        size=cfg.world.image_size,
        seed=cfg.seed,
        force=True,
        progress=progress,
    )
    partition_dataset(
        root / "nih",
        root,
        profile=cfg.partition.profile,
        skew=cfg.partition.skew,
        seed=cfg.seed,
        local_test_fraction=cfg.partition.local_test_fraction,
    )
    ready.write_text(json.dumps(_settings(cfg)))
    return root
