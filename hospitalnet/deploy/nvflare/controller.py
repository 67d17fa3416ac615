"""The NVFlare server's side of a hospitalnet job: one task for every hospital, and nothing more
than a launcher would do.

:class:`HospitalnetController` (an NVFlare ``Controller``, the job's one workflow):

1. **Task.** Broadcasts :data:`~hospitalnet.deploy.nvflare.TRAIN_TASK` to every hospital of
   the plan; each runs its own site loop until it is done (:mod:`.executor`).
2. **Common start.** Once every hospital said it is ready (its neighbours answered), or
   ``deploy.startup_wait_s`` after the first one did (a ready site waits no longer), it sends every ready hospital the same start time
   (``lead_s`` from now), as :func:`hospitalnet.deploy.launcher.release_start` does for processes;
   a hospital ready later gets it at once.
3. **FedAvg / FedProx.** The aggregation server is ours, not NVFlare's FedAvg workflow: this
   controller runs :func:`hospitalnet.deploy.server_process.run_server` (the same
   :class:`~hospitalnet.site.ServerNode` as the simulation and ``hospitalnet server run``) in a
   thread, over the NVFlare transport under the name ``server``, which NVFlare routes to its own
   server. Why not NVFlare's ``FedAvg`` controller and client API: it would be another
   implementation of the rounds (its own weighting, its own timeouts, no per-site liveness: a
   hospital silent for D is dropped from our rounds at once but NVFlare waits for it 60-600 s),
   and its predictions would no longer equal the simulation's (the test that says the engines
   compute the same thing).
4. **End.** When every hospital answered, or some did and the rest stayed silent for
   ``deploy.linger_max_s + deploy.inactive_after_s + 10`` s (killed: NVFlare would wait for them
   for the task's whole timeout), or the task timed out. Every wait has a deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from hospitalnet.algorithms import SERVER, make_algorithm
from hospitalnet.config import load_config
from hospitalnet.deploy.launcher import node_timeout
from hospitalnet.deploy.liveness import transport_limits
from hospitalnet.deploy.nvflare import READY_TOPIC, SERVER_IDENTITY, START_TOPIC, TRAIN_TASK
from hospitalnet.deploy.nvflare.executor import app_config_dir, resolve
from hospitalnet.deploy.server_process import ServerRunOptions, run_server
from hospitalnet.plan import load_plan
from hospitalnet.transport.base import Transport
from hospitalnet.transport.grpc_wire import PayloadSizes
from hospitalnet.transport.nvflare import TOPIC, AuxLink, AuxTransport, multicast

log = logging.getLogger(__name__)

_TICK_S = 0.2


class HospitalnetController(Controller):
    """The job's workflow on the NVFlare server (see the module docstring)."""

    def __init__(
        self,
        config: str = "config.yaml",
        plan: str = "network_plan.json",
        method: str = "ecl",
        out: str = "hospitalnet",
        lead_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.config, self.plan, self.method, self.out = config, plan, method, out
        self.lead_s = float(lead_s)
        self.link: AuxLink | None = None
        self._lock = threading.Lock()
        self._ready: set[str] = set()
        self._answered: dict[str, str] = {}
        self._start_at: float | None = None
        self._first_sent: float | None = None  # monotonic time the first task went out
        self._first_ready: float | None = None  # monotonic time the first site was ready
        self._engine = None

    # ---- NVFlare hooks --------------------------------------------------------------------
    def start_controller(self, fl_ctx: FLContext) -> None:
        engine = self._engine = fl_ctx.get_engine()
        self.link = AuxLink(engine)
        engine.register_aux_message_handler(topic=TOPIC, message_handle_func=self.link.handle)
        engine.register_aux_message_handler(topic=READY_TOPIC, message_handle_func=self._on_ready)

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx
    ) -> None:
        self.log_warning(fl_ctx, f"result of unknown task {task_name!r} from {client.name}")

    def _on_ready(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        site = request.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default=None)
        if not isinstance(site, str):
            return make_reply(ReturnCode.BAD_REQUEST_DATA)
        with self._lock:
            self._ready.add(site)
            start_at = self._start_at
        if start_at is not None:  # ready after the release (or its start was lost): at once
            self._send_start([site], start_at)
        return make_reply(ReturnCode.OK)

    def _on_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        result = client_task.result
        rc = result.get_return_code(ReturnCode.OK) if result is not None else "no result"
        status = result.get("status", "?") if result is not None else "?"
        with self._lock:
            self._answered[client_task.client.name] = f"{rc}/{status}"
        client_task.result = None  # nothing to keep

    def _send_start(self, sites: list[str], start_at: float) -> None:
        if not sites or self._engine is None:
            return
        request = Shareable()
        request["start_at"] = start_at
        multicast(self._engine, START_TOPIC, sites, request)

    # ---- the workflow ---------------------------------------------------------------------
    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        conf_dir = app_config_dir(fl_ctx)
        cfg = load_config(resolve(self.config, conf_dir))
        plan = load_plan(resolve(self.plan, conf_dir))
        d, sites = cfg.deploy, list(plan.sites)
        stop = threading.Event()
        server = self._start_server(cfg, plan) if self._uses_server(cfg) else None
        server_thread = None
        if server is not None:
            server_thread = threading.Thread(
                target=server, args=(stop,), name="hn-nvflare-server", daemon=True
            )

        def task_sent(client_task: ClientTask, fl_ctx: FLContext) -> None:
            # The startup wait (ours and the server loop's) counts from the first hospital's
            # task: nvflare 2.9.0's simulator starts its clients 30-50 s after the server.
            with self._lock:
                if self._first_sent is None:
                    self._first_sent = time.monotonic()
                if server_thread is not None and server_thread.ident is None:
                    server_thread.start()

        timeout = int(node_timeout(cfg)) + 1
        data = Shareable()
        data[SERVER_IDENTITY] = fl_ctx.get_identity_name()
        task = Task(
            TRAIN_TASK,
            data,
            timeout=timeout,
            after_task_sent_cb=task_sent,
            result_received_cb=self._on_result,
        )
        self.broadcast(task, fl_ctx, targets=sites, min_responses=len(sites))
        t0 = time.monotonic()
        grace = d.linger_max_s + d.inactive_after_s + 10.0
        first_answer: float | None = None
        try:
            while time.monotonic() - t0 < timeout + 5:
                if abort_signal.triggered:
                    return
                now = time.monotonic()
                with self._lock:
                    ready, answered = set(self._ready), dict(self._answered)
                    released = self._start_at is not None
                    if ready and self._first_ready is None:
                        self._first_ready = now
                    first_ready = self._first_ready
                # a ready site waits for the start at most startup_wait_s (wait_for_start)
                late = first_ready is not None and now - first_ready >= d.startup_wait_s
                if not released and (ready >= set(sites) or late):
                    with self._lock:
                        self._start_at = start_at = time.time() + self.lead_s
                    late = sorted(set(sites) - ready)
                    if late:
                        self.log_warning(fl_ctx, f"not ready by the start: {', '.join(late)}")
                    self._send_start(sorted(ready), start_at)
                if set(answered) >= set(sites) or task.completion_status is not None:
                    break
                if answered and first_answer is None:
                    first_answer = now
                if first_answer is not None and now - first_answer > grace:
                    silent = sorted(set(sites) - set(answered))
                    self.log_warning(fl_ctx, f"no answer from {', '.join(silent)}; ending")
                    break
                abort_signal_wait(abort_signal, _TICK_S)
        finally:
            self.cancel_task(task, fl_ctx=fl_ctx)
            stop.set()
            if server_thread is not None and server_thread.ident is not None:
                server_thread.join(timeout=d.linger_max_s + 10.0)
        self.log_info(fl_ctx, f"hospitalnet job over: {self._answered}")

    def _uses_server(self, cfg) -> bool:
        return make_algorithm(self.method, cfg.ecl, cfg.fedprox).uses_server

    def _start_server(self, cfg, plan):
        """Our FedAvg/FedProx server loop, over the NVFlare transport as ``server``."""
        link = self.link
        assert link is not None
        limits = transport_limits(cfg)

        def aux_transport(
            name: str, neighbours: tuple[str, ...], fingerprint: str, numel: PayloadSizes
        ) -> Transport:
            transport = AuxTransport(name, neighbours, fingerprint, numel, link.post, limits)
            link.attach(transport)
            return transport

        out = resolve(self.out, Path.cwd()).resolve() / SERVER
        opts = ServerRunOptions(
            plan=plan,
            out=out,
            pki_dir=Path("."),  # unused: NVFlare's provisioning holds the certificates
            method=self.method,
            command=f"nvflare job ({self.method} server)",
        )

        def serve(stop: threading.Event) -> None:
            try:
                run_server(opts, cfg, stop, transport_factory=aux_transport)
            except Exception:  # the thread must not die silently
                log.exception("the %s server failed", self.method)

        return serve


def abort_signal_wait(abort_signal: Signal, seconds: float) -> None:
    """Sleep ``seconds`` unless the job is aborted first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not abort_signal.triggered:
        time.sleep(min(0.05, seconds))


__all__ = ["HospitalnetController"]
