import doctest

import pytest
import torch

import hospitalnet.api
from hospitalnet.api import train_network, train_pooled
from hospitalnet.config import ExperimentConfig
from hospitalnet.errors import ConfigError
from hospitalnet.objective import QuadraticObjective


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: intra-op threads only add contention (10x+ on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sites():
    return {f"n{k}": QuadraticObjective(torch.full((3,), float(k)), 10 * k) for k in range(1, 5)}


def test_docstring_example_runs():
    assert doctest.testmod(hospitalnet.api).failed == 0


def test_shortcuts_override_the_config():
    cfg = ExperimentConfig()
    a = train_network(
        sites(), topology="ring", steps=40, lr=0.2, exchange_every=4, theta=0.5, config=cfg
    )
    b = train_network(sites(), topology="ring", steps=40, config=ExperimentConfig.model_validate(
        {"training": {"lr": 0.2}, "network": {"exchange_every": 4}, "ecl": {"theta": 0.5}}
    ))  # fmt: skip
    assert all(torch.equal(a.params[s], b.params[s]) for s in a.params)
    assert a.messages_sent == 4 * 2 * 10  # ring of 4 sites, K = 4, 40 steps


def test_bad_shortcut_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train_network\(ecl\): theta"):
        train_network(sites(), steps=5, theta=1.5)
    with pytest.raises(ConfigError, match=r"topology\): kind"):
        train_network(sites(), topology="star", steps=5)


def test_every_method_runs_and_pooled_has_one_site():
    for method in (
        "ecl",
        "ecl-pdmm",
        "ecl-admm",
        "ecl-isvr",
        "gossip",
        "fedavg",
        "fedprox",
        "local",
    ):
        r = train_network(sites(), method=method, steps=16, lr=0.1)
        assert set(r.params) == set(sites()) and r.method == method
    pooled = train_pooled(QuadraticObjective(torch.ones(3), 100), steps=10, lr=0.1)
    assert set(pooled.params) == {"pooled"} and pooled.steps == {"pooled": 10}
