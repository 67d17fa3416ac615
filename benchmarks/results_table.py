"""Print the README's results tables (Markdown) from benchmarks/results/*.json.

One table per benchmark, each followed by the command and the machine that produced it:
accuracy (``main`` part: mean +- std over seeds), the sweeps of training length, label skew and
K, communication, throughput and learnability. Smoke runs (``"smoke": true``)
and missing files are skipped.

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
    """``mean ± std`` of a spread record (``n/a`` when nothing was defined)."""
    if not stat or not stat.get("n"):
        return "n/a"
    sign = "+" if signed else ""
    if stat["n"] == 1:
        return f"{stat['mean']:{sign}.3f}"
    return f"{stat['mean']:{sign}.3f} ± {stat['std']:.3f}"


def machine_text(m: dict[str, Any]) -> str:
    gpu = f", {m['cuda']}" if m.get("cuda") else ""
    return (
        f"{m.get('processor', '?')}, {m.get('cpu_count', '?')} cores, "
        f"{m.get('torch_threads', '?')} torch thread(s){gpu}, torch {m.get('torch', '?')}"
    )


def source(data: dict[str, Any]) -> str:
    return f"`{data.get('command', '?')}` ({machine_text(data.get('machine', {}))})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def accuracy_main(data: dict[str, Any]) -> str:
    rows = [
        [
            e["method"],
            e["topology"],
            pm(e["mean_site_macro_auroc"]),
            pm(e["worst_site_macro_auroc"]),
            pm(e["gap_to_pooled"], signed=True),
            str(e["mean_site_macro_auroc"]["n"]),
        ]
        for e in data["main"]["summary"]
    ]
    head = ["method", "topology", "mean site macro AUROC", "worst site", "gap to pooled", "seeds"]
    return table(head, rows)


def sweep(data: dict[str, Any], part: str, field: str) -> str:
    """Gap to pooled per method (rows) and swept value (columns); pooled's own AUROC on top."""
    summary = data[part]["summary"]
    values = sorted({e[field] for e in summary})
    methods = list(dict.fromkeys(e["method"] for e in summary))
    rows = []
    for method in methods:
        cells = []
        for v in values:
            e = next((e for e in summary if e["method"] == method and e[field] == v), None)
            if e is None:
                cells.append("")
            elif method == "pooled":
                cells.append(pm(e["mean_site_macro_auroc"]))
            elif e.get("errors"):
                cells.append("cannot run")
            else:
                cells.append(pm(e["gap_to_pooled"], signed=True))
        label = "pooled (its AUROC)" if method == "pooled" else f"{method} (gap)"
        rows.append([label, *cells])
    return table([field, *[f"{v:g}" for v in values]], rows)


def communication(data: dict[str, Any]) -> str:
    rows = []
    for e in data["summary"]:
        rel = e.get("bytes_relative_to_ecl")
        rows.append(
            [
                e["name"],
                f"{e['bytes_total']['mean'] / 1e6:.1f} MB",
                f"{e['bytes_per_exchange']['mean'] / 1e3:.1f} kB",
                f"{rel:.2f}" if rel is not None else "n/a",
                pm(e["mean_site_macro_auroc"]),
                pm(e["gap_to_pooled"], signed=True),
                pm(e.get("auroc_cost"), signed=True),
            ]
        )
    head = [
        "run",
        "bytes in total",
        "per exchange",
        "x ecl",
        "mean site AUROC",
        "gap to pooled",
        "AUROC vs ecl",
    ]
    return table(head, rows)


def throughput(data: dict[str, Any]) -> str:
    rows = []
    for threads, v in data.get("threads", {}).items():
        rows.append(
            [
                f"in-process simulation vs pooled, {threads} thread(s)",
                f"{v['throughput_ratio']:.3f}",
                f"{v['simulation_images_per_s']['mean']:.0f} vs "
                f"{v['pooled_images_per_s']['mean']:.0f}",
                f"{100 * v['simulation_fraction_of_peak']:.0f}% vs "
                f"{100 * v['pooled_fraction_of_peak']:.0f}% of "
                f"{v['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s",
            ]
        )
    p = data.get("processes") or {}
    if p.get("processes_vs_in_process") is not None:
        rows.append(
            [
                f"8 processes (gRPC + mTLS) vs in-process, {p['steps_per_site']} steps per site",
                f"{p['processes_vs_in_process']:.3f}",
                f"{p['processes']['images_per_s'][p['method']]:.0f} vs "
                f"{p['in_process']['images_per_s'][p['method']]:.0f}",
                "start-up included",
            ]
        )
        auc = {
            k: p[k].get("mean_site_macro_auroc", {}).get(p["method"])
            for k in ("processes", "in_process")
        }
        if None not in auc.values():
            rows.append(
                [
                    "mean site macro AUROC, processes vs in-process (same config)",
                    "",
                    f"{auc['processes']:.3f} vs {auc['in_process']:.3f}",
                    "",
                ]
            )
        rows.append(["8 processes vs pooled (all threads)", f"{p['throughput_ratio']:.3f}", "", ""])
    return table(["comparison", "ratio", "images/s", "FLOP/s"], rows)


