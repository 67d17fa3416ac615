import math

import pytest

from hospitalnet.config import TrainingConfig
from hospitalnet.training.schedule import lr_schedule


def test_constant_is_no_schedule():
    assert lr_schedule(TrainingConfig(lr=0.2), 100) is None


def test_cosine_runs_from_lr_to_the_floor_through_the_midpoint():
    cfg = TrainingConfig(lr=0.2, lr_schedule="cosine", lr_final_fraction=0.1)
    f = lr_schedule(cfg, 100)
    assert f(0) == pytest.approx(0.2)
    assert f(50) == pytest.approx(0.02 + 0.5 * 0.18)  # cos(pi/2) = 0: halfway between
    assert f(100) == pytest.approx(0.02)
    assert f(250) == pytest.approx(0.02)  # stays at the floor past the end
    assert f(25) == pytest.approx(0.02 + 0.5 * 0.18 * (1 + math.cos(math.pi / 4)))
    values = [f(k) for k in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
