"""``training.threads: auto`` changes the thread count while a run trains; the result must not
change by a bit (hospitalnet.threads, hospitalnet.models.invariant)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hospitalnet.assembly import initial_model, thread_governor
from hospitalnet.config import ExperimentConfig, validate
from hospitalnet.experiment import run_experiment, train_method
from hospitalnet.rundir_schema import RunInfo
from hospitalnet.threads import ThreadGovernor
from hospitalnet.world import ensure_world, load_world

SMALL = {
    "methods": ["ecl", "pooled"],
    "world": {"patients": 400, "image_size": 32},
    "data": {"image_size": 16},
    "model": {"width": 4, "groups": 2},
    "training": {"local_steps": 12, "batch_size": 16, "eval_points": 2},
    "network": {"exchange_every": 2},
}


class FlippingLoad:
    """Every other window both cores busy with other work, then none: the governor switches
    between two threads and one at every window."""

    def __init__(self) -> None:
        self.windows = 0
        self.machine = 0.0

    def machine_busy(self) -> float:
        self.windows += 1
        self.machine += 4.0 if self.windows % 2 else 0.0
        return self.machine

    def own_busy(self) -> float:
        return 0.0


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSPITALNET_WORLD", str(tmp_path / "world"))
    cfg = validate(ExperimentConfig, SMALL, source="test")
    world = load_world(cfg, ensure_world(cfg, progress=False), progress=False)
    return cfg, world


def test_switching_threads_at_every_step_gives_the_one_thread_result_bit_for_bit(small):
    cfg, world = small
    flat = initial_model(cfg)
    w0 = flat.flat.detach().clone()
    sizes = [len(t) for t in world.train.values()]
    # the premise: the start-up check finds this model invariant at these minibatches
    assert not thread_governor(cfg, flat, sizes, "auto", pooled=True, max_threads=2).fixed
    for method in SMALL["methods"]:
        one = ThreadGovernor(1, fixed=True)
        _, a, _ = train_method(method, cfg, world, flat, w0, progress=False, threads=one)
        switching = ThreadGovernor(
            2, interval_s=0.0, up_windows=1, meter=FlippingLoad(), clock=Ticks()
        )
        _, b, _ = train_method(method, cfg, world, flat, w0, progress=False, threads=switching)
        assert switching.switches >= 10, method
        assert set(switching.summary()) == {"1", "2"}
        assert a["predictions"].keys() == b["predictions"].keys()
        for key in a["predictions"]:
            assert np.array_equal(a["predictions"][key], b["predictions"][key]), (method, key)


def test_a_run_records_the_seconds_it_spent_at_each_thread_count(small, tmp_path):
    cfg, _ = small
    cfg = cfg.model_copy(update={"methods": ["local"]})
    run = run_experiment(cfg, tmp_path / "run", progress=False)
    versions = RunInfo.read(run.run_json).versions
    assert versions.torch_thread_seconds
    assert versions.torch_threads == max(int(k) for k in versions.torch_thread_seconds)
