"""The seeded discrete-event simulation: determinism, injected faults, counters, callbacks."""

import math

import pytest
import torch

from hospitalnet.config import NetworkConfig, TrainingConfig
from hospitalnet.errors import ConfigError
from hospitalnet.objective import QuadraticObjective
from hospitalnet.seeding import torch_generator
from hospitalnet.simulation import (
    Faults,
    LinkFault,
    NetworkSplit,
    SiteOutage,
    run_network,
    run_pooled,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: intra-op threads only add contention (10x+ on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SITES = [f"n{k}" for k in range(1, 9)]
SIZES = [10, 20, 30, 40, 50, 60, 70, 80]
DIM = 4
TRAIN = TrainingConfig(lr=0.1, weight_decay=0.0)


class Flaky(QuadraticObjective):
    """NaN gradient on the listed calls."""

    def __init__(self, centre, n, bad_calls):
        super().__init__(centre, n)
        self.bad_calls, self.calls = set(bad_calls), 0

    def loss_and_grad(self, w):
        self.calls += 1
        loss, grad = super().loss_and_grad(w)
        if self.calls in self.bad_calls:
            grad.fill_(math.nan)
        return loss, grad


def centres():
    return torch.randn(8, DIM, generator=torch.Generator().manual_seed(0))


def sites(noise=0.0, seed=0, flaky=None):
    c = centres()
    out = {}
    for k, s in enumerate(SITES):
        if flaky and s in flaky:
            out[s] = Flaky(c[k], SIZES[k], flaky[s])
        else:
            out[s] = QuadraticObjective(
                c[k], SIZES[k], noise=noise, generator=torch_generator(seed, "noise", s)
            )
    return out


def optimum(members=SITES):
    idx = [SITES.index(s) for s in members]
    p = torch.tensor([SIZES[k] for k in idx], dtype=torch.float64)
    return (p[:, None] * centres()[idx].double()).sum(0) / p.sum()


def error(result, members=SITES):
    target = optimum(members)
    return max(float((result.params[s].double() - target).abs().max()) for s in members)


def run(method="ecl", steps=600, seed=3, objectives=None, network=None, **kw):
    return run_network(
        method, objectives or sites(noise=0.1), "multiplex_ring", steps, seed,
        training=TRAIN, network=network or NetworkConfig(), **kw,
    )  # fmt: skip


def identical(a, b):
    return all(torch.equal(a.params[s], b.params[s]) for s in SITES) and a.losses == b.losses


def kinds(result, site=None):
    return [(e.site, e.kind, e.peer) for e in result.events if site in (None, e.site)]


# ---- determinism ------------------------------------------------------------------------------
def test_same_seed_is_bit_identical_and_another_seed_differs():
    net = NetworkConfig(drop_prob=0.1, site_speed={"n3": 0.7})
    a, b = run(network=net), run(network=net)
    assert identical(a, b)
    assert a.edge_stats == b.edge_stats and a.events == b.events
    assert a.virtual_time == b.virtual_time
    c = run(network=net, seed=4)
    assert not identical(c, a)


def test_golden_value_pins_the_whole_pipeline():
    result = run(steps=200, network=NetworkConfig(drop_prob=0.1))
    # recorded from this implementation; any change to arithmetic, scheduling or seeding shows here
    # (re-recorded for the two-way ecl with its dual warm-up; the PDMM ecl gave 0.7091666907072067)
    assert float(result.params["n1"].double().sum()) == pytest.approx(0.6941540986299515, abs=1e-9)


# ---- duplicated, reordered, stale messages ----------------------------------------------------
def all_links(**fault):
    pairs = [(a, b) for a in SITES for b in SITES if a != b]
    return tuple(LinkFault(a, b, **fault) for a, b in pairs)


def test_duplicated_and_reordered_delivery_gives_the_in_order_result():
    plain = run()
    messy = run(faults=Faults(links=all_links(duplicate_prob=1.0), shuffle_delivery=True))
    assert identical(plain, messy)
    dups = sum(s.duplicates for s in messy.edge_stats.values())
    delivered = sum(s.messages_delivered for s in plain.edge_stats.values())
    assert dups == delivered  # every copy was recognised and ignored


def test_overtaken_messages_are_ignored_and_training_still_converges():
    result = run(
        objectives=sites(),
        steps=3000,  # lost and overtaken answers perturb the mean; it decays
        faults=Faults(links=all_links(reorder_jitter=12.0)),
    )
    overtaken = sum(s.duplicates for s in result.edge_stats.values())
    assert overtaken > 50
    assert error(result) < 1e-6


def test_messages_held_back_longer_than_the_staleness_bound_are_dropped():
    net = NetworkConfig(staleness_bound=20, inactive_after=500)
    late = LinkFault("n1", "n2", start=100.0, end=300.0, extra_delay=40.0)
    result = run(objectives=sites(), steps=1500, network=net, faults=Faults(links=(late,)))
    assert result.edge_stats[("n1", "n2")].stale >= 1
    assert sum(s.stale for k, s in result.edge_stats.items() if k != ("n1", "n2")) == 0
    assert error(result) < 1e-6


def test_a_slow_site_is_not_treated_as_stale_and_catches_up_with_the_others():
    net = NetworkConfig(site_speed={"n4": 0.3})
    result = run(objectives=sites(), steps=2400, network=net)
    assert sum(s.stale for s in result.edge_stats.values()) == 0
    assert result.finish_time["n4"] > 3 * result.finish_time["n1"]
    # the others finished long before; they keep exchanging duals (linger) so n4 is not alone
    assert error(result) < 1e-6


# ---- outages and network splits -------------------------------------------------------------------
def test_killed_then_restarted_site_edges_go_inactive_and_come_back():
    net = NetworkConfig(inactive_after=40)
    outage = SiteOutage("n3", start=200.0, end=400.0, kind="kill")
    result = run(objectives=sites(), steps=1500, network=net, faults=Faults(outages=(outage,)))
    events = kinds(result)
    for nb in ("n1", "n2", "n4", "n5"):
        assert (nb, "edge_inactive", "n3") in events and (nb, "edge_active", "n3") in events
    assert ("n3", "killed", None) in events and ("n3", "restarted", None) in events
    assert result.steps["n3"] == 1500 and error(result) < 1e-6  # n3 ends last, not alone


def test_killed_site_the_others_finish_and_report_it_inactive():
    net = NetworkConfig(inactive_after=40)
    outage = SiteOutage("n3", start=200.0)
    result = run(steps=600, network=net, faults=Faults(outages=(outage,)))
    assert result.steps["n3"] < 250
    assert all(result.steps[s] == 600 for s in SITES if s != "n3")
    for nb in ("n1", "n2", "n4", "n5"):
        assert (nb, "edge_inactive", "n3") in kinds(result)


def test_site_whose_neighbours_all_die_trains_alone_and_reports_isolation():
    outages = tuple(SiteOutage(s, start=100.0) for s in ("n2", "n3", "n7", "n8"))
    result = run(
        objectives=sites(), steps=1500, network=NetworkConfig(inactive_after=30),
        faults=Faults(outages=outages),
    )  # fmt: skip
    assert "n1" in result.isolated and ("n1", "isolated", None) in kinds(result)
    assert result.steps["n1"] == 1500
    # alone, n1 minimises its own loss
    assert float((result.params["n1"] - centres()[0]).abs().max()) < 1e-5


def test_partition_then_heal_reconnects_and_converges():
    halves = (frozenset(SITES[:4]), frozenset(SITES[4:]))
    split = NetworkSplit(groups=halves, start=100.0, end=500.0)
    result = run(
        objectives=sites(), steps=2000, network=NetworkConfig(inactive_after=30),
        faults=Faults(splits=(split,)),
    )  # fmt: skip
    events = kinds(result)
    assert ("n1", "edge_inactive", "n8") in events and ("n1", "edge_active", "n8") in events
    assert ("n1", "edge_inactive", "n2") not in events
    assert error(result) < 1e-6


def test_frozen_site_resumes_and_catches_up():
    freeze = SiteOutage("n5", start=100.0, end=400.0, kind="freeze")
    result = run(
        objectives=sites(), steps=1500, network=NetworkConfig(inactive_after=50),
        faults=Faults(outages=(freeze,)),
    )  # fmt: skip
    assert ("n4", "edge_inactive", "n5") in kinds(result)
    assert error(result) < 1e-6


# ---- numbers ----------------------------------------------------------------------------------
def test_nan_gradients_are_rolled_back_and_nothing_nonfinite_is_sent():
    result = run(objectives=sites(flaky={"n2": {5, 6, 50}}), steps=400)
    assert result.nonfinite_steps["n2"] == 3
    assert result.steps["n2"] == 400 and not result.failed
    assert all(s.rejected == {} for s in result.edge_stats.values())
    assert all(torch.isfinite(w).all() for w in result.params.values())


def test_a_site_that_keeps_failing_stops_and_the_others_continue():
    result = run(objectives=sites(flaky={"n6": range(20, 10_000)}), steps=300)
    assert set(result.failed) == {"n6"} and "site n6" in result.failed["n6"]
    assert ("n6", "failed", None) in kinds(result)
    assert all(result.steps[s] == 300 for s in SITES if s != "n6")


# ---- baselines through the same loop ----------------------------------------------------------
def test_pooled_is_bit_identical_to_a_plain_sgd_loop():
    objective = QuadraticObjective(centres()[0], 5, noise=0.5, generator=torch_generator(1, "p"))
    result = run_pooled(objective, 300, seed=0, training=TrainingConfig(lr=0.1, weight_decay=0.0))

    plain = QuadraticObjective(centres()[0], 5, noise=0.5, generator=torch_generator(1, "p"))
    w = plain.init_params()
    for _ in range(300):
        _, grad = plain.loss_and_grad(w)
        w.add_(grad, alpha=-0.1)
    assert torch.equal(result.params["pooled"], w)
    assert result.messages_sent == 0


def test_fedavg_server_drops_a_dead_site_and_the_rest_finish():
    outage = SiteOutage("n2", start=150.0)
    result = run(
        "fedavg", objectives=sites(), steps=800, network=NetworkConfig(inactive_after=30),
        faults=Faults(outages=(outage,)),
    )  # fmt: skip
    assert ("server", "edge_inactive", "n2") in kinds(result)
    assert all(result.steps[s] == 800 for s in SITES if s != "n2")
    survivors = [s for s in SITES if s != "n2"]
    assert error(result, survivors) < 1e-6  # the survivors' pooled optimum


def test_fedprox_runs_and_sites_end_with_the_global_model():
    result = run("fedprox", steps=400)
    assert all(torch.equal(result.params[s], result.params["n1"]) for s in SITES)


# ---- callbacks and validation -----------------------------------------------------------------
def test_eval_and_progress_callbacks():
    seen, progress = [], []

    def eval_fn(k, params):
        seen.append(k)
        assert set(params) == set(SITES)
        return k * 2

    result = run(
        steps=300, eval_every=100, eval_fn=eval_fn, progress=lambda d, t: progress.append((d, t))
    )
    assert seen[:3] == [100, 200, 300] and result.evaluations[0] == (100, 200)
    # the run ends after virtual time 300 (per-step jitter): one more point on the final models
    assert result.virtual_time > 300 and seen[3:] == [round(result.virtual_time)]
    assert len(result.evaluation_steps) == len(seen)
    assert result.evaluation_steps[-1] == 300  # every site done
    assert all(abs(s - k) < 10 for s, k in zip(result.evaluation_steps[:3], seen, strict=False))
    assert progress[-1] == (2400, 2400)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_fedavg_evaluations_count_local_steps_not_virtual_time():
    # synchronous rounds wait for the slowest site: virtual time runs ahead of the local steps
    result = run("fedavg", steps=200, eval_every=50, eval_fn=lambda k, p: None)
    ks = [k for k, _ in result.evaluations]
    assert ks[-1] > 200 and result.evaluation_steps[-1] == 200
    assert all(s <= k for s, k in zip(result.evaluation_steps, ks, strict=True))


def test_bad_inputs_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown method 'sgd'"):
        run("sgd")
    with pytest.raises(ConfigError, match="site_speed: unknown site 'x9'"):
        run(network=NetworkConfig(site_speed={"x9": 2.0}))
    empty = sites()
    empty["n1"].num_samples = 0
    with pytest.raises(ConfigError, match="site n1: no training samples"):
        run(objectives=empty)


def test_lingering_sites_only_add_messages_after_their_last_step():
    net = NetworkConfig(site_speed={"n4": 0.5})
    on = run(steps=200, network=net)
    off = run(steps=200, network=net.model_copy(update={"linger": False}))
    assert on.steps == off.steps
    assert on.messages_sent > off.messages_sent
    # until the first site finishes, both runs are the same run
    first_done = min(off.finish_time.values())
    assert [e for e in on.events if e.time < first_done] == [
        e for e in off.events if e.time < first_done
    ]
