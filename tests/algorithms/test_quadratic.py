"""ALGORITHMS.md section 5, tests 1-5: quadratic sites whose pooled optimum is known by hand.

Site i has f_i(w) = 0.5 ||w - c_i||^2 and n_i samples, so the pooled optimum is
sum_i p_i c_i with p_i = n_i / sum_k n_k (computed here in float64, independently of the code).
The ``ecl`` runs are in float64, so "exact" means 1e-9, far below float32's 1e-7 floor.
"""

import pytest
import torch

from hospitalnet.config import ECLConfig, NetworkConfig, TopologyConfig, TrainingConfig
from hospitalnet.errors import ConfigError
from hospitalnet.messages import ENVELOPE_BYTES
from hospitalnet.objective import LinearObjective, QuadraticObjective
from hospitalnet.seeding import numpy_rng, torch_generator
from hospitalnet.simulation import run_network
from hospitalnet.topology import build_topology

SITES = [f"n{k}" for k in range(1, 9)]
SIZES = [10, 20, 30, 40, 50, 60, 70, 80]  # strongly unequal: p_i from 0.03 to 0.22
DIM = 4
TRAIN = TrainingConfig(lr=0.1, weight_decay=0.0)
# synchronous: no latency, no jitter, every edge of a site exchanges on the same steps
SYNC = NetworkConfig(latency_steps=(0.0, 0.0), compute_jitter=0.0, stagger_exchanges=False)
# asynchronous: staggered edges, random latency of 0.5-4 steps, 20% of the messages lost
LOSSY = NetworkConfig(latency_steps=(0.5, 4.0), drop_prob=0.2)


def quadratic_sites(seed=0, noise=0.0, sites=SITES, sizes=SIZES, dtype=torch.float32):
    centres = torch.randn(len(sites), DIM, generator=torch.Generator().manual_seed(seed))
    centres = centres.to(dtype)
    objectives = {
        s: QuadraticObjective(
            centres[k], sizes[k], noise=noise, generator=torch_generator(seed, "noise", s)
        )
        for k, s in enumerate(sites)
    }
    return objectives, centres.double()


def weighted_mean(centres, sizes):
    p = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    return (p[:, None] * centres).sum(0)


def max_error(params, target):
    return max(float((w.double() - target).abs().max()) for w in params.values())


# ---- 1. every site reaches the pooled optimum ---------------------------------------------------
FAST = ECLConfig(dual_gain=0.6)  # converges in fewer steps; the fixed point does not depend on it


@pytest.mark.parametrize("topology", ["ring", "multiplex_ring", "random", "complete"])
@pytest.mark.parametrize("network", [SYNC, LOSSY], ids=["sync", "lossy"])
def test_ecl_reaches_pooled_optimum_exactly(topology, network):
    objectives, centres = quadratic_sites(dtype=torch.float64)
    result = run_network(
        "ecl", objectives, topology, 5000, seed=2, training=TRAIN, ecl=FAST, network=network
    )
    if network is LOSSY:
        dropped = sum(s.dropped for s in result.edge_stats.values())
        assert dropped > 0.15 * result.messages_sent
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-9


@pytest.mark.parametrize(
    "settings",
    [
        ECLConfig(),  # the default gain
        ECLConfig(dual_gain=0.1),  # (0.6 diverges at 2-6 steps of latency; 0.3 did not)
        ECLConfig(dual_gain=0.6, dual_warmup_steps=1000),
        ECLConfig(dual_gain=0.6, mixing_scale=0.5),
    ],
    ids=["default", "gain-0.1", "warm-up", "half-mixing"],
)
def test_gain_warmup_and_mixing_do_not_move_the_fixed_point(settings):
    objectives, centres = quadratic_sites(dtype=torch.float64)
    steps = 20000 if settings.dual_gain < 0.3 else 8000
    result = run_network(
        "ecl", objectives, "multiplex_ring", steps, seed=3, training=TRAIN, ecl=settings,
        network=LOSSY,
    )  # fmt: skip
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-9


