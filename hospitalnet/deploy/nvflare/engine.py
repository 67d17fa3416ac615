"""``hospitalnet simulate --engine nvflare``: the eight hospitals in NVFlare's simulator.

The same preparation as ``--processes`` (:func:`hospitalnet.deploy.launcher.prepare_network`:
world, cached tensors, network plan, config), then per method one NVFlare job
(:mod:`.job`) run by ``nvflare simulator`` as one child process (every hospital a client thread
of it, all in one process), then the same gathering (:func:`hospitalnet.deploy.collect.
collect_method`) into the run directory every mode writes, with ``run.json`` mode ``nvflare``.
The pooled reference trains in this process, as with ``--processes``.

Every wait is bounded: the simulator gets :func:`hospitalnet.deploy.launcher.node_timeout` plus a
start-up allowance, then SIGTERM and SIGKILL to its process group (it starts its own client
workers), by the id of the process this module started. (Checked with nvflare 2.9.0: one
simulator run hung when a client failed to start; the deadline ends it.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hospitalnet
from hospitalnet.config import ExperimentConfig
from hospitalnet.deploy.collect import MethodRun, RunStart, collect_method, run_and_collect
from hospitalnet.deploy.launcher import NetworkLayout, node_timeout, prepare_network
from hospitalnet.deploy.nvflare.job import ALLOW_LIST_ENTRY, JobSpec, write_job
from hospitalnet.rundir import RunDir, atomic_write_bytes

log = logging.getLogger(__name__)

#: NVFlare's simulator start-up (workspace, client workers, registration) on top of training
STARTUP_ALLOWANCE_S = 120.0
STOP_GRACE_S = 15.0


def method_job(layout: NetworkLayout, cfg: ExperimentConfig, method: str) -> Path:
    """The NVFlare job of one method, writing into the layout's ``nodes/<method>/<site>``."""
    spec = JobSpec(
        name=f"hospitalnet-{method}",
        cfg=cfg,
        plan=layout.plan,
        method=method,
        manifests={s: str(layout.manifests[s].resolve()) for s in layout.sites},
        site_out={s: str(layout.node_dir(method, s).resolve()) for s in layout.sites},
        server_out=str((layout.root / "nodes" / method).resolve()),
        global_manifest=str(layout.global_manifest.resolve()),
        cache_dir=str(layout.cache_dir.resolve()),
        threads=1,
    )
    return write_job(spec, layout.root / "nvflare" / method / "job")


def simulator_env() -> dict[str, str]:
    """The child's environment: this package importable, one thread per math library."""
    env = dict(os.environ)
    package_parent = str(Path(hospitalnet.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM the process group led by ``proc`` (the simulator and its workers), wait
    ``grace_s``, then SIGKILL it; ``proc`` was started with its own session, so the group id is
    its pid and nothing else is in it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        if sig is signal.SIGTERM:
            try:  # the leader exited; end any worker it left behind
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
    return proc.returncode


def allow_hospitalnet(workspace: Path) -> None:
    """``WORKSPACE/local/resources.json`` with NVFlare's default class allow list plus ours.

    Checked with nvflare 2.9.0: the simulator, like a provisioned server and client, refuses job
    components outside ``class_allow_list`` ("... is not in allow_list"); the simulator copies
    ``WORKSPACE/local`` into every site's workspace."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    local = workspace / "local"
    local.mkdir(parents=True, exist_ok=True)
    allow = [*DEFAULT_CLASS_ALLOW_LIST, ALLOW_LIST_ENTRY]
    atomic_write_bytes(
        local / "resources.json", (json.dumps({"class_allow_list": allow}, indent=2)).encode()
    )


def run_simulator(job: Path, workspace: Path, sites: tuple[str, ...], timeout_s: float) -> int:
    """``nvflare simulator JOB`` with one client per site, all running at once; bounded."""
    allow_hospitalnet(workspace)
    argv = [
        sys.executable,
        "-m",
        "nvflare.private.fed.app.simulator.simulator",
        str(job),
        "-w",
        str(workspace),
        "-n",
        str(len(sites)),
        "-c",
        ",".join(sites),
        "-t",
        str(len(sites)),
    ]
    workspace.parent.mkdir(parents=True, exist_ok=True)
    with open(workspace.parent / "simulator.log", "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=simulator_env(),
            start_new_session=True,  # its own process group: ended as one, by our pid
        )
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("nvflare simulator still running after %.0f s; stopping it", timeout_s)
    finally:
        stop_group(proc)
    return proc.returncode if proc.returncode is not None else -1


def run_method_nvflare(
    layout: NetworkLayout, cfg: ExperimentConfig, method: str, n_train: int
) -> MethodRun:
    t0 = time.perf_counter()
    job = method_job(layout, cfg, method)
    workspace = layout.root / "nvflare" / method / "workspace"
    rc = run_simulator(job, workspace, layout.sites, node_timeout(cfg) + STARTUP_ALLOWANCE_S)
    result = collect_method(layout, method, n_train, cfg.training.batch_size)
    result.returncodes = {"nvflare simulator": rc}
    result.wall = time.perf_counter() - t0
    if rc != 0:
        log.warning("%s: nvflare simulator exited with %s (log: %s)", method, rc, workspace.parent)
    return result


def run_nvflare(
    cfg: ExperimentConfig, out: Path, *, progress: bool = True, command: str = ""
) -> RunDir:
    """Train the configured methods in NVFlare's simulator; write the merged run directory."""
    start = RunStart.now()
    layout, world = prepare_network(cfg, out, progress=progress)

    def run_method(method: str, n_train: int) -> MethodRun:
        log.info("%s: NVFlare simulator with %d hospitals", method, len(layout.sites))
        return run_method_nvflare(layout, cfg, method, n_train)

    return run_and_collect(
        cfg,
        layout,
        world,
        run_method,
        start,
        log=log,
        progress=progress,
        command=command,
        mode="nvflare",
    )


__all__ = ["method_job", "run_method_nvflare", "run_nvflare", "run_simulator"]
