"""ALGORITHMS.md section 5, tests 1-5: quadratic sites whose pooled optimum is known by hand.

Site i has f_i(w) = 0.5 ||w - c_i||^2 and n_i samples, so the pooled optimum is
sum_i p_i c_i with p_i = n_i / sum_k n_k (computed here in float64, independently of the code).
"""

import pytest
import torch

from hospitalnet.config import ECLConfig, NetworkConfig, TopologyConfig, TrainingConfig
from hospitalnet.messages import ENVELOPE_BYTES
from hospitalnet.objective import QuadraticObjective
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


def quadratic_sites(seed=0, noise=0.0, sites=SITES, sizes=SIZES):
    centres = torch.randn(len(sites), DIM, generator=torch.Generator().manual_seed(seed))
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
@pytest.mark.parametrize("topology", ["ring", "multiplex_ring", "random", "complete"])
@pytest.mark.parametrize("theta", [1.0, 0.5])
def test_ecl_reaches_pooled_optimum_without_delays(topology, theta):
    objectives, centres = quadratic_sites()
    result = run_network(
        "ecl", objectives, topology, 1500, seed=1, training=TRAIN,
        ecl=ECLConfig(theta=theta), network=SYNC,
    )  # fmt: skip
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-6


@pytest.mark.parametrize("topology", ["ring", "multiplex_ring", "random", "complete"])
@pytest.mark.parametrize("theta", [ECLConfig().theta, 0.5])
def test_ecl_reaches_pooled_optimum_with_delays_and_drops(topology, theta):
    objectives, centres = quadratic_sites()
    result = run_network(
        "ecl", objectives, topology, 1500, seed=2, training=TRAIN,
        ecl=ECLConfig(theta=theta), network=LOSSY,
    )  # fmt: skip
    dropped = sum(s.dropped for s in result.edge_stats.values())
    assert dropped > 0.15 * result.messages_sent
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-6


def test_ecl_with_fixed_eta_and_proximity_reaches_pooled_optimum():
    objectives, centres = quadratic_sites()
    result = run_network(
        "ecl", objectives, "random", 2000, seed=3, training=TRAIN,
        ecl=ECLConfig(eta=0.5, rho=0.5), network=LOSSY,
    )  # fmt: skip
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-6


def test_uniform_weighting_reaches_the_unweighted_mean():
    objectives, centres = quadratic_sites()
    result = run_network(
        "ecl", objectives, "multiplex_ring", 1500, seed=4, training=TRAIN,
        ecl=ECLConfig(site_weighting="uniform"), network=LOSSY,
    )  # fmt: skip
    assert max_error(result.params, centres.mean(0)) < 1e-6


def test_a_step_size_schedule_keeps_the_fixed_point():
    objectives, centres = quadratic_sites()
    result = run_network(
        "ecl", objectives, "multiplex_ring", 1500, seed=5, training=TRAIN, network=LOSSY,
        lr_schedule=lambda k: 0.1 if k < 500 else 0.03,
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
    assert gossip.messages_sent == ecl.messages_sent


# ---- 3. disconnected graph: each component to its own weighted mean ---------------------------
def test_each_component_reaches_its_own_weighted_mean():
    objectives, centres = quadratic_sites()
    ring = [("n1", "n2"), ("n2", "n3"), ("n3", "n4"), ("n4", "n1")]
    ring += [("n5", "n6"), ("n6", "n7"), ("n7", "n8"), ("n8", "n5")]
    topo = TopologyConfig(kind="edges", edges=ring)
    result = run_network("ecl", objectives, topo, 1500, seed=7, training=TRAIN, network=LOSSY)
    first = weighted_mean(centres[:4], SIZES[:4])
    second = weighted_mean(centres[4:], SIZES[4:])
    assert max_error({s: result.params[s] for s in SITES[:4]}, first) < 1e-6
    assert max_error({s: result.params[s] for s in SITES[4:]}, second) < 1e-6


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
@pytest.mark.parametrize("method", ["ecl", "gossip"])
@pytest.mark.parametrize("jitter, linger", [(0.0, True), (0.1, False)])
def test_message_count_and_bytes_follow_the_schedule(method, jitter, linger):
    # (with jitter, sites finish at slightly different times; a lingering ECL site would keep
    # exchanging meanwhile - extra messages on purpose, so that case runs without lingering)
    objectives, _ = quadratic_sites()
    steps, seed, k = 203, 9, 8
    net = NetworkConfig(exchange_every=k, compute_jitter=jitter, linger=linger)
    result = run_network(method, objectives, "multiplex_ring", steps, seed, network=net)

    topo = build_topology(TopologyConfig(kind="multiplex_ring"), SITES, seed)
    expected_total = 0
    for a, b in topo.edges:  # by hand: both ends send after every step k with k % K == offset
        offset = int(numpy_rng(seed, "exchange", *sorted((a, b))).integers(0, k))
        exchanges = sum(1 for step in range(1, steps + 1) if step % k == offset)
        for pair in ((a, b), (b, a)):
            assert result.edge_stats[pair].messages_sent == exchanges
            assert result.edge_stats[pair].bytes_sent == exchanges * (ENVELOPE_BYTES + 4 * DIM)
        expected_total += 2 * exchanges
    assert result.messages_sent == expected_total
    assert len(result.edge_stats) == 2 * len(topo.edges)
    assert all(s.dropped == s.stale == s.duplicates == 0 for s in result.edge_stats.values())


def test_fedavg_sends_one_model_each_way_per_round_and_is_exact_on_quadratics():
    objectives, centres = quadratic_sites()
    steps, k = 800, 8
    result = run_network("fedavg", objectives, "ring", steps, 10, training=TRAIN)
    for s in SITES:
        assert result.edge_stats[(s, "server")].messages_sent == steps // k
        assert result.edge_stats[("server", s)].messages_sent == steps // k
    # equal curvature everywhere: K local steps then an n_i-weighted average is unbiased
    assert max_error(result.params, weighted_mean(centres, SIZES)) < 1e-6
    assert all(torch.equal(result.params[s], result.params["n1"]) for s in SITES)
