"""Print the README results table (Markdown) from benchmarks/results/*.json.

Reads the ``main`` summary of accuracy results (method, topology, mean site macro AUROC
mean +- std over seeds, worst site, gap to pooled), and adds the compressed-ECL rows of
communication results and the throughput ratio when present. Smoke runs (``"smoke": true``) are
skipped. Every table row says which command and machine produced it.

``python benchmarks/results_table.py [--results benchmarks/results]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def pm(stat: dict[str, Any] | None, signed: bool = False) -> str:
    """``mean +- std`` of a spread record (``n/a`` when nothing was defined)."""
    if not stat or not stat.get("n"):
        return "n/a"
    sign = "+" if signed else ""
    return f"{stat['mean']:{sign}.3f} ± {stat['std']:.3f}"


def machine_text(m: dict[str, Any]) -> str:
    gpu = f", {m['cuda']}" if m.get("cuda") else ""
    return f"{m.get('processor', '?')}, {m.get('cpu_count', '?')} cores, {m.get('torch_threads', '?')} threads{gpu}"


def accuracy_rows(result: dict[str, Any]) -> list[str]:
    rows = []
    cmd, mach = result.get("command", "?"), machine_text(result.get("machine", {}))
    for e in result.get("main", {}).get("summary", []):
        seeds = e["mean_site_macro_auroc"]["n"]
        rows.append(
            f"| {e['method']} | {e['topology']} | {pm(e['mean_site_macro_auroc'])} | "
            f"{pm(e['worst_site_macro_auroc'])} | {pm(e['gap_to_pooled'], signed=True)} | "
            f"{seeds} | `{cmd}` | {mach} |"
        )
    return rows


def communication_rows(result: dict[str, Any]) -> list[str]:
    rows = []
    cmd, mach = result.get("command", "?"), machine_text(result.get("machine", {}))
    for e in result.get("summary", []):
        rel = e.get("bytes_relative_to_ecl")
        rows.append(
            f"| {e['name']} | {result.get('topology', '?')} | {e['bytes_total']['mean'] / 1e6:.1f} MB"
            f" ({rel:.2f} x ecl) | {pm(e['mean_site_macro_auroc'])} | "
            f"{pm(e['gap_to_pooled'], signed=True)} | `{cmd}` | {mach} |"
            if rel is not None
            else f"| {e['name']} | ? | n/a | {pm(e['mean_site_macro_auroc'])} | "
            f"{pm(e['gap_to_pooled'], signed=True)} | `{cmd}` | {mach} |"
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    results = []
    for path in sorted(Path(args.results).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping {path.name}: {err}", file=sys.stderr)
            continue
        if isinstance(data, dict) and not data.get("smoke"):
            results.append((path, data))
    accuracy = [(p, d) for p, d in results if d.get("benchmark") == "accuracy" and "main" in d]
    comm = [(p, d) for p, d in results if d.get("benchmark") == "communication"]
    speed = [(p, d) for p, d in results if d.get("benchmark") == "throughput"]
    if not (accuracy or comm or speed):
        print("no benchmark results found (run benchmarks/accuracy.py first)", file=sys.stderr)
        return 1
    if accuracy:
        print("| method | topology | mean site macro AUROC | worst site | gap to pooled | seeds "
              "| command | machine |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for _, data in accuracy:
            print("\n".join(accuracy_rows(data)))
        print()
    if comm:
        print("| run | topology | bytes in total | mean site macro AUROC | gap to pooled "
              "| command | machine |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for _, data in comm:
            print("\n".join(communication_rows(data)))
        print()
    for _, data in speed:
        ratio = data.get("throughput_ratio")
        threads = ", ".join(
            f"{t} thread(s): ratio {v['throughput_ratio']:.2f}, "
            f"{100 * v['simulation_fraction_of_peak']:.0f}% of matmul peak"
            for t, v in data.get("threads", {}).items()
        )
        print(
            f"Simulation throughput vs pooled ({data.get('method')}, {data.get('model')} at "
            f"{data.get('image_size')} px): {ratio:.2f} ({threads}); `{data.get('command')}`, "
            f"{machine_text(data.get('machine', {}))}."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
