"""A tiny synthetic world (made once per session) and helpers to run site processes on it.

Every process is a ``hospitalnet site run`` child on 127.0.0.1, ended by its own pid.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hospitalnet.config import (
    DataConfig,
    DeployConfig,
    ExperimentConfig,
    ModelConfig,
    NetworkConfig,
    TrainingConfig,
    WorldConfig,
)
from hospitalnet.deploy.launcher import NetworkLayout, prepare_network, stop_node
from hospitalnet.plan import NetworkPlan, write_plan
from hospitalnet.topology import from_edges


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-world") / "world"


def tiny_config(world_cache: Path, patients: int = 300, **deploy: float) -> ExperimentConfig:
    """configs/quick.yaml-sized settings, slowed to 20 steps/s so faults land mid-training
    (``patients``: a larger world gives a larger shared test set)."""
    settings = {
        "inactive_after_s": 2.0,
        "heartbeat_interval_s": 0.3,
        "call_timeout_s": 3.0,
        "startup_wait_s": 90.0,
        "linger_max_s": 20.0,
        "linger_grace_s": 1.0,
        "checkpoint_every": 20,
        "step_interval_s": 0.05,
        "max_wall_s": 240.0,
    }
    settings.update(deploy)
    steps = int(settings.pop("local_steps", 120))
    return ExperimentConfig(
        seed=0,
        methods=["ecl"],
        world=WorldConfig(patients=patients, image_size=48, cache_dir=str(world_cache)),
        data=DataConfig(image_size=32),
        model=ModelConfig(width=8),
        training=TrainingConfig(local_steps=steps, batch_size=16, eval_points=2),
        network=NetworkConfig(exchange_every=4),
        deploy=DeployConfig(**settings),
    )


def sub_network(layout: NetworkLayout, sites: list[str], edges: list[tuple[str, str]]):
    """The same run folder, PKI and data, but only ``sites`` joined by ``edges``."""
    plan = NetworkPlan(
        sites=tuple(sites),
        edges=from_edges(sites, edges).edges,
        addresses={s: layout.plan.addresses[s] for s in sites},
        train_samples={s: layout.plan.train_samples[s] for s in sites},
    )
    path = layout.root / f"network_plan_{'_'.join(sites)}.json"
    write_plan(path, plan)
    return dataclasses.replace(layout, sites=tuple(sites), plan=plan, plan_path=path)


@pytest.fixture
def network(world_cache: Path, tmp_path: Path) -> Callable[..., tuple[NetworkLayout, object]]:
    def make(patients: int = 300, **deploy: float):
        cfg = tiny_config(world_cache, patients, **deploy)
        layout, world = prepare_network(cfg, tmp_path / "run")
        return cfg, layout, world

    return make


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Children started by a test; whatever is still running at the end is stopped by pid."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            stop_node(proc, grace_s=5.0)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoints(node_dir: Path) -> list[Path]:
    return sorted((node_dir / "checkpoints").glob("ckpt-*.json"))


def macro_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean AUROC over the labels with both classes among the known values (sklearn)."""
    values = []
    for k in range(labels.shape[1]):
        known = ~np.isnan(labels[:, k])
        y = labels[known, k]
        if 0 < y.sum() < len(y):
            values.append(roc_auc_score(y, probs[known, k]))
    return float(np.mean(values))


def last_checkpoint(node_dir: Path) -> int:
    """Index of the newest checkpoint written (older ones are pruned: keep = 3)."""
    return max((int(p.stem.removeprefix("ckpt-")) for p in checkpoints(node_dir)), default=0)
