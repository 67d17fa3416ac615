"""How much a short ECL training run slows down when other CPU-bound processes share the machine.

One fixed run (the default config's world, model, batch and eight sites, ECL only, ``--steps``
local steps per site, one evaluation at the end; at the default 60 steps training is most of
it, as in ``hospitalnet simulate``) is timed in a fresh interpreter, per thread setting, in these
cases, side by side:

- ``quiet``          alone;
- ``train``          beside one other training process (this same run, single-threaded, looping);
- ``busy``           beside one pure-Python busy loop;
- ``train+busy``     beside both (two competitors);
- ``train+train``    beside two training processes;
- ``busy-late``, ``train-late``: the competitor starts once the measured run has begun timing.

``slowdown`` = seconds in the case / seconds quiet, same setting (least-disturbed repeat of each;
``slowdown_median`` beside it). ``quiet_vs_reference``: each setting's quiet time over the first
setting's, paired within a repeat. Each measured run is its own
process so that the environment (``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS``) applies before torch is
imported, as it does for the processes hospitalnet starts. The machine's 1-minute load average is
recorded before every measurement: on a shared machine the "quiet" case is only as quiet as the
machine was. Writes benchmarks/results/contention.json. Run from the repository root::

    python benchmarks/contention.py [--steps 60] [--repeats 3] [--settings torch-default,new-default]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import command, machine, output_path, save  # noqa: E402

# Thread settings compared: torch threads for the measured run (None = torch's default, one per
# core) and extra environment, set before torch is imported.
SETTINGS: dict[str, dict[str, Any]] = {
    # the release before #15: torch's default threads (one per core), OpenMP's default policy
    "torch-default": {"threads": None, "env": {}},
    # the workaround: training.threads: 1
    "threads-1": {"threads": 1, "env": {}},
    # torch's default threads with the passive wait policy alone
    "torch-default+passive": {"threads": None, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    # the previous default: one thread and the passive policy
    "threads-1+passive": {"threads": 1, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    # training.threads auto (hospitalnet.threads.ThreadGovernor) under each wait policy
    "auto": {"threads": "auto", "env": {}},
    "auto+passive": {"threads": "auto", "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    # What hospitalnet does by default: the default config's training.threads (auto), OpenMP's
    # default policy (hospitalnet no longer sets one)
    "new-default": {"threads": "config", "env": {}},
}
CASES = {
    "quiet": [],
    "train": ["train"],
    "busy": ["busy"],
    "train+busy": ["train", "busy"],
    "train+train": ["train", "train"],
    # the competitor arrives while the measured run trains (a job that starts later)
    "busy-late": ["busy"],
    "train-late": ["train"],
}


# --------------------------------------------------------------------------- worker processes


def _train_once(steps: int, threads: str, loop: bool, started: bool = False) -> None:
    """Load the default world (cached), then time ECL for ``steps`` local steps per site."""
    import torch  # first: OpenMP reads the environment the setting gave this process

    from hospitalnet.assembly import initial_model, thread_governor
    from hospitalnet.config import ExperimentConfig
    from hospitalnet.experiment import train_method
    from hospitalnet.threads import thread_setting
    from hospitalnet.world import ensure_world, load_world

    cfg = ExperimentConfig()
    cfg = cfg.model_copy(
        update={
            "methods": ["ecl"],
            "training": cfg.training.model_copy(update={"local_steps": steps, "eval_points": 1}),
        }
    )
    world = load_world(cfg, ensure_world(cfg, progress=False), progress=False)
    flat = initial_model(cfg, "cpu")
    w0 = flat.flat.detach().clone()
    # what run_experiment does: a governor for training.threads (or the setting under test)
    governor = None
    if threads != "None":
        sizes = [len(t) for t in world.train.values()]
        governor = thread_governor(cfg, flat, sizes, thread_setting(threads))
    while True:
        if started:  # tell the parent the timed part begins (the late cases)
            print(json.dumps({"started": True}), flush=True)
        t0 = time.perf_counter()
        train_method("ecl", cfg, world, flat, w0, progress=False, threads=governor)
        seconds = time.perf_counter() - t0
        spent = governor.summary() if governor is not None else {}
        print(
            json.dumps({"seconds": seconds, "torch_threads": torch.get_num_threads(), "at": spent})
        )
        sys.stdout.flush()
        if not loop:
            return


def _busy() -> None:
    x = 0
    while True:  # pure Python: holds the GIL and one core, no OpenMP
        x = (x + 1) % 1_000_003


def _spawn(role: str, steps: int, threads: str, env_extra: dict[str, str]) -> subprocess.Popen:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(name, None)  # the setting under test decides, not the caller's shell
    # (before 2026-12-03 the setting's own OMP_WAIT_POLICY was removed here too, so the
    # "+passive" rows of earlier results ran with OpenMP's default policy)
    env.update(env_extra)
    argv = [sys.executable, __file__, "--worker", role, "--steps", str(steps)]
    argv += ["--threads", threads]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen, role: str, timeout: float) -> None:
    """A training competitor is 'running' once it has finished one warm-up run."""
    if role != "train":
        time.sleep(1.0)
        return
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline() if proc.stdout else ""
    if not line or time.monotonic() > deadline:
        raise RuntimeError("competitor did not start")


def measure(setting: str, case: str, steps: int, timeout: float) -> dict[str, Any]:
    spec = SETTINGS[setting]
    late = case.endswith("-late")
    roles = CASES[case]
    competitors: list[subprocess.Popen] = []
    try:
        # Competitors: a single-threaded training process (what another job on a hospital
        # server looks like at its kindest) and a busy loop. Normally they run before the
        # measured run starts; in the "-late" cases they start once its timed part has begun.
        if not late:
            for role in roles:
                proc = _spawn(role, steps, "1", {})
                competitors.append(proc)
                _wait_ready(proc, role, timeout)
        load = os.getloadavg()[0]
        run = _spawn("measure", steps, str(spec["threads"]), spec["env"])
        deadline = time.monotonic() + timeout
        result: dict[str, Any] | None = None
        assert run.stdout is not None
        while result is None and time.monotonic() < deadline:
            line = run.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if msg.get("started") and late:
                competitors += [_spawn(role, steps, "1", {}) for role in roles]
            elif "seconds" in msg:
                result = msg
        run.kill()
        run.wait(timeout=30)
        if result is None:
            return {"seconds": None, "timed_out": True, "load_before": load}
        return {**result, "load_before": load}
    finally:
        for proc in competitors:
            proc.kill()
            proc.wait(timeout=30)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="local steps per site")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per measured run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=("measure", "train", "busy"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="None", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "busy":
        _busy()
    if args.worker is not None:
        _train_once(
            args.steps, args.threads, loop=args.worker == "train", started=args.worker == "measure"
        )
        return

    # A SIGTERM ends the script through its finally blocks, which stop the competitors.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings, cases = args.settings.split(","), args.cases.split(",")
    # Warm the world and decoded-image cache once, outside any measurement.
    _spawn("measure", 1, "1", {}).communicate(timeout=3600)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {c: [] for c in cases} for s in settings}
    for rep in range(args.repeats):
        for case in cases:  # settings side by side within a case and a repeat
            for setting in settings:
                r = measure(setting, case, args.steps, args.timeout)
                runs[setting][case].append(r)
                print(
                    f"rep {rep} {setting:22s} {case:12s} {r.get('seconds')!s:>8.8} s "
                    f"(threads {r.get('torch_threads')}, load {r['load_before']:.1f})",
                    flush=True,
                )
    summary: dict[str, dict[str, Any]] = {}
    for setting in settings:
        secs = {c: [r["seconds"] for r in runs[setting][c] if r["seconds"]] for c in cases}
        quiet = secs.get("quiet") or []
        summary[setting] = {
            c: {
                "seconds_min": min(v) if v else None,
                "seconds_median": statistics.median(v) if v else None,
                "seconds": v,
                # min over repeats: the least-disturbed run of each case (the machine is shared);
                # the median-based ratio is beside it
                "slowdown": (min(v) / min(quiet)) if v and quiet else None,
                "slowdown_median": (statistics.median(v) / statistics.median(quiet))
                if v and quiet
                else None,
            }
            for c, v in secs.items()
        }
    # The quiet speed of each setting against the first one, paired within each repeat (the two
    # ran back to back, so a slow moment of the machine touches both).
    reference = settings[0]
    quiet_vs_reference: dict[str, Any] = {"reference": reference}
    if "quiet" in cases:
        for setting in settings[1:]:
            pairs = zip(runs[setting]["quiet"], runs[reference]["quiet"], strict=True)
            ratios = [
                a["seconds"] / b["seconds"] for a, b in pairs if a["seconds"] and b["seconds"]
            ]
            quiet_vs_reference[setting] = {
                "ratios": ratios,
                "median": statistics.median(ratios) if ratios else None,
                "geometric_mean": math.exp(statistics.fmean(math.log(r) for r in ratios))
                if ratios
                else None,
            }
    result = {
        "benchmark": "contention",
        "command": command(),
        "machine": machine(),
        "steps_per_site": args.steps,
        "settings": {k: {**SETTINGS[k], "threads": str(SETTINGS[k]["threads"])} for k in settings},
        "competitors": "train = this run with 1 torch thread, looping; busy = pure-Python loop",
        "load_average_1min_at_start": os.getloadavg()[0],
        "summary": summary,
        "quiet_vs_reference": quiet_vs_reference,
        "runs": runs,
    }
    path = save(result, output_path(args.out, "contention.json", smoke=False))
    for setting in settings:
        line = ", ".join(
            f"{c} {summary[setting][c]['slowdown']:.2f}x"
            if summary[setting][c]["slowdown"] is not None
            else f"{c} -"
            for c in cases
        )
        quiet = summary[setting].get("quiet", {}).get("seconds_min")
        vs = quiet_vs_reference.get(setting, {}).get("median")
        versus = f" ({vs:.2f}x {reference}'s, median of paired repeats)" if vs else ""
        print(f"{setting:22s} quiet {quiet} s{versus}; slowdown (min-based): {line}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
