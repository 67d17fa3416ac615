"""NVFlare's POC mode on one machine: provision, start, submit, stop (tests and benchmarks).

What ``nvflare poc prepare/start`` does, done here step by step so that every process is ours to
end by its id and every wait has a deadline (checked with nvflare 2.9.0: ``nvflare poc stop``
failed and left processes running, so the test cannot rely on it):

1. :func:`provision`: ``nvflare provision`` of a project (the NVFlare server ``localhost`` on
   two free ports of 127.0.0.1, one client per hospital, one admin) -- real startup kits with
   their own root CA, mutual TLS between every client and the server, as in a deployment.
   Each kit's ``local/resources.json`` gets NVFlare's default class allow list plus
   :data:`~hospitalnet.deploy.nvflare.job.ALLOW_LIST_ENTRY`.
2. :meth:`PocNetwork.start`: the server and each client as a child process, started the way the
   kit's ``sub_start.sh`` starts them, each in its own session (a client starts its job
   processes as children: the whole group is ended).
3. :meth:`PocNetwork.submit`: the job through the admin API (``flare_api``) with the admin kit.
4. :meth:`PocNetwork.stop`: the admin ``shutdown`` is not relied on: SIGTERM, then SIGKILL, to
   each process group we started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hospitalnet.deploy.launcher import free_port
from hospitalnet.deploy.nvflare.engine import simulator_env
from hospitalnet.deploy.nvflare.job import ALLOW_LIST_ENTRY
from hospitalnet.errors import NetworkError
from hospitalnet.rundir import atomic_write_bytes

log = logging.getLogger(__name__)

SERVER_NAME = "localhost"  # the server's name is the host clients dial (and its certificate's)
ADMIN = "admin@hospitalnet.local"
ORG = "hospitalnet"


def project(name: str, sites: list[str], fl_port: int, admin_port: int) -> dict:
    """An NVFlare project (``project.yml``) for the hospitals ``sites``."""
    participants = [
        {
            "name": SERVER_NAME,
            "type": "server",
            "org": ORG,
            "fed_learn_port": fl_port,
            "admin_port": admin_port,
        },
        *({"name": s, "type": "client", "org": ORG} for s in sites),
        {"name": ADMIN, "type": "admin", "org": ORG, "role": "project_admin"},
    ]
    return {
        "api_version": 3,
        "name": name,
        "description": "hospitalnet on NVIDIA FLARE",
        "participants": participants,
        "builders": [
            {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder"},
            {
                "path": "nvflare.lighter.impl.static_file.StaticFileBuilder",
                "args": {"config_folder": "config"},
            },
            {"path": "nvflare.lighter.impl.cert.CertBuilder"},
            {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
        ],
    }


def server_ports(kits: Path) -> tuple[int, int]:
    """The (federated learning, admin) ports of a provisioned project."""
    conf = yaml.safe_load((kits.parent.parent.parent / "project.yml").read_text())
    server = next(p for p in conf["participants"] if p["type"] == "server")
    return int(server["fed_learn_port"]), int(server["admin_port"])


def allow_in_kit(kit: Path) -> None:
    """``KIT/local/resources.json``: the kit's defaults with our prefix on the allow list."""
    local = kit / "local"
    resources = json.loads((local / "resources.json.default").read_text())
    allow = resources.setdefault("class_allow_list", [])
    if ALLOW_LIST_ENTRY not in allow:
        allow.append(ALLOW_LIST_ENTRY)
    atomic_write_bytes(local / "resources.json", json.dumps(resources, indent=2).encode())


def provision(
    root: Path, sites: list[str], name: str = "hospitalnet", ports: tuple[int, int] | None = None
) -> Path:
    """Startup kits for ``sites`` under ``root`` (a new root CA), the server on ``ports``
    (federated learning, admin; None = two free ones); returns the kits' folder."""
    root.mkdir(parents=True, exist_ok=True)
    fl_port, admin_port = ports or (free_port(), free_port())
    while admin_port == fl_port:
        admin_port = free_port()
    project_file = root / "project.yml"
    atomic_write_bytes(
        project_file, yaml.safe_dump(project(name, sites, fl_port, admin_port)).encode()
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nvflare.cli",
            "provision",
            "-p",
            str(project_file),
            "-w",
            str(root / "ws"),
        ],
        cwd=root,
        capture_output=True,
        timeout=120,
        env=simulator_env(),
    )
    kits = root / "ws" / name / "prod_00"
    if proc.returncode != 0 or not kits.is_dir():
        raise NetworkError(
            f"nvflare provision failed: {proc.stderr.decode(errors='replace')[-500:]}"
        )
    for participant in (SERVER_NAME, *sites):
        allow_in_kit(kits / participant)
    return kits


@dataclass
class PocNetwork:
    """The processes of one POC network (server and clients), each ended by its own id."""

    kits: Path
    sites: list[str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_participant(self, name: str, kit: Path | None = None) -> subprocess.Popen:
        """Start the server (``name`` = ``localhost``) or a client from its kit, as the kit's
        ``sub_start.sh`` does, in its own process group; log in ``KIT/log.out``."""
        kit = kit or self.kits / name
        if name == SERVER_NAME:
            module, conf, extra = (
                "nvflare.private.fed.app.server.server_train",
                "fed_server.json",
                [],
            )
        else:
            module, conf, extra = (
                "nvflare.private.fed.app.client.client_train",
                "fed_client.json",
                [f"uid={name}"],
            )
        argv = [
            sys.executable, "-u", "-m", module, "-m", str(kit), "-s", conf,
            "--set", "secure_train=true", *extra, f"org={ORG}", "config_folder=config",
        ]  # fmt: skip
        with open(kit / "log.out", "ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=kit,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=simulator_env(),
                start_new_session=True,
            )
        self.procs[name if kit == self.kits / name else f"{name}@{kit}"] = proc
        return proc

    def start(self) -> None:
        self.start_participant(SERVER_NAME)
        for site in self.sites:
            self.start_participant(site)

    def session(self, timeout_s: float = 60.0):
        """An admin session (``flare_api``), retried until the server answers or the deadline."""
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return new_secure_session(ADMIN, str(self.kits / ADMIN), timeout=10.0)
            except Exception as err:  # the server is still starting
                if time.monotonic() > deadline:
                    raise NetworkError(f"no admin session with the NVFlare server: {err}") from None
                time.sleep(1.0)

    def wait_clients(self, sess, names: list[str], timeout_s: float) -> list[str]:
        """Wait until ``names`` are connected to the server (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        connected: list[str] = []
        while time.monotonic() < deadline:
            connected = [c.name for c in sess.get_connected_client_list()]
            if set(names) <= set(connected):
                break
            time.sleep(1.0)
        return connected

    def stop(self, grace_s: float = 10.0) -> dict[str, int | None]:
        """SIGTERM every process group we started, then SIGKILL what is left; by id only."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)  # the job processes a client started, too
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("process %d did not end after SIGKILL", proc.pid)
        return {name: proc.returncode for name, proc in self.procs.items()}


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group's id is the pid of the process we started
    except ProcessLookupError:
        pass


__all__ = [
    "ADMIN",
    "SERVER_NAME",
    "PocNetwork",
    "allow_in_kit",
    "project",
    "provision",
    "server_ports",
]
