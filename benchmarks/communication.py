"""Bytes on the wire per method, and what compressing the PDMM variants' duals costs in accuracy.

On the configured world (default: configs/default.yaml) and topology, every seed runs:

- ``ecl``, ``gossip``, ``fedavg`` (``--methods``) uncompressed, and
- ``ecl-pdmm-damped`` with compressed duals (``--variants``; ``ecl.compression``; the two-way
  ``ecl`` sends models and differences, which these codecs do not apply to):
  ``float16`` (half the bytes), ``topk0.25`` (a quarter of the entries as value + index: half
  the bytes), ``topk0.125`` (a quarter of the bytes),
- ``pooled`` as the accuracy reference.

Per run, from the simulation's per-edge byte counters (payload + a fixed envelope per message):
messages, total bytes, bytes per message, bytes per exchange (one exchange = one message each
way on an edge; for fedavg one site -> server -> site round trip), and the accuracy (mean and
worst site macro AUROC on the global test set, gap to pooled). Compressed variants also report
``auroc_cost``: their mean site macro AUROC minus uncompressed ECL's on the same seed.

Writes benchmarks/results/communication.json. Run from the repository root:
``python benchmarks/communication.py [--seeds 3]``; ``--smoke``: configs/quick.yaml, 12 steps,
one seed, output in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks._common import command, machine, output_path, save, spread  # noqa: E402
from benchmarks.accuracy import Worlds, fmt, headline, run_one, with_overrides  # noqa: E402
from hospitalnet.config import load_config  # noqa: E402
from hospitalnet.experiment import POOLED  # noqa: E402

VARIANTS = {
    "float16": {"compression": "float16"},
    "topk0.25": {"compression": "topk", "topk_fraction": 0.25},
    "topk0.125": {"compression": "topk", "topk_fraction": 0.125},
}


COMPRESSED = "ecl-pdmm-damped"  # the method whose duals the codecs compress


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument(
        "--methods", default="ecl,ecl-pdmm-damped,gossip,fedavg", help="uncompressed methods"
    )
    ap.add_argument("--variants", default=",".join(VARIANTS), help="compressed ECL variants")
    ap.add_argument("--out", default=None, help="JSON (default communication.json in results)")
    ap.add_argument("--smoke", action="store_true", help="quick.yaml, 12 steps, 1 seed")
    args = ap.parse_args()
    if args.smoke:
        args.config = str(ROOT / "configs" / "quick.yaml")
        args.seeds = 1
    out = output_path(args.out, "communication.json", smoke=args.smoke)
    base = with_overrides(load_config(args.config), training={"eval_points": 1})
    if args.smoke:
        base = with_overrides(base, training={"local_steps": 12, "eval_points": 1})
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown {v!r} (known: {', '.join(VARIANTS)})")
    runs: list[tuple[str, str, dict]] = [(m, m, {}) for m in args.methods.split(",") if m]
    runs += [(f"{COMPRESSED}+{v}", COMPRESSED, VARIANTS[v]) for v in variants]
    worlds = Worlds(progress=False)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for seed in range(args.seeds):
        cfg = with_overrides(base, seed=seed)  # type: ignore[arg-type]
        world = worlds.get(base)
        pooled_run = run_one(cfg, world, POOLED, progress=False)
        pooled = next(iter(pooled_run["sites"].values()))
        uncompressed: float | None = None
        for name, method, ecl in runs:
            run_cfg = with_overrides(cfg, ecl=ecl) if ecl else cfg
            run = run_one(run_cfg, world, method, progress=False)
            head = headline(run, pooled)
            messages = run.get("messages_sent") or 0
            total = run.get("bytes_sent") or 0
            per_message = total / messages if messages else None
            row = {
                "name": name,
                "method": method,
                "compression": ecl.get("compression", "none"),
                "topk_fraction": ecl.get("topk_fraction"),
                "seed": seed,
                "messages": messages,
                "bytes_total": total,
                "bytes_per_message": per_message,
                "bytes_per_exchange": 2 * per_message if per_message is not None else None,
                "bytes_per_edge": run.get("bytes_per_edge"),
                **head,
                "pooled_macro_auroc": pooled,
                "error": run.get("error"),
                "wall_s": run["wall_s"],
            }
            if name == COMPRESSED:
                uncompressed = head["mean_site_macro_auroc"]
            row["auroc_cost"] = (
                head["mean_site_macro_auroc"] - uncompressed
                if name.startswith(f"{COMPRESSED}+") and uncompressed is not None
                and head["mean_site_macro_auroc"] is not None
                else None
            )  # fmt: skip
            rows.append(row)
            print(
                f"{name:14s} seed {seed}: {messages:6d} messages, {total / 1e6:9.2f} MB, "
                f"{(per_message or 0) / 1e3:8.1f} kB/message, mean AUROC "
                f"{fmt(head['mean_site_macro_auroc'])}, gap {fmt(head['gap_to_pooled'], True)}"
                + (f", cost {row['auroc_cost']:+.4f}" if row["auroc_cost"] is not None else ""),
                flush=True,
            )
    summary = []
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        summary.append(
            {
                "name": name,
                "bytes_total": spread([r["bytes_total"] for r in group]),
                "bytes_per_exchange": spread([r["bytes_per_exchange"] for r in group]),
                "mean_site_macro_auroc": spread([r["mean_site_macro_auroc"] for r in group]),
                "worst_site_macro_auroc": spread([r["worst_site_macro_auroc"] for r in group]),
                "gap_to_pooled": spread([r["gap_to_pooled"] for r in group]),
                "auroc_cost": spread([r["auroc_cost"] for r in group]),
            }
        )
    ref = next((e for e in summary if e["name"] == COMPRESSED), None)
    print(f"\n{'run':14s} {'total MB':>10s} {'kB/exchange':>12s} {'bytes vs ecl':>12s} "
          f"{'mean AUROC':>10s} {'gap':>7s} {'cost':>7s}")  # fmt: skip
    for e in summary:
        rel = (
            e["bytes_total"]["mean"] / ref["bytes_total"]["mean"]
            if ref and ref["bytes_total"]["mean"]
            else None
        )
        e["bytes_relative_to_ecl"] = rel
        print(
            f"{e['name']:14s} {e['bytes_total']['mean'] / 1e6:10.2f} "
            f"{(e['bytes_per_exchange']['mean'] or 0) / 1e3:12.1f} "
            f"{fmt(rel):>12s} {fmt(e['mean_site_macro_auroc']['mean']):>10s} "
            f"{fmt(e['gap_to_pooled']['mean'], True):>7s} {fmt(e['auroc_cost']['mean'], True):>7s}"
        )
    result = {
        "benchmark": "communication",
        "smoke": args.smoke,
        "command": command(),
        "config": args.config,
        "machine": machine(),
        "seeds": list(range(args.seeds)),
        "topology": base.topology.kind,
        "exchange_every": base.network.exchange_every,
        "rows": rows,
        "summary": summary,
        "wall_s": time.perf_counter() - t_start,
    }
    save(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
