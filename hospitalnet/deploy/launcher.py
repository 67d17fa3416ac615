"""`hospitalnet simulate --processes`: the eight hospitals as eight OS processes on 127.0.0.1.

Each hospital is a ``hospitalnet site run`` child process (:mod:`hospitalnet.deploy.site_process`)
with mutual
TLS from a throw-away PKI made in the run directory, the network plan of the configured topology
(:mod:`hospitalnet.plan`) and the same experiment config as the in-process simulation. The
parent only starts the children, waits for them with a deadline (then SIGTERM, then SIGKILL, each
child by its own pid) and gathers their run directories into one, in the layout the in-process
run writes, so that both are compared by the same evaluation::

    RUN_DIR/
      config.yaml, run.json (mode "processes"), data.json, testsets.npz, network.json,
      predictions/<method>.npz, history/<method>.json     (as in-process)
      network_plan.json, pki/                               the network the children used
      nodes/<method>/<site>/                                each child's own run directory
      nodes/<method>/<site>.log                             each child's log
      nodes/<fedavg|fedprox>/server/, server.log            the FedAvg server's

Methods: the peer-to-peer ones (ecl and its variants, gossip, local) run as eight processes;
fedavg / fedprox as eight site processes plus a ninth, the aggregation server
(``hospitalnet server run``, :mod:`hospitalnet.deploy.server_process`), with its own certificate and the plan's
``server.address``; pooled is the centralised reference and is trained in the parent, as
in-process. A site whose process did not finish is left out of the run's ``sites`` and listed in
``network.json`` under ``dead_sites``; its edges show inactive.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hospitalnet
from hospitalnet import pki
from hospitalnet.algorithms import SERVER, make_algorithm
from hospitalnet.config import ExperimentConfig, dump_config
from hospitalnet.deploy.collect import (
    MethodRun,
    RunStart,
    collect_method,
    run_and_collect,
    write_network_run,
)
from hospitalnet.deploy.site_process import TEST_EXIT_AT_STEP
from hospitalnet.plan import NetworkPlan, write_plan
from hospitalnet.rundir import RunDir, atomic_write_bytes
from hospitalnet.rundir_schema import GLOBAL
from hospitalnet.threads import child_environment, thread_budget
from hospitalnet.topology import build_topology
from hospitalnet.world import World, ensure_world, load_world

log = logging.getLogger(__name__)

STOP_GRACE_S = 15.0  # after SIGTERM a child has this long to checkpoint before SIGKILL


@dataclass(frozen=True)
class NetworkLayout:
    """What the child processes of one process network share on disk."""

    root: Path  # the run directory
    sites: tuple[str, ...]
    manifests: dict[str, Path]
    config_path: Path
    plan_path: Path
    pki_dir: Path
    global_manifest: Path
    cache_dir: Path
    plan: NetworkPlan

    def node_dir(self, method: str, site: str) -> Path:
        return self.root / "nodes" / method / site


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_network(
    cfg: ExperimentConfig, out: Path, *, progress: bool = False
) -> tuple[NetworkLayout, World]:
    """World (made once, cached), decoded tensors (cached for the children), PKI, plan, config."""
    out.mkdir(parents=True, exist_ok=True)
    root = ensure_world(cfg, progress=progress)
    world = load_world(cfg, root, progress=progress)  # fills the cache the children read
    sites = tuple(world.train)
    pki_dir = out / "pki"
    if not (pki_dir / pki.CA_CERT).is_file():
        pki.create_ca(pki_dir)
        for site in (*sites, SERVER):
            pki.issue_site_certificate(site, pki_dir, hosts=["127.0.0.1", "localhost"])
    topo = build_topology(cfg.topology, sites, cfg.seed)
    plan = NetworkPlan(
        sites=sites,
        edges=topo.edges,
        addresses={s: f"127.0.0.1:{free_port()}" for s in sites},
        train_samples={s: len(world.train[s]) for s in sites},
        server_address=f"127.0.0.1:{free_port()}",  # used by fedavg / fedprox only
    )
    plan_path = out / "network_plan.json"
    write_plan(plan_path, plan)
    config_path = out / "config.yaml"
    atomic_write_bytes(config_path, dump_config(cfg).encode())
    layout = NetworkLayout(
        root=out,
        sites=sites,
        manifests={s: root / "sites" / s / f"{s}.yaml" for s in sites},
        config_path=config_path,
        plan_path=plan_path,
        pki_dir=pki_dir,
        global_manifest=root / "sites" / GLOBAL / f"{GLOBAL}.yaml",
        cache_dir=root / "cache",
        plan=plan,
    )
    return layout, world


def start_node(
    layout: NetworkLayout,
    site: str,
    method: str,
    *,
    resume: bool = False,
    start_file: Path | None = None,
    test_exit_at_step: int | None = None,
) -> subprocess.Popen:
    """Start ``hospitalnet site run`` for ``site`` as a child process (log next to its folder).

    With ``start_file`` the site waits, once ready, until :func:`release_start` writes it.
    ``test_exit_at_step`` (tests only): the child kills itself with SIGKILL right after that
    local step, a crash at a deterministic point (see ``site_process.TEST_EXIT_AT_STEP``)."""
    argv = [
        "site",
        "run",
        str(layout.manifests[site]),
        "--config",
        str(layout.config_path),
        "--out",
        str(layout.node_dir(method, site)),
        "--pki",
        str(layout.pki_dir),
        "--network",
        str(layout.plan_path),
        "--method",
        method,
        "--global-test",
        str(layout.global_manifest),
        "--cache",
        str(layout.cache_dir),
        "--threads",
        str(_budget(layout)),
    ]
    if resume:
        argv.append("--resume")
    if start_file is not None:
        argv += ["--start-file", str(start_file)]
    extra = {} if test_exit_at_step is None else {TEST_EXIT_AT_STEP: str(int(test_exit_at_step))}
    return _spawn(argv, layout.node_dir(method, site), extra)


def release_start(
    layout: NetworkLayout,
    method: str,
    procs: dict[str, subprocess.Popen],
    start_file: Path,
    timeout_s: float,
    lead_s: float = 0.3,
) -> list[str]:
    """Once every site wrote ``ready.json`` (or exited, or ``timeout_s`` passed), write the
    common start time (``lead_s`` from now) to ``start_file``; return the sites that were late.

    Eight processes starting on a small machine become ready seconds apart; started as they
    come, they would train out of phase for the whole run (see
    :func:`hospitalnet.deploy.liveness.wait_for_start`).
    """
    deadline = time.monotonic() + timeout_s
    waiting = [s for s in layout.sites if s in procs]
    while waiting and time.monotonic() < deadline:
        waiting = [
            s
            for s in waiting
            if procs[s].poll() is None and not (layout.node_dir(method, s) / "ready.json").is_file()
        ]
        time.sleep(0.05)
    if waiting:
        log.warning("%s: not ready by the start: %s", method, ", ".join(waiting))
    atomic_write_bytes(start_file, f"{time.time() + lead_s:.6f}\n".encode())
    return waiting


def start_server(layout: NetworkLayout, method: str, *, resume: bool = False) -> subprocess.Popen:
    """Start ``hospitalnet server run`` (FedAvg / FedProx) as a child process."""
    node_dir = layout.node_dir(method, SERVER)
    argv = [
        "server",
        "run",
        "--network",
        str(layout.plan_path),
        "--pki",
        str(layout.pki_dir),
        "--config",
        str(layout.config_path),
        "--out",
        str(node_dir),
        "--method",
        method,
        "--threads",
        str(_budget(layout)),
    ]
    return _spawn(argv + (["--resume"] if resume else []), node_dir)


def _budget(layout: NetworkLayout) -> int:
    """torch threads per process: the cores shared by every site and the server (usually 1)."""
    return thread_budget(len(layout.sites) + 1)


def _threads_of(args: list[str]) -> int:
    return int(args[args.index("--threads") + 1]) if "--threads" in args else 1


def _spawn(
    args: list[str], node_dir: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``python -m hospitalnet ARGS`` with its thread budget, logging next to ``node_dir``."""
    node_dir.parent.mkdir(parents=True, exist_ok=True)
    env = child_environment(_threads_of(args))
    env.update(extra_env or {})
    package_parent = str(Path(hospitalnet.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    with open(node_dir.parent / f"{node_dir.name}.log", "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "hospitalnet", *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )


def stop_node(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM one child by its pid, wait ``grace_s``, then SIGKILL; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def wait_nodes(procs: dict[str, subprocess.Popen], timeout_s: float) -> dict[str, int | None]:
    """Wait for every child until ``timeout_s``; stragglers are stopped by pid (see stop_node)."""
    deadline = time.monotonic() + timeout_s
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for site, proc in procs.items():
        if proc.poll() is None:
            log.warning("site %s still running at the deadline; stopping it", site)
            stop_node(proc)
    return {site: proc.returncode for site, proc in procs.items()}


def node_timeout(cfg: ExperimentConfig) -> float:
    """How long the parent waits for the children of one method."""
    d = cfg.deploy
    training = cfg.training.local_steps * max(d.step_interval_s, 2.0)  # generous: 2 s a step
    # the children stop themselves at max_wall_s; the parent waits a little longer than that
    return min(d.max_wall_s + 60.0, d.startup_wait_s + training + d.linger_max_s + 120.0)


def run_method_processes(
    layout: NetworkLayout, cfg: ExperimentConfig, method: str, n_train: int
) -> MethodRun:
    """One method: start every site, wait for all (with a deadline), gather."""
    t0 = time.perf_counter()
    procs: dict[str, subprocess.Popen] = {}
    if make_algorithm(method, cfg.ecl, cfg.fedprox, cfg.training).uses_server:
        procs[SERVER] = start_server(layout, method)
    start_file = layout.root / "nodes" / method / "start"
    procs.update(
        {site: start_node(layout, site, method, start_file=start_file) for site in layout.sites}
    )
    try:
        release_start(layout, method, procs, start_file, cfg.deploy.startup_wait_s)
        codes = wait_nodes(procs, node_timeout(cfg))
    finally:
        for proc in procs.values():  # never leave a child behind (e.g. on Ctrl-C)
            if proc.poll() is None:
                stop_node(proc)
    result = collect_method(layout, method, n_train, cfg.training.batch_size)
    result.returncodes = codes
    result.wall = time.perf_counter() - t0
    for site, rc in codes.items():
        if rc != 0:
            log.warning("site %s exited with code %s (log: %s.log)", site, rc, site)
    return result


def run_processes(
    cfg: ExperimentConfig, out: Path, *, progress: bool = True, command: str = ""
) -> RunDir:
    """Train the configured methods with one OS process per site; write the merged run."""
    start = RunStart.now()
    layout, world = prepare_network(cfg, out, progress=progress)

    def run_method(method: str, n_train: int) -> MethodRun:
        server = make_algorithm(method, cfg.ecl, cfg.fedprox, cfg.training).uses_server
        log.info(
            "%s: starting %d site processes%s",
            method,
            len(layout.sites),
            " and the server" if server else "",
        )
        return run_method_processes(layout, cfg, method, n_train)

    return run_and_collect(
        cfg, layout, world, run_method, start, log=log, progress=progress, command=command
    )


__all__ = [
    "MethodRun",
    "NetworkLayout",
    "collect_method",
    "free_port",
    "prepare_network",
    "release_start",
    "run_method_processes",
    "run_processes",
    "start_node",
    "start_server",
    "stop_node",
    "wait_nodes",
    "write_network_run",
]
