"""The network plan file and the algorithm state <-> checkpoint mapping (no network)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from hospitalnet.algorithms import make_algorithm, make_context, site_weights
from hospitalnet.checkpoint import load_latest, save_checkpoint
from hospitalnet.cli.site import _start_time
from hospitalnet.config import ECLConfig, ExperimentConfig
from hospitalnet.data.manifest import SiteManifest, load_manifest
from hospitalnet.errors import ConfigError
from hospitalnet.messages import Message, MessageKind
from hospitalnet.plan import load_plan, plan_from_manifest, write_plan
from hospitalnet.topology import build_topology, from_edges


def test_plan_file_round_trip_keeps_site_order_edges_addresses_and_sizes(tmp_path):
    path = tmp_path / "network.yaml"
    path.write_text(
        "sites:\n"
        "  b: {address: 127.0.0.1:1, train_samples: 10}\n"
        "  a: {address: 127.0.0.1:2, train_samples: 30}\n"
        "  c: {address: 127.0.0.1:3, train_samples: 20}\n"
        "edges: [[a, b], [c, b]]\n"
        "server: {address: 127.0.0.1:9}\n"
    )

    plan = load_plan(path)
    write_plan(tmp_path / "again.json", plan)
    again = load_plan(tmp_path / "again.json")

    assert plan.sites == ("b", "a", "c")  # file order, not sorted: it fixes the edge signs
    assert plan.edges == (("b", "a"), ("b", "c"))
    assert plan.topology().edge_sign("a", "b") == -1
    assert plan.train_samples == {"b": 10, "a": 30, "c": 20}
    assert plan.server_address == "127.0.0.1:9"
    assert again == plan


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sites: {}\n", "sites"),
        ("sites: {a: {address: x, port: 1}}\n", "sites.a.port: unknown key"),
        ("sites: {a: {train_samples: -1}}\n", "train_samples"),
        ("sites: {a: {}, b: {}}\nedges: [[a, z]]\n", "unknown site"),
        ("sites: {a: {}}\nservers: {address: x}\n", "servers: unknown key"),
        ("sites: {a: {}}\nserver: {port: 1}\n", r"server: expected \{address"),
        ("sites: {a: {}}\nserver: {address: ''}\n", r"server: expected \{address"),
        ("sites: {server: {}}\n", "sites.server: the id is reserved"),
    ],
)
def test_bad_plan_files_are_one_line_errors_naming_the_key(tmp_path, text, needle):
    path = tmp_path / "network.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_plan(path)


def test_plan_from_a_manifest_is_the_site_and_its_own_edges():
    manifest = SiteManifest.model_validate(
        {
            "site": "n3",
            "data": {"loader": "nih", "root": "x"},
            "network": {
                "address": "127.0.0.1:50053",
                "neighbours": {"n5": "127.0.0.1:50055", "n1": "127.0.0.1:50051"},
            },
        }
    )
    plan = plan_from_manifest(manifest)
    assert plan.sites == ("n1", "n3", "n5")
    assert set(plan.edges) == {("n1", "n3"), ("n3", "n5")}
    assert plan.addresses["n3"] == "127.0.0.1:50053"
    assert plan.train_samples == {}


def _ecl_state(seed: int):
    topo = from_edges(["a", "b", "c"], [("a", "b"), ("a", "c")])
    algo = make_algorithm("ecl-pdmm-damped", ECLConfig(theta=0.8))
    w0 = torch.randn(50, generator=torch.Generator().manual_seed(seed))
    samples = {"a": 10, "b": 20, "c": 30}
    ctx = make_context(
        topo,
        "a",
        w0=w0,
        num_samples=samples,
        weights=site_weights(topo, samples, "samples"),
        lr=0.05,
        weight_decay=1e-4,
        exchange_every=4,
    )
    return algo, algo.init(ctx)


def _advance(algo, state, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for k in range(steps):
        state = algo.local_step(state, 0.0, torch.randn(50, generator=g))
        y = torch.randn(50, generator=g)
        state = algo.receive(state, Message("b", "a", MessageKind.DUAL, k, k + 1, y))
    return state


def test_ecl_state_survives_a_checkpoint_and_continues_identically(tmp_path):
    # prepare: a state after some steps, and its twin continued without interruption
    algo, state = _ecl_state(0)
    state = _advance(algo, state, 7, seed=1)
    state = algo.set_edge_active(state, "c", False)
    tensors, meta = algo.state_dict(state)
    save_checkpoint(tmp_path, tensors, {"state": meta}, model_fingerprint="fp")
    algo2, _ = _ecl_state(0)
    straight = _advance(algo, state, 5, seed=2)

    # execute: restore a fresh state from the file, continue it the same way
    ckpt = load_latest(tmp_path, "fp")
    _, fresh = _ecl_state(0)
    fresh = algo2.load_state_dict(fresh, ckpt.tensors, ckpt.meta["state"])
    resumed = _advance(algo2, fresh, 5, seed=2)

    # assert: same model, same duals, same edge states and counters
    assert resumed.active == {"b": True, "c": False}
    assert resumed.steps == straight.steps == 12
    torch.testing.assert_close(resumed.w, straight.w, rtol=1e-6, atol=1e-6)
    for j in ("b", "c"):
        torch.testing.assert_close(resumed.z[j], straight.z[j], rtol=1e-6, atol=1e-6)
    assert "coupling" not in tensors and "dirty" not in meta  # caches, re-summed after the restore


def test_a_fedavg_site_restored_while_waiting_steps_on_instead_of_waiting_for_ever(tmp_path):
    # prepare: a FedAvg site right after its round-2 send (K = 4), checkpointed in that state
    algo = make_algorithm("fedavg")
    topo = from_edges(["a"], [])
    ctx = make_context(
        topo, "a", w0=torch.zeros(3), num_samples={"a": 10}, weights={"a": 1.0}, lr=0.1,
        weight_decay=0.0, exchange_every=4, neighbours=("server",),
    )  # fmt: skip
    state = algo.init(ctx)
    for _ in range(8):
        state = algo.local_step(state, 1.0, torch.ones(3))
    assert not algo.ready(state)  # waiting for the global model of round 2
    tensors, meta = algo.state_dict(state)

    # execute: the restarted process restores it
    restored = algo.load_state_dict(algo.init(ctx), tensors, meta)
    restored = algo.restarted(restored)

    # assert: same model and counters, but not waiting (that global model went to the dead
    # process); its next send is the one after step 12
    torch.testing.assert_close(restored.w, torch.full((3,), -0.8))
    assert restored.steps == 8 and algo.ready(restored)
    for _ in range(4):
        restored = algo.local_step(restored, 1.0, torch.ones(3))
    assert not algo.ready(restored)


@pytest.mark.parametrize(
    ("text", "epoch"),
    [("1796025600", 1796025600.0), ("2026-12-01T09:00:00Z", 1796115600.0)],
)
def test_start_at_takes_epoch_seconds_or_iso_8601_with_a_time_zone(text, epoch):
    assert _start_time(text) == epoch


@pytest.mark.parametrize("text", ["2026-12-01T09:00:00", "tomorrow"])
def test_start_at_without_a_time_zone_or_unreadable_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="2026-12-01T09:00:00"):
        _start_time(text)


def test_the_shipped_plan_matches_the_shipped_manifests_and_the_default_topology():
    # prepare: sites/network.yaml, sites/n*.yaml and the default config's topology
    sites_dir = Path(__file__).resolve().parents[2] / "sites"
    plan = load_plan(sites_dir / "network.yaml")
    manifests = {p.stem: load_manifest(p)[0] for p in sorted(sites_dir.glob("n[0-9]*.yaml"))}
    cfg = ExperimentConfig()
    default = build_topology(cfg.topology, list(plan.sites), cfg.seed)

    # assert: same sites, edges, addresses and neighbours; a server and every size
    assert plan.sites == tuple(manifests) == tuple(f"n{k}" for k in range(1, 9))
    assert plan.edges == default.edges
    for site, manifest in manifests.items():
        assert plan.addresses[site] == manifest.network.address
        assert set(manifest.network.neighbours) == set(plan.topology().neighbours(site))
        for nbr, address in manifest.network.neighbours.items():
            assert plan.addresses[nbr] == address
    assert plan.server_address == "127.0.0.1:50050"
    assert set(plan.train_samples) == set(plan.sites)
