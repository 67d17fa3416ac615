"""Hospitals as OS processes on 127.0.0.1 (gRPC, mutual TLS): kills, SIGTERM, resume, rejoin.

RELIABILITY.md checklist items covered here (the message-level ones are in tests/transport):
- kill one of 8 site processes mid-training: the other 7 finish, report it dead and its edges
  inactive, and their mean macro AUROC stays near the run without the kill (the bound and the
  measured differences are in the test);
- freeze a site (SIGSTOP) longer than the deadline, then resume: its neighbour marks it inactive,
  drops its held-back message as stale, and takes it back;
- all neighbours of a site die: it trains on alone, says it is isolated, and does not busy-loop;
- restart the killed site: it resumes from its checkpoint and its edges become active again;
- kill at step N and resume: continues with the same counters (steps, sequence numbers);
- SIGTERM: exit code 0 and a checkpoint that ``--resume`` continues from;
- a site with zero training images refuses to start with a clear error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import checkpoints, last_checkpoint, macro_auroc, sub_network, tiny_config, wait_for

from evaluation.report import render_report
from hospitalnet.checkpoint import load_latest
from hospitalnet.deploy.launcher import (
    collect_method,
    prepare_network,
    release_start,
    start_node,
    wait_nodes,
    write_network_run,
)
from hospitalnet.deploy.site_process import node_status
from hospitalnet.rundir import RunDir, read_arrays

pytestmark = pytest.mark.network


KILL_STEP = 60  # of 120: the middle of training


def _run_eight(cfg, layout, world, processes, kill: str | None):
    start = layout.root / "start"  # a common start, as `simulate --processes` gives
    procs = {
        s: start_node(
            layout, s, "ecl", start_file=start, test_exit_at_step=KILL_STEP if s == kill else None
        )
        for s in layout.sites
    }  # the killed site SIGKILLs itself right after step KILL_STEP: the same point every run
    processes.extend(procs.values())
    assert release_start(layout, "ecl", procs, start, 120) == []
    codes = wait_nodes(procs, 200)
    n_train = sum(len(t) for t in world.train.values())
    result = collect_method(layout, "ecl", n_train, cfg.training.batch_size)
    run = write_network_run(
        layout, cfg, world, {"ecl": result}, started="", command="test", total_wall=0.0
    )
    return codes, result, run


def _mean_auroc(run: RunDir, sites: list[str]) -> float:
    preds = read_arrays(run.predictions("ecl"))
    labels = read_arrays(run.testsets)["global__labels"]
    return float(np.mean([macro_auroc(labels, preds[f"final__{s}__global"]) for s in sites]))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killing_one_of_eight_sites_leaves_the_other_seven_finishing_as_well(
    network, processes, tmp_path
):
    # prepare: the no-fault run of the eight-site network, on a world whose shared test set
    # (about 540 images) makes two no-fault runs agree well inside the bound
    cfg, layout, world = network(patients=1000)
    codes, clean, _ = _run_eight(cfg, layout, world, processes, kill=None)
    assert codes == {s: 0 for s in layout.sites}
    assert clean.finished == list(layout.sites)
    # the same network again (fresh node folders), n3 killed after its first checkpoint
    layout2, world2 = prepare_network(cfg, tmp_path / "fault")

    # execute
    codes2, fault, run2 = _run_eight(cfg, layout2, world2, processes, kill="n3")

    # assert: the seven others exit 0 and finish every step
    others = [s for s in layout.sites if s != "n3"]
    assert codes2["n3"] == -signal.SIGKILL
    assert all(codes2[s] == 0 for s in others)
    assert fault.finished == others and fault.dead == ["n3"]
    for s in others:
        assert node_status(layout2.node_dir("ecl", s)).steps == cfg.training.local_steps
    # ... n3's neighbours saw it go inactive; the run report lists it dead, its edges inactive
    neighbours = list(layout2.plan.topology().neighbours("n3"))
    assert neighbours, "n3 has neighbours in the plan"
    for s in neighbours:
        assert "n3" not in node_status(layout2.node_dir("ecl", s)).active_neighbours
    network_json = json.loads(run2.network_json.read_text())["methods"]["ecl"]
    assert network_json["dead_sites"] == ["n3"]
    n3_edges = [e for e in network_json["edges"] if "n3" in (e["a"], e["b"])]
    assert len(n3_edges) == len(neighbours)
    assert all(not e["active_at_end"] and e["inactive_events"] >= 1 for e in n3_edges)
    assert all(e["active_at_end"] for e in network_json["edges"] if e not in n3_edges)
    html = render_report(run2.root, n_resamples=0).html.read_text()
    assert "Dead sites" in html and "n3" in html
    # ... and the seven models are as good as without the failure
    clean_auroc = _mean_auroc(RunDir(layout.root), others)
    fault_auroc = _mean_auroc(run2, others)
    print(f"mean macro AUROC of the 7: no fault {clean_auroc:.4f}, n3 killed {fault_auroc:.4f}")
    # The kill is at a fixed step (KILL_STEP, the process kills itself) and both runs start every
    # site at one agreed instant; the shared test set is about 540 images (was 163, where labels
    # with a handful of positives made single runs vary by up to 0.0235). Measured |fault -
    # clean|: see the commit that set this bound.
    assert abs(fault_auroc - clean_auroc) <= 0.02


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_then_sigtermed_site_resumes_from_its_checkpoints_and_rejoins(network, processes):
    # prepare: two neighbours n1 - n2, long enough for two restarts of n2
    cfg, full, _ = network(local_steps=300, step_interval_s=0.1, linger_max_s=40.0)
    layout = sub_network(full, ["n1", "n2"], [("n1", "n2")])
    n1 = start_node(layout, "n1", "ecl")
    n2 = start_node(layout, "n2", "ecl")
    processes.extend([n1, n2])
    n2_dir = layout.node_dir("ecl", "n2")

    # execute 1: SIGKILL n2 after its second checkpoint; restart it with --resume
    wait_for(lambda: len(checkpoints(n2_dir)) >= 2, 150, "n2's second checkpoint")
    n2.kill()
    assert n2.wait(timeout=10) == -signal.SIGKILL
    at_kill = load_latest(n2_dir / "checkpoints", _fingerprint(n2_dir, layout, cfg))
    n2 = start_node(layout, "n2", "ecl", resume=True)
    processes.append(n2)
    # execute 2: once it checkpointed again, SIGTERM it: exit 0 with a final checkpoint
    wait_for(lambda: last_checkpoint(n2_dir) > at_kill.index, 150, "a checkpoint after restart")
    n2.send_signal(signal.SIGTERM)
    assert n2.wait(timeout=30) == 0
    stopped = node_status(n2_dir)
    after_term = load_latest(n2_dir / "checkpoints", _fingerprint(n2_dir, layout, cfg))
    assert stopped.status == "stopped"
    assert after_term.meta["step"] == stopped.steps > at_kill.meta["step"]
    n2 = start_node(layout, "n2", "ecl", resume=True)
    processes.append(n2)
    codes = wait_nodes({"n1": n1, "n2": n2}, 200)

    # assert: both finish every step; n2 continued from its checkpoints each time
    assert codes == {"n1": 0, "n2": 0}
    final_n1, final_n2 = node_status(layout.node_dir("ecl", "n1")), node_status(n2_dir)
    assert final_n1.status == final_n2.status == "finished"
    assert final_n1.steps == final_n2.steps == cfg.training.local_steps
    assert final_n2.incarnation == 2 and final_n2.resumed_from_checkpoint is not None
    losses = json.loads(RunDir(n2_dir).history("ecl").read_text())["loss"]
    assert [p["local_step"] for p in losses] == list(range(0, cfg.training.local_steps, 10))
    # ... n1 saw n2 go inactive and come back, and took n2's messages after the restarts
    events = json.loads(RunDir(layout.node_dir("ecl", "n1")).history("ecl").read_text())
    kinds = [e["kind"] for e in events["events"] if e.get("peer") == "n2"]
    assert "edge_inactive" in kinds
    assert kinds.index("edge_active", kinds.index("edge_inactive")) > 0
    assert final_n1.active_neighbours == ["n2"]
    edge = json.loads(RunDir(layout.node_dir("ecl", "n1")).network_json.read_text())
    edge = edge["methods"]["ecl"]["edges"][0]
    assert edge["received_messages"]["n2->n1"] >= cfg.training.local_steps // 4 // 2
    # n2's sequence numbers restarted above the replay marks: nothing of it counted duplicate
    assert edge["duplicates"] == 0


def _fingerprint(node_dir, layout, cfg) -> str:
    record = json.loads(sorted((node_dir / "checkpoints").glob("ckpt-*.json"))[-1].read_text())
    return record["model_fingerprint"]


@pytest.mark.timeout(180)
def test_a_site_without_training_images_refuses_to_start_with_a_clear_error(world_cache, tmp_path):
    # prepare: a manifest whose image list names no image
    cfg = tiny_config(world_cache)
    layout, _ = prepare_network(cfg, tmp_path / "run")
    manifest = layout.manifests["n3"]
    empty = tmp_path / "n3"
    empty.mkdir()
    header = (manifest.parent / "images.csv").read_text().splitlines()[0]
    (empty / "images.csv").write_text(header + "\n")
    doc = yaml.safe_load(manifest.read_text())
    doc["data"]["root"] = str(manifest.parent.parent.parent / "nih")
    doc["data"]["options"]["image_list"] = str(empty / "images.csv")
    (empty / "n3.yaml").write_text(yaml.safe_dump(doc))

    # execute
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hospitalnet",
            "site",
            "run",
            str(empty / "n3.yaml"),
            "--config",
            str(layout.config_path),
            "--out",
            str(tmp_path / "out"),
            "--pki",
            str(layout.pki_dir),
            "--network",
            str(layout.plan_path),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )

    # assert: one line, exit != 0, nothing trained
    assert done.returncode != 0
    assert "n3" in done.stderr and (
        "no training images" in done.stderr or "no images" in done.stderr
    )
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_frozen_neighbour_is_dropped_stale_and_taken_back_then_a_lone_site_trains_on(
    network, processes
):
    # prepare: n1 - n2, 300 steps at 20 steps/s; D = 2 s, S = 16 steps
    cfg, full, _ = network(local_steps=300, step_interval_s=0.05)
    cfg = cfg.model_copy(update={"network": cfg.network.model_copy(update={"staleness_bound": 16})})
    from hospitalnet.config import dump_config

    full.config_path.write_text(dump_config(cfg))
    layout = sub_network(full, ["n1", "n2"], [("n1", "n2")])
    n1, n2 = start_node(layout, "n1", "ecl"), start_node(layout, "n2", "ecl")
    processes.extend([n1, n2])
    n1_dir = layout.node_dir("ecl", "n1")

    # execute: freeze n2 for 4 s (> D) once training runs, thaw it; later kill it for good
    n2_dir = layout.node_dir("ecl", "n2")
    wait_for(lambda: checkpoints(n2_dir), 150, "n2 training")
    n2.send_signal(signal.SIGSTOP)
    frozen_at = last_checkpoint(n2_dir)
    time.sleep(4.0)
    n2.send_signal(signal.SIGCONT)
    wait_for(lambda: last_checkpoint(n2_dir) >= frozen_at + 2, 60, "n2 training again")
    n2.kill()
    n2.wait(timeout=10)
    time.sleep(3.0)  # > D: n1 notices it is alone
    cpu_before, t_before = _cpu_seconds(n1.pid), time.monotonic()
    time.sleep(2.0)
    cpu_rate = (_cpu_seconds(n1.pid) - cpu_before) / (time.monotonic() - t_before)
    codes = wait_nodes({"n1": n1}, 120)

    # assert: n1 finished alone, said so, and never spun a core while pacing/idle
    assert codes == {"n1": 0}
    status = node_status(n1_dir)
    assert status.status == "finished" and status.steps == cfg.training.local_steps
    assert status.isolated is True and status.active_neighbours == []
    history = json.loads(RunDir(n1_dir).history("ecl").read_text())
    kinds = [(e["kind"], e.get("peer")) for e in history["events"]]
    first_inactive = kinds.index(("edge_inactive", "n2"))
    back = kinds.index(("edge_active", "n2"), first_inactive)
    assert ("isolated", None) in kinds[back:]
    edge = json.loads(RunDir(n1_dir).network_json.read_text())["methods"]["ecl"]["edges"][0]
    assert edge["stale"] >= 1  # the dual n2 made before the freeze arrived > S steps late
    assert cpu_rate < 0.6, f"n1 used {cpu_rate:.2f} CPU-seconds per second while alone"