def test_without_the_dual_ecl_keeps_the_bias_of_gossip():
    # kappa 0 is delay-compensated gossip: the sites' mean is right (each exchange conserves
    # it), the sites themselves are not
    objectives, centres = quadratic_sites(dtype=torch.float64)
    target = weighted_mean(centres, SIZES)
    result = run_network(
        "ecl", objectives, "multiplex_ring", 3000, seed=3, training=TRAIN,
        ecl=ECLConfig(dual_gain=0.0), network=SYNC,
    )  # fmt: skip
    assert max_error(result.params, target) > 0.1


def test_the_exchange_conserves_the_mean_of_the_sites():
    # every site has the same linear loss g.w: plain SGD moves by -mu g per step; the two ends
    # of an exchange add +W d and -W d, so the mean of the sites moves exactly as SGD does
    # (common-mode speed 1) on staggered edges. (With latency it holds once the replies in
    # flight have landed: benchmarks/ecl_dynamics.py measures the speed at the default latency.)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    objectives = {s: LinearObjective(g, n) for s, n in zip(SITES, SIZES)}
    steps = 400
    train = TrainingConfig(lr=0.1, weight_decay=0.0, site_weighting="uniform")
    slow = NetworkConfig(latency_steps=(0.0, 0.0), compute_jitter=0.0)
    result = run_network("ecl", objectives, "multiplex_ring", steps, seed=4, training=train,
                         network=slow, ecl=ECLConfig(dual_gain=0.0))  # fmt: skip
    mean = torch.stack(list(result.params.values())).mean(0)
    assert torch.allclose(mean, -0.1 * steps * g, atol=1e-9)


def test_uniform_weighting_reaches_the_unweighted_mean():
    objectives, centres = quadratic_sites(dtype=torch.float64)
    train = TrainingConfig(lr=0.1, weight_decay=0.0, site_weighting="uniform")
    for method, settings in [("ecl", FAST), ("ecl-pdmm-damped", ECLConfig())]:
        result = run_network(
            method, objectives, "multiplex_ring", 3000, seed=4, training=train, ecl=settings,
            network=LOSSY,
        )  # fmt: skip
        assert max_error(result.params, centres.mean(0)) < 1e-9, method


def test_a_step_size_schedule_keeps_the_fixed_point():
    objectives, centres = quadratic_sites(dtype=torch.float64)
    result = run_network(
        "ecl", objectives, "multiplex_ring", 3000, seed=5, training=TRAIN, network=LOSSY,
        ecl=FAST, lr_schedule=lambda k: 0.1 if k < 1000 else 0.03,
    )  # fmt: skip
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-9


# ---- 1b. the PDMM variants (the ``ecl`` of earlier releases) ------------------------------------
@pytest.mark.parametrize("topology", ["ring", "multiplex_ring", "random", "complete"])
@pytest.mark.parametrize("method", ["ecl-pdmm", "ecl-relaxed-pdmm"])
def test_pdmm_reaches_pooled_optimum_without_delays(topology, method):
    objectives, centres = quadratic_sites()
    result = run_network(method, objectives, topology, 1500, seed=1, training=TRAIN, network=SYNC)
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-6


@pytest.mark.parametrize("topology", ["ring", "multiplex_ring", "random", "complete"])
@pytest.mark.parametrize("method", ["ecl-pdmm-damped", "ecl-relaxed-pdmm", "ecl-authors-admm"])
def test_pdmm_reaches_pooled_optimum_with_delays_and_drops(topology, method):
    objectives, centres = quadratic_sites()
    result = run_network(method, objectives, topology, 1500, seed=2, training=TRAIN, network=LOSSY)
    dropped = sum(s.dropped for s in result.edge_stats.values())
    assert dropped > 0.15 * result.messages_sent
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-6


def test_pdmm_with_fixed_eta_and_proximity_reaches_pooled_optimum():
    objectives, centres = quadratic_sites()
    result = run_network(
        "ecl-pdmm-damped", objectives, "random", 2000, seed=3, training=TRAIN,
        ecl=ECLConfig(eta=0.5, rho=0.5), network=LOSSY,
    )  # fmt: skip
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-6


