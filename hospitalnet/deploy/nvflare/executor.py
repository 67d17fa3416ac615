"""One hospital inside NVIDIA FLARE: an NVFlare ``Executor`` around the unchanged site run.

The one task (:data:`~hospitalnet.deploy.nvflare.TRAIN_TASK`) runs
:func:`hospitalnet.deploy.site_process.run_site` for this hospital's manifest, exactly as
``hospitalnet site run`` does, with one difference: the transport is
:class:`~hospitalnet.transport.nvflare.AuxTransport` over NVFlare aux messages (relayed by the
NVFlare server) instead of our own gRPC. The common start is NVFlare's too: once the site's
neighbours answered (``ready.json`` written by
:func:`~hospitalnet.deploy.liveness.wait_for_start`), the executor tells the NVFlare server, and
the server's answer (the start time) becomes the site's start file.

Arguments (``config_fed_client.json``, written by :mod:`hospitalnet.deploy.nvflare.job`):
``manifest`` (this hospital's site manifest), ``config`` and ``plan`` (relative paths are read
from the app's ``config/`` folder), ``method``, ``out`` (the site's run directory; relative =
under the NVFlare client's workspace), ``global_manifest`` and ``cache_dir`` (optional),
``threads`` (torch threads).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from hospitalnet.algorithms import SERVER
from hospitalnet.config import ExperimentConfig, load_config
from hospitalnet.data.manifest import load_manifest
from hospitalnet.deploy.liveness import transport_limits
from hospitalnet.deploy.nvflare import READY_TOPIC, SERVER_IDENTITY, START_TOPIC, TRAIN_TASK
from hospitalnet.deploy.site_process import SiteRunOptions, run_site
from hospitalnet.errors import ConfigError, HospitalnetError
from hospitalnet.plan import load_plan
from hospitalnet.rundir import atomic_write_bytes
from hospitalnet.transport.base import Transport
from hospitalnet.transport.grpc_wire import PayloadSizes
from hospitalnet.transport.nvflare import TOPIC, AuxLink, AuxTransport, multicast

log = logging.getLogger(__name__)

_WATCH_S = 0.1  # how often the abort signal and ready.json are looked at


def app_config_dir(fl_ctx: FLContext) -> Path:
    """The ``config/`` folder of the app NVFlare deployed for this job."""
    root = fl_ctx.get_prop(FLContextKey.APP_ROOT)
    if root:
        return Path(root) / "config"
    workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    return Path(workspace.get_app_config_dir(fl_ctx.get_job_id()))


def resolve(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else base / p


class HospitalnetExecutor(Executor):
    """Runs one hospital's site loop for the length of the job (see the module docstring)."""

    def __init__(
        self,
        manifest: str,
        config: str = "config.yaml",
        plan: str = "network_plan.json",
        method: str = "ecl",
        out: str = "hospitalnet",
        global_manifest: str = "",
        cache_dir: str = "",
        threads: int = 1,
    ) -> None:
        super().__init__()
        self.manifest, self.config, self.plan = manifest, config, plan
        self.method, self.out = method, out
        self.global_manifest, self.cache_dir = global_manifest, cache_dir
        self.threads = int(threads)
        self.link: AuxLink | None = None
        self.start_file: Path | None = None
        self._start_at: str | None = None
        self._start_lock = threading.Lock()

    # ---- NVFlare events and messages ------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            self.link = AuxLink(engine)
            engine.register_aux_message_handler(topic=TOPIC, message_handle_func=self.link.handle)
            engine.register_aux_message_handler(
                topic=START_TOPIC, message_handle_func=self._handle_start
            )

    def _handle_start(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        """The NVFlare server's common start time; it becomes the site's start file."""
        start_at = request.get("start_at")
        try:
            text = f"{float(start_at):.6f}\n"
        except (TypeError, ValueError):
            return make_reply(ReturnCode.BAD_REQUEST_DATA)
        with self._start_lock:
            self._start_at = text
            if self.start_file is not None:
                atomic_write_bytes(self.start_file, text.encode())
        return make_reply(ReturnCode.OK)

    # ---- the task -------------------------------------------------------------------------
    def execute(
        self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Shareable:
        if task_name != TRAIN_TASK:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        site = fl_ctx.get_identity_name()
        try:
            opts, cfg = self._options(fl_ctx)
        except HospitalnetError as err:
            self.log_error(fl_ctx, f"{site}: {err}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        stop = threading.Event()
        watcher = threading.Thread(
            target=self._watch,
            args=(abort_signal, stop, opts.out / "ready.json", fl_ctx.get_engine(), cfg),
            name=f"hn-nvflare-{site}-watch",
            daemon=True,
        )
        watcher.start()
        limits = transport_limits(cfg)
        link = self.link
        assert link is not None, "START_RUN came before the task"
        server_identity = shareable.get(SERVER_IDENTITY)
        if isinstance(server_identity, str) and server_identity not in opts.plan.sites:
            link.aliases[server_identity] = SERVER

        def aux_transport(
            name: str, neighbours: tuple[str, ...], fingerprint: str, numel: PayloadSizes
        ) -> Transport:
            transport = AuxTransport(name, neighbours, fingerprint, numel, link.post, limits)
            link.attach(transport)
            return transport

        try:
            outcome = run_site(opts, cfg, stop, transport_factory=aux_transport)
        except HospitalnetError as err:
            self.log_error(fl_ctx, f"{site}: {err}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        finally:
            stop.set()
            watcher.join(timeout=2.0)
        reply = make_reply(ReturnCode.OK)
        reply["status"], reply["steps"] = outcome.status, outcome.steps
        return reply

    def _options(self, fl_ctx: FLContext) -> tuple[SiteRunOptions, ExperimentConfig]:
        conf_dir = app_config_dir(fl_ctx)
        cfg = load_config(resolve(self.config, conf_dir))
        plan = load_plan(resolve(self.plan, conf_dir))
        out = resolve(self.out, Path.cwd()).resolve()
        out.mkdir(parents=True, exist_ok=True)
        with self._start_lock:
            self.start_file = out / "start"
            if self._start_at is not None:  # a start that came before this task's folder
                atomic_write_bytes(self.start_file, self._start_at.encode())
        manifest = resolve(self.manifest, Path.cwd())
        site, name = load_manifest(manifest)[0].site, fl_ctx.get_identity_name()
        if site != name:  # NVFlare routes by client name: it must be the plan's site name
            raise ConfigError(f"{manifest}: site is {site!r}, but this NVFlare client is {name!r}")
        opts = SiteRunOptions(
            manifest=manifest,
            out=out,
            method=self.method,
            plan=plan,
            global_manifest=resolve(self.global_manifest, Path.cwd())
            if self.global_manifest
            else None,
            cache_dir=resolve(self.cache_dir, Path.cwd()) if self.cache_dir else None,
            start_file=self.start_file,
            command=f"nvflare job ({TRAIN_TASK}, {self.method})",
            # fixed: the simulator runs every site as a thread of one process, so one site's
            # governor would count the others' work as its own (hospitalnet.threads)
            threads=self.threads,
        )
        return opts, cfg

    def _watch(
        self, abort: Signal, stop: threading.Event, ready: Path, engine: Any, cfg: ExperimentConfig
    ) -> None:
        """Stop the site when NVFlare aborts the job; tell the server once the site is ready,
        again every second until the start time came (a fire-and-forget request may be lost)."""
        next_tell = 0.0
        deadline = time.monotonic() + cfg.deploy.max_wall_s + cfg.deploy.startup_wait_s
        while not stop.is_set() and time.monotonic() < deadline:
            if abort.triggered:
                log.warning("NVFlare aborted the job; stopping the site")
                stop.set()
                return
            now = time.monotonic()
            if self._start_at is None and now >= next_tell and ready.is_file():
                request = Shareable()
                request["ready"] = True
                multicast(engine, READY_TOPIC, ["server"], request)  # the NVFlare server
                next_tell = now + 1.0
            stop.wait(_WATCH_S)


__all__ = ["HospitalnetExecutor"]