def interval(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean [low, high]`` of a paired record (benchmarks._common.paired)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("low") is None:
        return f"{stat['mean']:+.{digits}f}"
    return f"{stat['mean']:+.{digits}f} [{stat['low']:+.{digits}f}, {stat['high']:+.{digits}f}]"


def ecl_diagnostics(data: dict[str, Any]) -> str:
    rows = []
    for v, d in data["variants"].items():
        rows.append(
            [v, pm(d["mean_site"]), pm(d["worst_site"]), pm(d["averaged"]),
             f"{d['brier']['mean']:.5f}", f"{d['consensus_distance']['mean']:.1e}",
             f"{d['wall_s']['mean']:.0f}"]
        )  # fmt: skip
    out = table(
        ["variant", "mean site", "worst site", "averaged model", "Brier", "consensus dist.",
         "s/run"], rows,
    )  # fmt: skip
    prows = [
        [k, interval(v["mean_site"]), interval(v["worst_site"]), interval(v["brier"], 5)]
        for k, v in data["paired"].items()
        if k.startswith("ecl")  # ECL and its variants against the references
    ]
    seeds = len(data.get("seeds", []))
    return (
        out
        + f"\n\nPaired differences over {seeds} seed(s), 95% t-intervals:\n\n"
        + table(["difference", "mean site", "worst site", "Brier"], prows)
    )


def ecl_dynamics(data: dict[str, Any]) -> str:
    parts = []
    if "common_mode_speed" in data:
        rows = [
            [m, pm(v["default_latency"]), pm(v["no_latency"]),
             pm(data.get("noise", {}).get(m, {}).get("noise_ratio")),
             pm(data.get("noise", {}).get(m, {}).get("consensus_distance"))]
            for m, v in data["common_mode_speed"].items()
        ]  # fmt: skip
        parts.append(
            table(
                [
                    "method",
                    "common-mode speed (latency 0.5-3)",
                    "(no latency)",
                    "noise ratio",
                    "consensus distance",
                ],
                rows,
            )  # fmt: skip
        )
    if "digits" in data:
        dg = data["digits"]
        rows = [
            [m, pm(v["mean_accuracy"]), pm(v["worst_accuracy"])] for m, v in dg["methods"].items()
        ]
        parts.append(
            f"Class-split digits, {dg['steps']} steps, {len(dg['seeds'])} seed(s):\n\n"
            + table(["method", "mean site accuracy", "worst site accuracy"], rows)
            + "\n\n"
            + table(
                ["paired difference", "mean [95% CI]"],
                [[k, interval(v, 4)] for k, v in dg["paired"].items()],
            )  # fmt: skip
        )
    return "\n\n".join(parts)


def learnability(data: dict[str, Any]) -> str:
    runs = data["runs"]
    labels = list(runs[0]["labels"]) if runs else []
    head = ["label", *[f"{r['local_steps']} steps, world {r['seed']}" for r in runs]]
    rows = []
    for name in labels:
        cells = []
        for r in runs:
            v = r["labels"][name]
            cells.append("undefined" if v["auroc"] is None else f"{v['auroc']:.2f}")
        rows.append([name, *cells])
    rows.append(["**macro**", *[f"**{r['macro_auroc']:.3f}**" for r in runs]])
    return table(head, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(args.results).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping {path.name}: {err}", file=sys.stderr)
            continue
        ecl = path.stem.startswith(("ecl_diagnostics", "ecl_dynamics"))  # no "benchmark" key
        if isinstance(data, dict) and (data.get("benchmark") or ecl) and not data.get("smoke"):
            found[path.stem] = data
    sections = []
    for stem, data in found.items():  # accuracy.json, then e.g. accuracy_isvr.json
        if stem.startswith("accuracy") and "main" in data:
            title = "Accuracy" if stem == "accuracy" else f"Accuracy ({stem})"
            sections.append((title, accuracy_main(data), data))
    for stem, part, field in (
        ("accuracy_steps", "steps", "local_steps"),
        ("accuracy_sweeps", "skew", "skew"),
        ("accuracy_sweeps", "k", "exchange_every"),
    ):
        data = found.get(stem)
        if data and part in data:
            sections.append((f"Sweep: {field}", sweep(data, part, field), data))
    for stem, data in found.items():
        if stem.startswith("ecl_diagnostics"):
            where = stem.removeprefix("ecl_diagnostics").strip("_") or "default"
            sections.append((f"ECL diagnostics ({where} world)", ecl_diagnostics(data), data))
    for stem, title, render in (
        ("ecl_dynamics", "ECL dynamics (known answers)", ecl_dynamics),
        ("communication", "Communication", communication),
        ("throughput", "Throughput", throughput),
        ("learnability", "Learnability (pooled, per label, global test set)", learnability),
    ):
        if stem in found:
            sections.append((title, render(found[stem]), found[stem]))
    if not sections:
        print("no benchmark results found (run benchmarks/accuracy.py first)", file=sys.stderr)
        return 1
    for title, text, data in sections:
        print(f"#### {title}\n\n{text}\n\nFrom {source(data)}.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
