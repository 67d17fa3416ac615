"""``hospitalnet nvflare job``: write an NVFlare job folder for the hospital network.

One job serves the simulator, POC mode and a provisioned deployment (NVFlare deploys an app by
site name in all three)::

    JOB/meta.json                            deploy map: app_server -> server, app_nK -> nK
    JOB/app_server/config/config_fed_server.json   HospitalnetController (method, paths)
    JOB/app_nK/config/config_fed_client.json       HospitalnetExecutor (nK's manifest, ...)
    JOB/app_*/config/config.yaml, network_plan.json     our experiment config and network plan

The NVFlare site names are the plan's site names (n1..n8): NVFlare's p2p executors would need
``site-N``, ours do not. The job holds no code: every hospital and the server need
``hospitalnet[nvflare]`` installed and the prefix ``hospitalnet.deploy.nvflare`` in the
``class_allow_list`` of their ``local/resources.json`` (nvflare 2.9.0 refuses job components
outside its default allow list; see :data:`ALLOW_LIST_ENTRY`).

Paths: a manifest path is written as given, resolved to an absolute path when it exists here; a
hospital whose manifest lives elsewhere edits its app's ``manifest`` argument (or builds the job
with its own ``--manifests`` folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hospitalnet.algorithms import make_algorithm
from hospitalnet.config import ExperimentConfig, dump_config, load_config
from hospitalnet.data.manifest import load_manifest
from hospitalnet.deploy.nvflare import TRAIN_TASK
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.plan import NetworkPlan, load_plan, write_plan
from hospitalnet.rundir import atomic_write_bytes

#: what each NVFlare site's ``local/resources.json`` needs in ``class_allow_list``
ALLOW_LIST_ENTRY = "hospitalnet.deploy.nvflare"
CONTROLLER = "hospitalnet.deploy.nvflare.controller.HospitalnetController"
EXECUTOR = "hospitalnet.deploy.nvflare.executor.HospitalnetExecutor"
SERVER_APP = "app_server"


@dataclass(frozen=True)
class JobSpec:
    """What goes into the job.

    ``manifests``: site -> manifest path (absolute where it exists here); ``site_out``: site ->
    run directory (absolute, or relative to the NVFlare client's workspace); ``server_out``:
    the controller's folder (the FedAvg server writes ``server_out/server``)."""

    name: str
    cfg: ExperimentConfig
    plan: NetworkPlan
    method: str
    manifests: dict[str, str]
    site_out: dict[str, str]
    server_out: str = "hospitalnet"
    global_manifest: str = ""
    cache_dir: str = ""
    threads: int = 1


def _dump(path: Path, data: object) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def write_job(spec: JobSpec, out: Path) -> Path:
    """Write the job folder ``out`` (must not exist yet) and return it."""
    if out.exists():
        raise ConfigError(f"{out}: exists; give a new folder for the job")
    sites = list(spec.plan.sites)
    missing = [s for s in sites if s not in spec.manifests]
    if missing:
        raise ConfigError(f"network plan: no manifest for site {missing[0]!r}")
    apps = {SERVER_APP: ["server"], **{f"app_{s}": [s] for s in sites}}
    for app in apps:
        conf = out / app / "config"
        conf.mkdir(parents=True)
        atomic_write_bytes(conf / "config.yaml", dump_config(spec.cfg).encode())
        write_plan(conf / "network_plan.json", spec.plan)
    _dump(
        out / SERVER_APP / "config" / "config_fed_server.json",
        {
            "format_version": 2,
            "workflows": [
                {
                    "id": "hospitalnet",
                    "path": CONTROLLER,
                    "args": {"method": spec.method, "out": spec.server_out},
                }
            ],
            "components": [],
        },
    )
    for s in sites:
        args: dict[str, object] = {
            "manifest": spec.manifests[s],
            "method": spec.method,
            "out": spec.site_out[s],
            "threads": spec.threads,
        }
        if spec.global_manifest:
            args["global_manifest"] = spec.global_manifest
        if spec.cache_dir:
            args["cache_dir"] = spec.cache_dir
        _dump(
            out / f"app_{s}" / "config" / "config_fed_client.json",
            {
                "format_version": 2,
                "executors": [
                    {"tasks": [TRAIN_TASK], "executor": {"path": EXECUTOR, "args": args}}
                ],
                "components": [],
            },
        )
    _dump(
        out / "meta.json",
        {
            "name": spec.name,
            "resource_spec": {},
            "min_clients": len(sites),
            "deploy_map": apps,
        },
    )
    return out


def spec_from_network(
    network: Path,
    config: Path | None,
    method: str,
    *,
    manifests: Path | None = None,
    site_out: str = "hospitalnet",
) -> JobSpec:
    """A job for the plan ``network`` (e.g. ``sites/network.yaml``): each site's manifest is
    ``MANIFESTS/<site>.yaml`` (default: the plan's folder), its run directory ``site_out/<site>``
    under its NVFlare workspace."""
    plan = load_plan(network)
    cfg = load_config(config)
    folder = manifests or network.parent
    paths = {}
    for s in plan.sites:
        path = folder / f"{s}.yaml"
        if path.is_file():
            try:
                manifest, _ = load_manifest(path)
            except DataError as err:
                raise ConfigError(str(err)) from None
            if manifest.site != s:
                raise ConfigError(f"{path}: site is {manifest.site!r}, the plan says {s!r}")
            paths[s] = str(path.resolve())
        else:
            paths[s] = str(path)
    if method == "pooled":
        raise ConfigError("--method pooled: the centralised reference is not a network method")
    make_algorithm(method, cfg.ecl, cfg.fedprox)  # an unknown method fails here
    return JobSpec(
        name=f"hospitalnet-{method}",
        cfg=cfg,
        plan=plan,
        method=method,
        manifests=paths,
        site_out={s: f"{site_out}/{s}" for s in plan.sites},
    )


__all__ = ["ALLOW_LIST_ENTRY", "JobSpec", "spec_from_network", "write_job"]
