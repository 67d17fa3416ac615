"""FedAvg / FedProx as nine OS processes on 127.0.0.1: eight hospitals and the server.

- with every site up, the rounds are synchronous, so the process network computes what the
  in-process simulation computes (same transitions, same batches): predictions equal to 1e-5;
- a site killed mid-training: the server goes on without it after D seconds (the others keep
  waiting for the server meanwhile, heard through its heartbeats);
- a site killed and restarted within D: it resumes from its checkpoint and rejoins the rounds
  (no deadlock on the global model that went to the dead process);
- the server SIGTERMed mid-training: exit 0 with a checkpoint; restarted with --resume it
  continues from its round count and every site finishes.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import last_checkpoint, wait_for

from hospitalnet.assembly import initial_model
from hospitalnet.config import dump_config
from hospitalnet.deploy.launcher import (
    collect_method,
    start_node,
    start_server,
    wait_nodes,
)
from hospitalnet.deploy.site_process import node_status
from hospitalnet.experiment import train_method
from hospitalnet.plan import write_plan
from hospitalnet.rundir import RunDir

pytestmark = pytest.mark.network


def _start_all(layout, method, processes):
    procs = {"server": start_server(layout, method)}
    procs.update({s: start_node(layout, s, method) for s in layout.sites})
    processes.extend(procs.values())
    return procs


def _history_events(node_dir, method):
    return json.loads(RunDir(node_dir).history(method).read_text())["events"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fedavg_over_nine_processes_computes_what_the_simulation_computes(
    network, processes, tmp_path
):
    # prepare: unpaced, with a cosine step-size schedule; the in-process reference on the same
    # world and config
    cfg, layout, world = network(step_interval_s=0.0, local_steps=24)
    training = cfg.training.model_copy(update={"lr_schedule": "cosine"})
    cfg = cfg.model_copy(update={"methods": ["fedavg"], "training": training})
    layout.config_path.write_text(dump_config(cfg))
    flat = initial_model(cfg)
    w0 = flat.flat.detach().clone()
    _, in_process, _ = train_method("fedavg", cfg, world, flat, w0, progress=False)

    # execute
    codes = wait_nodes(_start_all(layout, "fedavg", processes), 240)

    # assert: all nine exit 0; the server ran every round; the models are the simulation's
    assert codes == {"server": 0, **{s: 0 for s in layout.sites}}
    server = node_status(layout.node_dir("fedavg", "server"))
    assert server.status == "finished"
    assert server.rounds == server.target_rounds == 24 // cfg.network.exchange_every
    n_train = sum(len(t) for t in world.train.values())
    result = collect_method(layout, "fedavg", n_train, cfg.training.batch_size)
    assert result.finished == list(layout.sites) and result.dead == []
    for s in layout.sites:
        for testset in ("global", f"local_{s}"):
            k = f"final__{s}__{testset}"
            diff = np.abs(result.predictions[k] - in_process["predictions"][k]).max()
            assert diff < 1e-5, f"{k}: processes differ from in-process by {diff}"
    # ... and both sides of every site-server edge counted the model exchanges
    edges = {(e.a, e.b): e for e in result.network.edges}
    assert sorted(edges) == [(s, "server") for s in layout.sites]
    for s in layout.sites:
        assert edges[(s, "server")].messages == {f"{s}->server": 6, f"server->{s}": 6}


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_fedavg_site_killed_for_good_is_dropped_and_the_rounds_go_on_without_it(network, processes):
    # prepare: 300 steps at 20 steps/s, K = 4 (75 rounds), D = 2 s
    cfg, layout, world = network(local_steps=300)
    procs = _start_all(layout, "fedavg", processes)

    # execute: SIGKILL n3 after its second checkpoint (step 40)
    wait_for(lambda: last_checkpoint(layout.node_dir("fedavg", "n3")) >= 2, 150, "n3 at step 40")
    procs["n3"].kill()
    assert procs["n3"].wait(timeout=10) == -signal.SIGKILL
    codes = wait_nodes(procs, 300)

    # assert: the server and the seven others finish every round and step
    others = [s for s in layout.sites if s != "n3"]
    assert codes == {"server": 0, "n3": -signal.SIGKILL, **{s: 0 for s in others}}
    server_dir = layout.node_dir("fedavg", "server")
    assert node_status(server_dir).rounds == 75
    assert node_status(server_dir).active_sites == others
    for s in others:  # they waited for the server throughout, never alone
        status = node_status(layout.node_dir("fedavg", s))
        assert status.status == "finished" and status.steps == 300
        assert status.isolated is False and status.active_neighbours == ["server"]
    # ... only n3 was dropped from the rounds; the run lists it dead, its edge inactive
    events = _history_events(server_dir, "fedavg")
    dropped = [e["peer"] for e in events if e["kind"] == "edge_inactive"]
    assert dropped == ["n3"]
    n_train = sum(len(t) for t in world.train.values())
    result = collect_method(layout, "fedavg", n_train, cfg.training.batch_size)
    assert result.dead == ["n3"] and result.finished == others
    edges = {e.a: e for e in result.network.edges}
    assert edges["n3"].active_at_end is False
    assert all(edges[s].active_at_end for s in others)
    assert result.network.server.status == "finished"


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_fedavg_site_restarted_within_the_deadline_rejoins_the_rounds(network, processes):
    # prepare: D = 8 s, longer than a restart takes, so the server keeps waiting for n3
    cfg, layout, _ = network(local_steps=300, inactive_after_s=8.0)
    procs = _start_all(layout, "fedavg", processes)
    n3_dir = layout.node_dir("fedavg", "n3")

    # execute: SIGKILL n3 after its second checkpoint, which it took waiting for the global
    # model of that round; restart it at once with --resume
    wait_for(lambda: last_checkpoint(n3_dir) >= 2, 150, "n3's second checkpoint")
    procs["n3"].kill()
    assert procs["n3"].wait(timeout=10) == -signal.SIGKILL
    procs["n3"] = start_node(layout, "n3", "fedavg", resume=True)
    processes.append(procs["n3"])
    codes = wait_nodes(procs, 300)

    # assert: no deadlock (the resumed n3 does not wait for a global model that went to the
    # process that died): everyone finishes every step, the server every round
    assert codes == {"server": 0, **{s: 0 for s in layout.sites}}
    for s in layout.sites:
        status = node_status(layout.node_dir("fedavg", s))
        assert status.status == "finished" and status.steps == 300
    assert node_status(n3_dir).incarnation == 1
    assert node_status(layout.node_dir("fedavg", "server")).rounds == 75
    # ... and n3's restarted incarnation took part in rounds again (it got global models)
    n3_network = json.loads(RunDir(n3_dir).network_json.read_text())
    assert n3_network["methods"]["fedavg"]["edges"][0]["received_messages"]["server->n3"] >= 1


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_fedavg_server_sigtermed_checkpoints_and_resumes_and_every_site_finishes(
    network, processes
):
    # prepare: 300 steps at 20 steps/s; D = 6 s, so the sites wait for the restarted server
    cfg, layout, _ = network(local_steps=300, inactive_after_s=6.0)
    procs = _start_all(layout, "fedavg", processes)
    server_dir = layout.node_dir("fedavg", "server")

    # execute: SIGTERM the server after its second checkpoint; restart it with --resume
    wait_for(lambda: last_checkpoint(server_dir) >= 2, 150, "the server's second checkpoint")
    procs["server"].send_signal(signal.SIGTERM)
    assert procs["server"].wait(timeout=30) == 0
    stopped = node_status(server_dir)
    assert stopped.status == "stopped" and 0 < stopped.rounds < 75
    procs["server"] = start_server(layout, "fedavg", resume=True)
    processes.append(procs["server"])
    codes = wait_nodes(procs, 300)

    # assert: the server continued from its round count to the last round; all sites finished
    assert codes == {"server": 0, **{s: 0 for s in layout.sites}}
    final = node_status(server_dir)
    assert final.status == "finished" and final.rounds == 75
    assert final.incarnation == 1 and final.resumed_from_checkpoint is not None
    for s in layout.sites:
        status = node_status(layout.node_dir("fedavg", s))
        assert status.status == "finished" and status.steps == 300
        assert status.active_neighbours == ["server"]


@pytest.mark.timeout(180)
def test_server_and_fedavg_site_refuse_a_plan_that_lacks_what_they_need(network, tmp_path):
    # prepare: the plan without training-set sizes, and without the server's address
    cfg, layout, _ = network()
    no_sizes = dataclasses.replace(layout.plan, train_samples={})
    no_server = dataclasses.replace(layout.plan, server_address=None)
    write_plan(tmp_path / "no_sizes.json", no_sizes)
    write_plan(tmp_path / "no_server.json", no_server)

    # execute
    server = _cli(
        "server", "run", "--network", tmp_path / "no_sizes.json", "--pki", layout.pki_dir,
        "--config", layout.config_path, "--out", tmp_path / "server",
    )  # fmt: skip
    site = _cli(
        "site", "run", layout.manifests["n1"], "--method", "fedavg",
        "--network", tmp_path / "no_server.json", "--pki", layout.pki_dir,
        "--config", layout.config_path, "--out", tmp_path / "n1",
    )  # fmt: skip
    ecl_server = _cli(
        "server", "run", "--network", layout.plan_path, "--pki", layout.pki_dir,
        "--method", "ecl", "--config", layout.config_path, "--out", tmp_path / "s2",
    )  # fmt: skip

    # assert: one line each, naming the key; nothing started
    assert server.returncode == 2
    assert server.stderr.strip() == (
        "hospitalnet: error: network plan: sites.n1.train_samples: the server weights the "
        "average by every site's training-set size"
    )
    assert site.returncode == 2 and "server.address" in site.stderr
    assert len(site.stderr.strip().splitlines()) == 1
    assert ecl_server.returncode == 2 and "peer to peer" in ecl_server.stderr
    assert not (tmp_path / "server" / "checkpoints").exists()
    assert not (tmp_path / "n1" / "checkpoints").exists()


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hospitalnet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=150,
    )
