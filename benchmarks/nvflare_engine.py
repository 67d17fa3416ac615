"""The quick config on NVIDIA FLARE (simulator and POC) against our gRPC processes and in-process.

    python benchmarks/nvflare_engine.py [--method ecl] [--config configs/quick.yaml] [--out FILE]

For one method on the eight hospitals it measures, per engine:

- ``wall_s``: the method's wall time as its runner sees it (in-process: ``train_method``;
  processes: ``run_method_processes``, start to gathered run; NVFlare simulator:
  ``run_method_nvflare``, the same; POC: provisioning, starting the nine processes, the admin
  session, submitting and the job to its end);
- ``startup_s``: from launch until the last hospital was ready to train (its ``ready.json``,
  written once its neighbours answered), i.e. what comes before the first step;
- per message on the edges: envelope bytes (``bytes_per_message``, what both transports count:
  the same protobuf envelopes) and, for NVFlare, the size of the aux request that carries them
  encoded by NVFlare's FOBS (``nvflare_request_bytes``; without the peer context NVFlare adds,
  so a lower bound of what crosses NVFlare's wire).

Results in benchmarks/results/nvflare_engine.json. One run per engine: the machine is shared,
so the walls carry its load (recorded as the load average).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import command, machine, output_path, save  # noqa: E402
from hospitalnet.assembly import initial_model  # noqa: E402
from hospitalnet.config import load_config  # noqa: E402
from hospitalnet.deploy.collect import MethodRun, collect_method  # noqa: E402
from hospitalnet.deploy.launcher import (  # noqa: E402
    NetworkLayout,
    prepare_network,
    run_method_processes,
)
from hospitalnet.experiment import train_method  # noqa: E402


def ready_after(layout: NetworkLayout, method: str, t0_wall: float) -> float | None:
    """Seconds from ``t0_wall`` until the last hospital wrote its ``ready.json``."""
    times = [
        (layout.node_dir(method, s) / "ready.json").stat().st_mtime
        for s in layout.sites
        if (layout.node_dir(method, s) / "ready.json").is_file()
    ]
    return max(times) - t0_wall if len(times) == len(layout.sites) else None


def edge_bytes(run: MethodRun) -> dict[str, float | int]:
    messages = sum(sum(e.messages.values()) for e in run.network.edges)
    nbytes = sum(sum(e.bytes.values()) for e in run.network.edges)
    return {
        "messages": messages,
        "bytes": nbytes,
        "bytes_per_message": nbytes / max(messages, 1),
    }


def nvflare_request_bytes(cfg) -> dict[str, int]:
    """One dual as our envelopes, and as the FOBS-encoded aux request that carries them."""
    import torch
    from nvflare.apis.shareable import Shareable
    from nvflare.fuel.utils import fobs

    from hospitalnet.messages import Message, MessageKind
    from hospitalnet.transport.grpc import TransportLimits
    from hospitalnet.transport.grpc_wire import envelopes, payload_bytes
    from hospitalnet.transport.nvflare import FRAMES, TOPIC

    flat = initial_model(cfg)
    msg = Message("n1", "n2", MessageKind.DUAL, 4, 1, torch.randn(flat.numel))
    data = payload_bytes(msg, flat.numel)
    frames = [
        e.SerializeToString()
        for e in envelopes(
            msg,
            data,
            sender="n1",
            incarnation=time.time_ns(),
            fingerprint=flat.fingerprint(),
            chunk_bytes=TransportLimits().chunk_bytes,
        )
    ]
    request = Shareable()
    request[FRAMES] = frames
    request.set_header("__topic__", TOPIC)
    return {
        "payload_bytes": len(data),
        "envelope_bytes": sum(len(f) for f in frames),
        "nvflare_request_bytes": len(fobs.dumps(request)),
    }


def run_poc(layout: NetworkLayout, cfg, method: str, n_train: int) -> dict:
    from hospitalnet.deploy.nvflare.engine import method_job
    from hospitalnet.deploy.nvflare.poc import PocNetwork, provision

    t0, t0_wall = time.perf_counter(), time.time()
    kits = provision(layout.root / "poc", list(layout.sites))
    t_prov = time.perf_counter() - t0
    net = PocNetwork(kits, list(layout.sites))
    try:
        net.start()
        sess = net.session(120)
        connected = net.wait_clients(sess, list(layout.sites), 180)
        t_connected = time.perf_counter() - t0
        t_submit_wall = time.time()
        job_id = sess.submit_job(str(method_job(layout, cfg, method)))
        rc, meta = sess.monitor_job_and_return_job_meta(job_id, timeout=600, poll_interval=1.0)
        sess.close()
    finally:
        codes = net.stop()
    wall = time.perf_counter() - t0
    result = collect_method(layout, method, n_train, cfg.training.batch_size)
    return {
        "wall_s": wall,
        "provision_s": t_prov,
        "clients_connected_s": t_connected,
        "connected": sorted(connected),
        "startup_s": ready_after(layout, method, t0_wall),
        "ready_after_submit_s": ready_after(layout, method, t_submit_wall),
        "job": str(rc),
        "job_status": (meta or {}).get("status"),
        "finished": result.finished,
        "dead": result.dead,
        "exit_codes": codes,
        **edge_bytes(result),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="ecl")
    p.add_argument("--config", default=str(ROOT / "configs" / "quick.yaml"))
    p.add_argument("--out", default=None)
    p.add_argument("--skip-poc", action="store_true")
    args = p.parse_args()

    from hospitalnet.deploy.nvflare.engine import run_method_nvflare

    cfg = load_config(args.config)
    training = cfg.training.model_copy(update={"threads": 1})
    cfg = cfg.model_copy(update={"methods": [args.method], "training": training})
    result: dict = {
        "what": "quick config, one method, eight hospitals, per engine",
        "method": args.method,
        "config": args.config,
        "machine": machine(),
        "load_average_at_start": os.getloadavg(),
        "nvflare": __import__("nvflare").__version__,
        "command": command(),
        "engines": {},
    }
    engines = result["engines"]
    with tempfile.TemporaryDirectory(prefix="hn-nvflare-bench-") as tmp:
        root = Path(tmp)
        layout, world = prepare_network(cfg, root / "processes", progress=False)
        n_train = sum(len(t) for t in world.train.values())

        flat = initial_model(cfg)
        t0 = time.perf_counter()
        train_method(args.method, cfg, world, flat, flat.flat.detach().clone(), progress=False)
        engines["in_process"] = {"wall_s": time.perf_counter() - t0, "startup_s": 0.0}
        print("in-process", engines["in_process"], flush=True)

        t0_wall = time.time()
        procs = run_method_processes(layout, cfg, args.method, n_train)
        engines["grpc_processes"] = {
            "wall_s": procs.wall,
            "startup_s": ready_after(layout, args.method, t0_wall),
            "finished": procs.finished,
            "dead": procs.dead,
            **edge_bytes(procs),
        }
        print("gRPC processes", engines["grpc_processes"], flush=True)

        layout2, _ = prepare_network(cfg, root / "nvflare", progress=False)
        t0_wall = time.time()
        sim = run_method_nvflare(layout2, cfg, args.method, n_train)
        engines["nvflare_simulator"] = {
            "wall_s": sim.wall,
            "startup_s": ready_after(layout2, args.method, t0_wall),
            "finished": sim.finished,
            "dead": sim.dead,
            "simulator_exit": sim.returncodes,
            **edge_bytes(sim),
        }
        print("NVFlare simulator", engines["nvflare_simulator"], flush=True)

        if not args.skip_poc:
            layout3, _ = prepare_network(cfg, root / "poc_run", progress=False)
            engines["nvflare_poc"] = run_poc(layout3, cfg, args.method, n_train)
            print("NVFlare POC", engines["nvflare_poc"], flush=True)

    result["message_size"] = nvflare_request_bytes(cfg)
    print("message size", result["message_size"])
    result["load_average_at_end"] = os.getloadavg()
    walls = {k: v["wall_s"] for k, v in engines.items()}
    result["wall_ratio_to_in_process"] = {
        k: float(np.round(v / walls["in_process"], 2)) for k, v in walls.items()
    }
    path = save(result, output_path(args.out, "nvflare_engine.json", smoke=False))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
