"""The 14 ChestX-ray14 labels, their canonical order, and the one alias table.

Label vectors are float32 arrays of length 14 in :data:`LABELS` order; 1 = present, 0 = absent,
NaN = unknown (missing label value, masked out of the loss and the metrics).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from hospitalnet.errors import DataError

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_LABELS = len(LABELS)
NO_FINDING = "No Finding"
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}

# Spellings seen in the wild -> canonical name. Keys are compared case-insensitively with
# spaces, hyphens and underscores treated alike. "Infiltrate" is BBox_List_2017.csv's spelling.
ALIASES: dict[str, str] = {
    "pleural thickening": "Pleural_Thickening",
    "pleural_thickening": "Pleural_Thickening",
    "infiltrate": "Infiltration",
    "infiltrates": "Infiltration",
    "effusions": "Effusion",
    "pleural effusion": "Effusion",
    "nodules": "Nodule",
}


def _key(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


_LOOKUP: dict[str, str] = {_key(n): n for n in LABELS}
_LOOKUP.update({_key(a): c for a, c in ALIASES.items()})


def canonical_label(name: str, *, source: str) -> str:
    """Return the canonical spelling of ``name``; raise :class:`DataError` naming ``source``."""
    try:
        return _LOOKUP[_key(name)]
    except KeyError:
        raise DataError(f"{source}: unknown label name {name.strip()!r}") from None


def parse_finding_labels(
    text: object, *, source: str, unknown: str = "error", dropped: list[str] | None = None
) -> np.ndarray:
    """Parse a pipe-separated ``Finding Labels`` value into a 14-vector.

    ``"No Finding"`` gives all zeros. An empty or missing value gives all NaN (unknown).
    ``unknown="error"`` raises on an unknown name; ``unknown="drop"`` ignores it and appends the
    name to ``dropped`` so the caller can count it.
    """
    vec = np.zeros(NUM_LABELS, dtype=np.float32)
    if text is None or (isinstance(text, float) and np.isnan(text)) or str(text).strip() == "":
        vec[:] = np.nan
        return vec
    for part in str(text).split("|"):
        part = part.strip()
        if not part or _key(part) == _key(NO_FINDING):
            continue
        try:
            vec[LABEL_INDEX[canonical_label(part, source=source)]] = 1.0
        except DataError:
            if unknown != "drop":
                raise
            if dropped is not None:
                dropped.append(part)
    return vec


def format_finding_labels(vec: Iterable[float]) -> str:
    """Inverse of :func:`parse_finding_labels` for a fully known vector."""
    names = [LABELS[i] for i, v in enumerate(vec) if v == 1]
    return "|".join(names) if names else NO_FINDING
