"""How numbers look in the report, in one place so that the HTML page and the Markdown agree."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from evaluation.metrics import MIN_POSITIVES, LabelCounts
from evaluation.privacy import redact_text

MINUS = "\u2212"
NA = "n/a"


def finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def fmt_auroc(v: Any) -> str:
    return f"{float(v):.3f}" if finite(v) else NA


def fmt_gap(v: Any, minus: str = MINUS) -> str:
    if not finite(v):
        return NA
    v = float(v)
    if round(v, 3) == 0:
        return "0.000"
    return f"+{v:.3f}" if v > 0 else f"{minus}{abs(v):.3f}"


def fmt_ci(lo: Any, hi: Any) -> str:
    return f"{float(lo):.3f}\u2013{float(hi):.3f}" if finite(lo) and finite(hi) else ""


def fmt_seconds(v: Any) -> str:
    if not finite(v):
        return "not recorded"
    s = float(v)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(round((s % 3600) / 60)):02d} min"


def fmt_started(v: Any) -> str:
    """ISO time stamp -> "2025-01-02 03:04 UTC" (as written when it does not parse)."""
    if not v:
        return "not recorded"
    try:
        t = datetime.fromisoformat(str(v))
    except ValueError:
        return redact_text(v)
    if t.tzinfo is not None:
        return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M")


def fmt_bytes(v: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{int(v)} B"


def fmt_int(v: Any) -> str:
    return f"{int(v):,}" if finite(v) else NA


def cell(text: str, title: str = "", cls: str = "") -> dict[str, str]:
    """A table cell: shown text, hover explanation, CSS class (na / unreliable / ref ...)."""
    return {"text": text, "title": title, "cls": cls}


def auroc_cell(row: Any) -> dict[str, str]:
    """An AUROC with its interval and counts on hover; n/a or a dagger where honesty needs it."""
    counts = LabelCounts(int(row["n"]), int(row["n_pos"]), int(row["n_neg"]))
    tally = f"n={counts.n}, positives={counts.n_pos}, negatives={counts.n_neg}"
    if not finite(row["auroc"]):
        return cell(NA, f"{counts.undefined_reason or 'undefined'} ({tally})", "na")
    ci = fmt_ci(row["ci_low"], row["ci_high"])
    title = f"{tally}" + (f"; 95% CI {ci}" if ci else "")
    if counts.unreliable:
        return cell(
            fmt_auroc(row["auroc"]) + "\u2020",
            f"unreliable: fewer than {MIN_POSITIVES} positive cases; {title}",
            "unreliable",
        )
    return cell(fmt_auroc(row["auroc"]), title)


def macro_cell(entry: dict[str, Any] | None, with_ci: bool = False) -> dict[str, str]:
    if not entry or entry.get("macro_auroc") is None:
        return cell(NA, "undefined: no finding has both positive and negative cases", "na")
    ci = fmt_ci(entry.get("ci_low"), entry.get("ci_high"))
    excluded = entry.get("n_excluded", 0)
    title = f"mean over {entry['n_defined']} findings"
    if excluded:
        title += f"; {excluded} excluded as undefined"
    if ci:
        title += f"; 95% CI {ci}"
    text = fmt_auroc(entry["macro_auroc"])
    if with_ci and ci:
        text += f" ({ci})"
    return cell(text, title, "excluded" if excluded else "")


def gap_cell(v: Any, what: str = "") -> dict[str, str]:
    if not finite(v):
        return cell(NA, "undefined: AUROC undefined for this model or for pooled", "na")
    cls = "neg" if v < -0.0005 else ("pos" if v > 0.0005 else "")
    return cell(fmt_gap(v), what or "AUROC minus pooled AUROC on the same test set", cls)


def score_cell(entry: dict[str, Any] | None, with_ci: bool = False) -> dict[str, str]:
    """A calibration score (lower is better) with its interval on hover (or shown)."""
    if not entry or not finite(entry.get("value")):
        return cell(NA, "undefined: no finding has a known label", "na")
    ci = fmt_ci(entry.get("ci_low"), entry.get("ci_high"))
    text = fmt_auroc(entry["value"]) + (f" ({ci})" if with_ci and ci else "")
    return cell(text, f"95% CI {ci}" if ci else "")


def score_gap_cell(entry: dict[str, Any] | None) -> dict[str, str]:
    """A calibration score minus pooled's: above 0 is worse (red), with its paired interval."""
    if not entry or not finite(entry.get("gap_to_pooled")):
        return cell(NA, "undefined: no pooled reference for this test set", "na")
    v = float(entry["gap_to_pooled"])
    low, high = entry.get("gap_ci_low"), entry.get("gap_ci_high")
    text = fmt_gap(v)
    title = "score minus pooled's on the same test patients (above 0: worse calibrated)"
    if finite(low) and finite(high):
        text += f" ({fmt_gap(low)} to {fmt_gap(high)})"
        title += "; in brackets its 95% CI, paired bootstrap over patients"
    cls = "neg" if v > 0.0005 else ("pos" if v < -0.0005 else "")
    return cell(text, title, cls)
