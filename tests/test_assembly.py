"""hospitalnet.assembly: the one way every runner builds a site (no network, no training)."""

from __future__ import annotations

import pytest
import torch

from hospitalnet.algorithms import SERVER, make_algorithm
from hospitalnet.assembly import (
    W0_SEED,
    build_server,
    build_site,
    initial_model,
    site_context,
    site_rules,
)
from hospitalnet.config import ExperimentConfig, NetworkConfig, TrainingConfig
from hospitalnet.errors import ConfigError
from hospitalnet.models import build_model
from hospitalnet.objective import QuadraticObjective
from hospitalnet.plan import NetworkPlan
from hospitalnet.seeding import int_seed
from hospitalnet.topology import from_edges
from hospitalnet.transport.base import Transport

SITES = ("a", "b", "c", "d")
EDGES = from_edges(SITES, [("a", "b"), ("b", "c"), ("a", "c")]).edges  # d stands alone
SIZES = {"a": 10, "b": 30, "c": 20, "d": 40}


class Silent(Transport):
    def __init__(self, site: str) -> None:
        self.site = site

    def send(self, message):  # pragma: no cover - nothing is sent in these tests
        raise AssertionError("no message expected")

    def poll(self):
        return []

    def stats(self):
        return {}


def _plan(sizes: dict[str, int]) -> NetworkPlan:
    return NetworkPlan(SITES, EDGES, {}, dict(sizes))


def test_assembly_loss_weights_are_the_pooled_share_of_each_connected_component():
    # prepare: a triangle a-b-c (60 images) and d alone, sample weighting
    cfg, ecl = ExperimentConfig(), make_algorithm("ecl")
    w0 = torch.zeros(3)

    # execute
    ctx = {s: site_context(s, _plan(SIZES), cfg, ecl, w0, SIZES[s]) for s in SITES}

    # assert: |C| n_i / sum_C n_k by hand; a site alone keeps weight 1
    assert ctx["a"].weight == 3 * 10 / 60 and ctx["b"].weight == 3 * 30 / 60
    assert ctx["c"].weight == 3 * 20 / 60 and ctx["d"].weight == 1.0
    assert ctx["a"].neighbours == ("b", "c") and ctx["d"].neighbours == ()
    assert ctx["b"].signs == {"a": -1, "c": 1}  # site order a, b, c, d
    assert ctx["a"].num_samples == 10 and ctx["a"].exchange_every == cfg.network.exchange_every


def test_assembly_a_plan_without_sizes_is_an_error_naming_the_missing_key():
    # prepare: c's size is missing from the plan; a's own size comes from its data
    plan = _plan({"a": 10, "b": 30, "d": 40})
    cfg, w0 = ExperimentConfig(), torch.zeros(3)

    # execute / assert: sample weighting refuses, naming the plan key, never falls back
    with pytest.raises(ConfigError, match=r"network plan: sites\.c\.train_samples: missing"):
        site_context("a", plan, cfg, make_algorithm("ecl"), w0, 10)
    with pytest.raises(ConfigError, match=r"sites\.c\.train_samples"):
        site_context("a", plan, cfg, make_algorithm("gossip"), w0, 10)
    # ... the site's own size is its data's: c itself needs no plan entry for itself
    assert site_context("c", plan, cfg, make_algorithm("ecl"), w0, 20).weight == 3 * 20 / 60
    # ... and what needs no sizes does not ask for them
    uniform = make_algorithm("ecl", training=TrainingConfig(site_weighting="uniform"))
    assert site_context("a", _plan({}), cfg, uniform, w0, 10).weight == 1.0
    assert site_context("d", _plan({}), cfg, make_algorithm("ecl"), w0, 40).weight == 1.0
    fedavg = site_context("a", _plan({}), cfg, make_algorithm("fedavg"), w0, 10)
    assert fedavg.neighbours == (SERVER,) and fedavg.weight == 1.0
    assert site_context("a", _plan({}), cfg, make_algorithm("local"), w0, 10).neighbours == ()
    with pytest.raises(ConfigError, match=r"sites\.a\.train_samples: the server weights"):
        build_server(_plan({}), Silent(SERVER), lambda: 0.0, site_rules(cfg, "steps"), w0=w0)
    with pytest.raises(ConfigError, match="site 'z' is not in it"):
        site_context("z", _plan(SIZES), cfg, make_algorithm("ecl"), w0, 1)


def test_assembly_build_site_takes_steps_schedule_and_rules_from_the_config():
    # prepare: a cosine schedule over 40 steps, D = 7 steps / 2.5 s
    cfg = ExperimentConfig(
        training=TrainingConfig(lr=0.3, local_steps=40, lr_schedule="cosine"),
        network=NetworkConfig(inactive_after=7, exchange_every=4),
    )
    cfg = cfg.model_copy(update={"deploy": cfg.deploy.model_copy(update={"inactive_after_s": 2.5})})
    objective = QuadraticObjective(torch.ones(3), num_samples=SIZES["b"])

    # execute
    node = build_site(
        "b", _plan(SIZES), cfg, make_algorithm("ecl"), objective, Silent("b"), lambda: 0.0,
        site_rules(cfg, "steps"), w0=torch.zeros(3),
    )  # fmt: skip

    # assert
    assert node.steps == 40 and node.lr_schedule is not None
    assert node.lr_schedule(0) == pytest.approx(0.3) and node.lr_schedule(40) == pytest.approx(
        0.3 * cfg.training.lr_final_fraction
    )
    assert node.rules.inactive_after == 7.0
    assert site_rules(cfg, "seconds").inactive_after == 2.5
    assert node.schedule.every == 4 and set(node.schedule.offsets) == {"a", "c"}
    assert node.context.weight == 3 * 30 / 60


def test_assembly_initial_model_is_the_seeded_w0_every_runner_shares():
    cfg = ExperimentConfig()
    a, b = initial_model(cfg), initial_model(cfg)
    reference = build_model(cfg.model, int_seed(cfg.seed, *W0_SEED))
    assert torch.equal(a.flat, b.flat)
    assert torch.equal(a.flat, torch.cat([p.detach().reshape(-1) for p in reference.parameters()]))
    assert not torch.equal(a.flat, initial_model(cfg.model_copy(update={"seed": 1})).flat)


def test_assembly_a_plan_whose_size_for_the_site_is_stale_is_refused():
    # the plan says b has 30 images, b's data have 31: every site would weight differently
    with pytest.raises(ConfigError, match=r"sites\.b\.train_samples: 30, but the site has 31"):
        site_context(
            "b", _plan(SIZES), ExperimentConfig(), make_algorithm("ecl"), torch.zeros(3), 31
        )