# ---- 2. gossip's non-IID bias -----------------------------------------------------------------
def test_gossip_with_local_steps_stops_away_from_the_optimum():
    objectives, centres = quadratic_sites()
    target = weighted_mean(centres, SIZES)
    common = dict(training=TRAIN, network=SYNC)
    # 1600 and 3200 steps end at the same phase of the exchange cycle (right after a round)
    gossip = run_network("gossip", objectives, "multiplex_ring", 1600, seed=6, **common)
    longer = run_network("gossip", objectives, "multiplex_ring", 3200, seed=6, **common)
    ecl = run_network("ecl", objectives, "multiplex_ring", 1600, seed=6, **common)

    gap = max_error(gossip.params, target)
    mean_gap = float(
        (torch.stack(list(gossip.params.values())).double().mean(0) - target).abs().max()
    )
    # measured: worst site 1.53 away (max-norm), the mean of the site models 0.085 away
    assert gap > 0.5 and mean_gap > 0.01
    assert abs(max_error(longer.params, target) - gap) < 1e-6  # converged: it is a bias
    assert max_error(ecl.params, target) < 1e-6  # same budget, same messages: ECL is exact
    # one request and one answer per exchange: no more messages than gossip (requests made at
    # the very end are answered after the run stopped counting)
    assert 0.99 * gossip.messages_sent <= ecl.messages_sent <= gossip.messages_sent


# ---- 3. disconnected graph: each component to its own weighted mean ---------------------------
def test_each_component_reaches_its_own_weighted_mean():
    ring = [("n1", "n2"), ("n2", "n3"), ("n3", "n4"), ("n4", "n1")]
    ring += [("n5", "n6"), ("n6", "n7"), ("n7", "n8"), ("n8", "n5")]
    topo = TopologyConfig(kind="edges", edges=ring)
    objectives, centres = quadratic_sites(dtype=torch.float64)
    result = run_network(
        "ecl", objectives, topo, 3000, seed=7, training=TRAIN, ecl=FAST, network=LOSSY
    )
    first = weighted_mean(centres[:4], SIZES[:4])
    second = weighted_mean(centres[4:], SIZES[4:])
    assert max_error({s: result.params[s] for s in SITES[:4]}, first) < 1e-9
    assert max_error({s: result.params[s] for s in SITES[4:]}, second) < 1e-9


# ---- 4. a site without neighbours is exactly local training -----------------------------------
def test_site_without_neighbours_is_bit_identical_to_local():
    edges = [(a, b) for a, b in zip(SITES[:6], SITES[1:7])]  # n8 has no edge
    topo = TopologyConfig(kind="edges", edges=edges)
    train = TrainingConfig(lr=0.1, weight_decay=1e-3)
    ecl = run_network("ecl", quadratic_sites(noise=0.3)[0], topo, 300, seed=8, training=train)
    local = run_network("local", quadratic_sites(noise=0.3)[0], topo, 300, seed=8, training=train)
    assert torch.equal(ecl.params["n8"], local.params["n8"])
    assert ecl.losses["n8"] == local.losses["n8"]
    assert not torch.equal(ecl.params["n1"], local.params["n1"])


# ---- 5. message count = the schedule's count --------------------------------------------------
def _exchanges(a, b, steps, seed, k):
    # by hand: an edge's exchange is due after every step with step % K == its seeded offset
    offset = int(numpy_rng(seed, "exchange", *sorted((a, b))).integers(0, k))
    return sum(1 for step in range(1, steps + 1) if step % k == offset)


@pytest.mark.parametrize("jitter, linger", [(0.0, True), (0.1, False)])
def test_gossip_sends_its_model_both_ways_on_the_schedule(jitter, linger):
    objectives, _ = quadratic_sites()
    steps, seed, k = 203, 9, 8
    net = NetworkConfig(exchange_every=k, compute_jitter=jitter, linger=linger)
    result = run_network("gossip", objectives, "multiplex_ring", steps, seed, network=net)
    topo = build_topology(TopologyConfig(kind="multiplex_ring"), SITES, seed)
    for a, b in topo.edges:
        exchanges = _exchanges(a, b, steps, seed, k)
        for pair in ((a, b), (b, a)):
            assert result.edge_stats[pair].messages_sent == exchanges
            assert result.edge_stats[pair].bytes_sent == exchanges * (ENVELOPE_BYTES + 4 * DIM)
    assert result.messages_sent == sum(2 * _exchanges(a, b, steps, seed, k) for a, b in topo.edges)
    assert all(s.dropped == s.stale == s.duplicates == 0 for s in result.edge_stats.values())


