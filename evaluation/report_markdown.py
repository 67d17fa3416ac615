"""report.md: the Markdown twin of the HTML page, rendered from ``templates/report.md.j2``.

The view functions here turn the report context (:mod:`evaluation.report_context`) into plain
tables (a head and rows of strings); the template lays out the sections. Cells are the HTML
page's texts, with the typographic minus written as ``-``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evaluation import plots
from evaluation.compute import Evaluation
from evaluation.formatting import MINUS, NA, finite, fmt_auroc
from evaluation.metrics import MIN_POSITIVES
from evaluation.report_calibration import calibration_markdown
from evaluation.rundata import GLOBAL

LEGEND = (
    f"`n/a` = undefined (no positive or no negative case; left out of the macro average). "
    f"`\u2020` = fewer than {MIN_POSITIVES} positive cases (unreliable). "
    "Gap = AUROC minus the pooled model's AUROC on the same test set (negative = worse)."
)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> dict[str, Any]:
    return {"head": [str(h) for h in head], "rows": [[str(c) for c in r] for r in rows]}


def _text(c: dict[str, str]) -> str:
    return c["text"].replace(MINUS, "-")


def table_text(table: dict[str, Any]) -> str:
    """A table as Markdown lines (pipes in cells escaped, one line per row, no final newline)."""

    def esc(value: str) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(esc(h) for h in table["head"]) + " |",
        "|" + "|".join("---" for _ in table["head"]) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def network_view(ev: Evaluation, ctx: dict[str, Any]) -> dict[str, Any]:
    """The network view's tables (sections 1, 2, 4, 5 calibration, then data, network, run)."""
    ps = ctx["per_site"]
    methods = plots.order_methods(ev.methods)
    curves = ev.summary["methods"]
    curve_rows = []
    for k in sorted({p["k"] for m in methods for p in curves[m]["curve"]}):
        row: list[str] = []
        epochs = ""
        for m in methods:
            p = next((p for p in curves[m]["curve"] if p["k"] == k), None)
            row.append(fmt_auroc(p["mean_site_macro_auroc"]) if p else "")
            if p and p["epochs"] is not None and not epochs:
                epochs = f"{p['epochs']:g}"
        curve_rows.append([str(k), epochs, *row])
    return {
        "title": ctx["title"],
        "key_sentence": (ctx["key_sentence"] or "").replace(MINUS, "-"),
        "legend": LEGEND,
        "headline": _table(
            [
                "Method",
                "Mean hospital macro AUROC",
                "Worst hospital",
                "Mean gap to pooled",
                "Mean macro AUROC on own test patients",
                "Wall time",
            ],
            [
                [
                    r["method"],
                    _text(r["mean"]),
                    f"{_text(r['worst'])} ({r['worst_site']})"
                    if r["worst_site"]
                    else _text(r["worst"]),
                    _text(r["gap"]),
                    _text(r["local"]),
                    r["wall"],
                ]
                for r in ctx["headline"]
            ],
        ),
        "per_site": _table(
            ["Hospital"] + [f"{m} ({sub})" for m in ps["methods"] for sub in ps["sub"]],
            [[r["site"]] + [_text(c) for c in r["cells"]] for r in ps["rows"]],
        ),
        "curves": _table(
            ["Eval point", "Epochs"] + [plots.method_name(m) for m in methods], curve_rows
        )
        if curve_rows
        else None,
        "label_tables": [
            {
                "title": f"{group['method']}: {t['where']}",
                "table": _table(
                    ["Finding"] + t["sites"],
                    [[r["label"]] + [_text(c) for c in r["cells"]] for r in t["rows"]],
                ),
            }
            for group in ctx["label_tables"]
            for t in group["tables"]
        ],
        "global_counts": _table(
            ["Finding", "n", "positives", "negatives", "note"],
            [[r["label"], r["n"], r["pos"], r["neg"], r["note"]] for r in ctx["global_counts"]],
        )
        if ctx["global_counts"]
        else None,
        "calibration": calibration_markdown(ctx["calibration"], network=True),
        **_data_network_run(ctx, 6),
    }


