"""Compressed ECL duals (``ecl.compression``): exact byte counts, top-k selection, convergence.

Quadratic sites as in test_quadratic.py, with a 64-dimensional model so that payload sizes are
easy to count by hand: float32 = 256 bytes, float16 = 128, top-k keeps k values + k indices
(8 bytes each).
"""

import pytest
import torch

from hospitalnet.algorithms import make_algorithm
from hospitalnet.algorithms.base import make_context, site_weights
from hospitalnet.algorithms.pdmm import decode_topk, encode_topk
from hospitalnet.config import ECLConfig, NetworkConfig, TopologyConfig, TrainingConfig
from hospitalnet.errors import ConfigError
from hospitalnet.messages import ENVELOPE_BYTES, Message, MessageKind
from hospitalnet.objective import QuadraticObjective
from hospitalnet.seeding import torch_generator
from hospitalnet.simulation import run_network
from hospitalnet.site import PeerBook, SiteRules
from hospitalnet.topology import build_topology

SITES = [f"n{k}" for k in range(1, 9)]
SIZES = [10, 20, 30, 40, 50, 60, 70, 80]
DIM = 64
TRAIN = TrainingConfig(lr=0.1, weight_decay=0.0)
LOSSY = NetworkConfig(latency_steps=(0.5, 4.0), drop_prob=0.2)


def quadratic_sites(seed=0):
    centres = torch.randn(len(SITES), DIM, generator=torch.Generator().manual_seed(seed))
    objectives = {
        s: QuadraticObjective(centres[k], SIZES[k], generator=torch_generator(seed, "noise", s))
        for k, s in enumerate(SITES)
    }
    p = torch.tensor(SIZES, dtype=torch.float64) / sum(SIZES)
    return objectives, (p[:, None] * centres.double()).sum(0)


def max_error(params, target):
    return max(float((w.double() - target).abs().max()) for w in params.values())


def run(compression, fraction=0.25, network=None, steps=1500):
    objectives, target = quadratic_sites()
    result = run_network(
        "ecl-pdmm-damped", objectives, "multiplex_ring", steps, seed=1, training=TRAIN,
        ecl=ECLConfig(compression=compression, topk_fraction=fraction),
        network=network or NetworkConfig(),
    )  # fmt: skip
    return result, target


def payload_bytes(result):
    return result.bytes_sent - result.messages_sent * ENVELOPE_BYTES


def one_site_state(compression, fraction=0.25):
    topo = build_topology(TopologyConfig(kind="ring"), SITES, 0)
    n = dict.fromkeys(SITES, 10)
    algo = make_algorithm(
        "ecl-pdmm-damped", ECLConfig(compression=compression, topk_fraction=fraction)
    )
    ctx = make_context(
        topo, "n1", w0=torch.zeros(DIM), num_samples=n,
        weights=site_weights(topo, n, "samples"), lr=0.1, weight_decay=0.0, exchange_every=8,
    )  # fmt: skip
    return algo, algo.init(ctx), ctx


@pytest.mark.parametrize(
    ("compression", "fraction", "expected"),
    [("none", 0.25, 256), ("float16", 0.25, 128), ("topk", 0.25, 128), ("topk", 0.125, 64)],
)
def test_dual_payload_has_the_expected_bytes(compression, fraction, expected):
    algo, state, ctx = one_site_state(compression, fraction)
    (out,) = algo.outgoing(state, ctx.neighbours[0])
    msg = Message("n1", ctx.neighbours[0], out.kind, 1, 1, out.payload)
    assert msg.payload_nbytes == expected
    assert algo.payload_spec(MessageKind.DUAL, ctx.w0) == (out.payload.numel(), out.payload.dtype)


def test_simulated_bytes_halve_and_quarter_exactly():
    # the schedule does not depend on the payload, so the same messages are sent in each run
    full, _ = run("none", steps=64)
    half16, _ = run("float16", steps=64)
    half, _ = run("topk", 0.25, steps=64)
    quarter, _ = run("topk", 0.125, steps=64)
    assert full.messages_sent == half16.messages_sent == half.messages_sent > 0
    assert payload_bytes(half16) * 2 == payload_bytes(full)
    assert payload_bytes(half) * 2 == payload_bytes(full)
    assert payload_bytes(quarter) * 4 == payload_bytes(full)


def test_float16_duals_still_reach_the_pooled_optimum():
    full, target = run("none")
    half, _ = run("float16")
    assert max_error(full.params, target) < 1e-6
    # float16 rounding (relative 2^-11 ~ 5e-4 of |y| ~ 1) leaves a small floor; measured 1.3e-4
    assert max_error(half.params, target) < 1e-3
    assert not any(st.rejected for st in half.edge_stats.values())


@pytest.mark.parametrize("fraction", [0.25, 0.125])
def test_topk_duals_reach_the_pooled_optimum_even_with_lost_messages(fraction):
    result, target = run("topk", fraction, network=LOSSY, steps=2500)
    assert max_error(result.params, target) < 1e-5
    assert sum(st.dropped for st in result.edge_stats.values()) > 0


def test_topk_keeps_the_largest_changes_and_both_ends_agree():
    y = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 4.0, 0.0, -1.0])
    sender_view = torch.zeros(8)
    receiver_view = torch.zeros(8)
    payload = encode_topk(y, sender_view, 3)
    assert payload.tolist() == [-5.0, 2.0, 4.0, 1.0, 3.0, 5.0]  # values, then sorted indices
    decode_topk(payload, receiver_view)
    expected = torch.tensor([0.0, -5.0, 0.0, 2.0, 0.0, 4.0, 0.0, 0.0])
    assert torch.equal(sender_view, expected) and torch.equal(receiver_view, expected)
    # next time the entries already sent no longer differ: the next largest change is picked
    payload = encode_topk(y, sender_view, 1)
    assert payload.tolist() == [-1.0, 7.0]


def test_uncompressed_dual_is_rejected_where_float16_is_expected():
    algo, _, ctx = one_site_state("float16")
    book = PeerBook(
        "n1", ctx.neighbours, SiteRules(), ctx.w0, 0.0,
        payload_spec=lambda kind: algo.payload_spec(kind, ctx.w0),
    )  # fmt: skip
    j = ctx.neighbours[0]
    wrong = Message(j, "n1", MessageKind.DUAL, 1, 1, torch.zeros(DIM))
    right = Message(j, "n1", MessageKind.DUAL, 1, 2, torch.zeros(DIM, dtype=torch.float16))
    assert book.admit(wrong, 0, 0.0).name == "REJECTED"
    assert book.admit(right, 0, 0.0).name == "APPLY"


def test_bad_compression_settings_are_config_errors():
    with pytest.raises(ConfigError, match="topk_fraction"):
        make_algorithm(
            "ecl-pdmm-damped", ECLConfig.model_construct(compression="topk", topk_fraction=0.0)
        )
    with pytest.raises(ConfigError, match="compression"):
        make_algorithm(
            "ecl-pdmm-damped", ECLConfig.model_construct(compression="zip", topk_fraction=0.25)
        )