def test_ecl_owner_requests_on_the_schedule_and_every_request_is_answered():
    # (without lingering: a finished site sends no more requests)
    objectives, _ = quadratic_sites()
    steps, seed, k = 203, 9, 8
    net = NetworkConfig(exchange_every=k, compute_jitter=0.0, linger=False)
    result = run_network("ecl", objectives, "multiplex_ring", steps, seed, network=net)
    topo = build_topology(TopologyConfig(kind="multiplex_ring"), SITES, seed)
    for a, b in topo.edges:
        owner, other = (a, b) if topo.edge_sign(a, b) > 0 else (b, a)
        exchanges = _exchanges(a, b, steps, seed, k)
        request, reply = result.edge_stats[(owner, other)], result.edge_stats[(other, owner)]
        assert request.messages_sent == exchanges
        assert request.bytes_sent == exchanges * (ENVELOPE_BYTES + 4 * 2 * DIM)
        # every request that arrived before its receiver stopped was answered at once
        assert exchanges - 1 <= reply.messages_sent == request.messages_delivered
        assert reply.bytes_sent == reply.messages_sent * (ENVELOPE_BYTES + 4 * DIM)
    assert all(s.dropped == s.stale == s.duplicates == 0 for s in result.edge_stats.values())


@pytest.mark.parametrize("steps", [800, 803])
def test_fedavg_sends_one_model_each_way_per_round_and_is_exact_on_quadratics(steps):
    objectives, centres = quadratic_sites()
    k = 8
    result = run_network("fedavg", objectives, "ring", steps, 10, training=TRAIN)
    rounds = -(-steps // k)  # 803 steps: 100 rounds of 8 and a last one of 3
    for s in SITES:
        assert result.edge_stats[(s, "server")].messages_sent == rounds
        assert result.edge_stats[("server", s)].messages_sent == rounds
    # equal curvature everywhere: K local steps then an n_i-weighted average is unbiased
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-6
    # every site ends on the last global model
    assert all(torch.equal(result.params[s], result.params["n1"]) for s in SITES)


def test_fedavg_uniform_weighting_averages_with_equal_weights():
    objectives, centres = quadratic_sites()
    train = TrainingConfig(lr=0.1, weight_decay=0.0, site_weighting="uniform")
    result = run_network("fedavg", objectives, "ring", 800, 10, training=train)
    assert max_error(result.params, centres.mean(0)) < 1e-6


class ScaledQuadratic(QuadraticObjective):
    """A quadratic whose objective gives a per-coordinate coupling scale (as sqrt(fan-in))."""

    def coupling_scale(self):
        return torch.tensor([1.0, 2.0, 3.0, 12.0], dtype=self.centre.dtype)


def test_pdmm_with_sqrt_fan_in_coupling_keeps_the_pooled_optimum():
    _, centres = quadratic_sites(dtype=torch.float64)
    objectives = {s: ScaledQuadratic(centres[k], SIZES[k]) for k, s in enumerate(SITES)}
    settings = ECLConfig(eta=0.05, eta_scaling="sqrt_fan_in")
    result = run_network("ecl-pdmm-damped", objectives, "multiplex_ring", 3000, seed=3,
                         training=TRAIN, ecl=settings, network=LOSSY)  # fmt: skip
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-9
    plain = {s: QuadraticObjective(centres[k], SIZES[k]) for k, s in enumerate(SITES)}
    with pytest.raises(ConfigError, match="eta_scaling"):
        run_network("ecl-pdmm-damped", plain, "ring", 10, seed=3, training=TRAIN, ecl=settings)
