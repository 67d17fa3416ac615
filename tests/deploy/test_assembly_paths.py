"""The simulation and a `site run` build every site of the default network alike (no network).

Both go through ``hospitalnet.assembly.build_site``; this checks the inputs each path gathers
around it (data, plan, sizes, w0, seed) lead to equal sites: the default eight-hospital network
(multiplex ring, default config values) on the small test world.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from hospitalnet.algorithms import SERVER
from hospitalnet.assembly import initial_model
from hospitalnet.deploy.launcher import prepare_network
from hospitalnet.deploy.site_process import SiteProcess, SiteRunOptions, load_site_data
from hospitalnet.experiment import train_method
from hospitalnet.transport.base import Transport


class Silent(Transport):
    """A transport that is never used: the test builds sites without starting gRPC."""

    def __init__(self) -> None:
        self.site = "?"

    def send(self, message):  # pragma: no cover
        raise AssertionError("nothing is sent while building a site")

    def poll(self):
        return []

    def stats(self):
        return {}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["ecl", "gossip", "fedavg", "local"])
def test_assembly_simulation_and_site_run_build_equal_contexts_for_every_site(
    world_cache, tmp_path, method
):
    # prepare: the default network on the test world; one local step is enough to build it
    cfg = tiny_config(world_cache, local_steps=1)
    layout, world = prepare_network(cfg, tmp_path / "run")
    flat = initial_model(cfg)
    w0 = flat.flat.detach().clone()

    # execute: the simulation's sites, and each site as `hospitalnet site run` builds it
    simulated, _, _ = train_method(method, cfg, world, flat, w0, progress=False)
    deployed = {}
    for site in layout.sites:
        opts = SiteRunOptions(
            manifest=layout.manifests[site],
            out=tmp_path / "nodes" / site,
            method=method,
            plan=layout.plan,
            global_manifest=layout.global_manifest,
            cache_dir=layout.cache_dir,
        )
        data = load_site_data(opts, cfg)
        deployed[site] = SiteProcess(opts, cfg, data, transport=Silent()).node

    # assert: equal contexts (neighbours, signs, degrees, loss weight, n_i, w0, mu, lambda, K),
    # equal exchange schedules and equal rules but for D's unit (steps vs seconds)
    assert list(simulated.contexts) == list(layout.sites) == [f"n{k}" for k in range(1, 9)]
    for site, node in deployed.items():
        sim, dep = simulated.contexts[site], node.context
        assert torch.equal(sim.w0, dep.w0), site
        assert torch.equal(sim.coupling_scale, dep.coupling_scale), site
        tensors = {"w0": None, "coupling_scale": None}
        assert {**vars(sim), **tensors} == {**vars(dep), **tensors}, site
        assert node.rules.staleness_bound == cfg.network.staleness_bound
        assert node.rules.inactive_after == cfg.deploy.inactive_after_s
        assert node.steps == cfg.training.local_steps and node.linger == cfg.network.linger
        for j in dep.neighbours:  # both ends of an edge exchange on the same steps
            if j != SERVER:
                assert node.schedule.offsets[j] == deployed[j].schedule.offsets[site]
    weights = [c.weight for c in simulated.contexts.values()]
    if method in ("ecl", "gossip"):  # one component of 8: N p_i, summing to N
        assert all(len(c.neighbours) == 4 for c in simulated.contexts.values())
        assert sum(weights) == pytest.approx(8.0) and len(set(weights)) > 1
    else:
        assert weights == [1.0] * 8