def site_view(ev: Evaluation, ctx: dict[str, Any]) -> dict[str, Any]:
    """One hospital's view: headline, its curve, per finding, calibration, data, network, run."""
    return {
        "title": ctx["title"],
        "legend": LEGEND,
        "headline": _table(
            [
                "Method",
                "Macro AUROC, own test patients (95% CI)",
                "Gap to pooled",
                "Macro AUROC, global test set (95% CI)",
                "Gap to pooled",
                "Wall time",
            ],
            [
                [
                    r["method"],
                    _text(r["own"]),
                    _text(r["own_gap"]),
                    _text(r["global"]),
                    _text(r["global_gap"]),
                    r["wall"],
                ]
                for r in ctx["headline"]
            ],
        ),
        "site_curve": _site_curve(ev, ctx["site"].lower()),
        "site_tables": [
            {
                "title": f"AUROC per finding ({t['where']})",
                "table": _table(
                    ["Finding", "n", "positives", "negatives"] + t["heads"] + ["note"],
                    [
                        [r["label"], r["n"], r["pos"], r["neg"]]
                        + [_text(c) + (f" ({c['ci']})" if c.get("ci") else "") for c in r["cells"]]
                        + [r["note"]]
                        for r in t["rows"]
                    ],
                ),
            }
            for t in ctx["site_tables"]
        ],
        "calibration": calibration_markdown(ctx["calibration"], network=False),
        **_data_network_run(ctx, 5),
    }


def _site_curve(ev: Evaluation, site: str) -> dict[str, Any] | None:
    """This hospital's macro AUROC per eval point, one column per method and test set."""
    c = ev.curves[ev.curves["site"] == site]
    if c.empty:
        return None
    methods = plots.order_methods([m for m in ev.methods if m in set(c["method"])])
    columns = [
        (m, t)
        for m in methods
        for t in ev.run.testsets_for(site)
        if not c[(c["method"] == m) & (c["testset"] == t)].empty
    ]
    table = c.pivot_table(index="k", columns=["method", "testset"], values="macro_auroc")
    epochs = c.groupby("k")["epochs"].first()
    rows = []
    for k in table.index:
        e = epochs.get(k)
        row = [str(k), "" if e is None or not finite(e) else f"{e:g}"]
        row += [fmt_auroc(table[col].get(k)) if col in table else NA for col in columns]
        rows.append(row)
    head = ["Eval point", "Epochs"] + [
        f"{plots.method_name(m).split(' (')[0]} ({'global' if t == GLOBAL else 'own'})"
        for m, t in columns
    ]
    return _table(head, rows)


def _data_network_run(ctx: dict[str, Any], first: int) -> dict[str, Any]:
    """The data, network and run sections, numbered from ``first`` as in the HTML page."""
    run = ctx["run"]
    return {
        "first": first,
        "data": _table(
            [
                "Hospital",
                "Description",
                "Loader",
                "Training images",
                "Test images",
                "Patients",
                "Views",
                "JSD",
            ],
            [
                [
                    r["site"],
                    r["description"],
                    r["loader"],
                    r["train"],
                    r["test"],
                    r["patients"],
                    r["views"],
                    r["jsd"],
                ]
                for r in ctx["data_rows"]
            ],
        )  # fmt: skip
        if ctx["data_rows"]
        else None,
        "network": [
            {
                "method": t["method"],
                "table": _table(
                    [
                        "Link",
                        "msgs a\u2192b",
                        "msgs b\u2192a",
                        "bytes",
                        "dropped",
                        "stale",
                        "duplicates",
                        "rejected",
                        "inactive events",
                        "active at end",
                    ],
                    [
                        [
                            r["link"],
                            r["msg_ab"],
                            r["msg_ba"],
                            r["bytes"],
                            r["dropped"],
                            r["stale"],
                            r["duplicates"],
                            r["rejected"],
                            r["inactive_events"],
                            r["active"],
                        ]
                        for r in t["rows"]
                    ],
                ),  # fmt: skip
                "faults": (
                    f"Dead sites: {t['dead'] or 'none'}; isolated: {t['isolated'] or 'none'}"
                    if t["dead"] or t["isolated"]
                    else ""
                ),
            }
            for t in ctx["network_tables"]
        ],
        "run_rows": _table(["", ""], run["rows"]),
        "run_wall": _table(["Method", "Wall time"], run["wall"]),
        "versions": _table(["Software", "Version"], run["versions"]) if run["versions"] else None,
        "config": run["config"].rstrip() if run["config"] is not None else None,
    }
