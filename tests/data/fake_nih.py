"""Tiny fake copies of the NIH ChestX-ray14 layout (with its quirks) for loader/partition tests.

``write_fake_nih`` writes a Data_Entry CSV with the real header (the bracketed columns that split,
the 2017 trailing empty column), PNGs flat or nested ``images_0XX/images/``, and the split lists.
``fake_pooled_rows`` draws a seeded pooled set of patients with ChestX-ray14-like prevalences.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from hospitalnet.data.base import INDEX_COLUMNS, pseudonymise
from hospitalnet.labels import LABELS, parse_finding_labels

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)

# Per-image prevalences of the real data set (DATA.md section 1: count / 112,120).
PREVALENCE = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.025,
    "Effusion": 0.119,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pneumonia": 0.013,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Edema": 0.021,
    "Emphysema": 0.022,
    "Fibrosis": 0.015,
    "Pleural_Thickening": 0.030,
    "Hernia": 0.002,
}

Row = tuple[str, str, int, str]  # (image index, finding labels, patient id, view)


def pixel_value(i: int) -> int:
    """The gray level of the i-th fake image (distinct, known by hand)."""
    return (i * 37 + 11) % 256


def write_fake_nih(
    root: Path,
    rows: Sequence[Row],
    *,
    nested: bool = True,
    csv_name: str = "Data_Entry_2017.csv",
    test: Collection[str] = frozenset(),
    images: bool = True,
    size: int = 8,
    header_trailing_comma: bool = True,
    split_lists: bool = True,
) -> Path:
    """Write the layout under ``root`` (made if needed) and return ``root``.

    ``test`` names the images of test_list.txt; the others go to train_val_list.txt.
    """
    root.mkdir(parents=True, exist_ok=True)
    lines = [HEADER + ("," if header_trailing_comma else "")]
    for i, (name, labels, pid, view) in enumerate(rows):
        # The 2017 rows end with a trailing comma: an empty 12th column.
        lines.append(f"{name},{labels},{i},{pid},50,M,{view},{size},{size},0.143,0.143,")
        if images:
            folder = root / f"images_{1 + i % 2:03d}" / "images" if nested else root
            folder.mkdir(parents=True, exist_ok=True)
            px = np.full((size, size), pixel_value(i), dtype=np.uint8)
            Image.fromarray(px, mode="L").save(folder / name)
    (root / csv_name).write_text("\n".join(lines) + "\n")
    if split_lists:
        names = [r[0] for r in rows]
        train = [n for n in names if n not in test]
        (root / "train_val_list.txt").write_text("".join(n + "\n" for n in train))
        (root / "test_list.txt").write_text("".join(n + "\n" for n in names if n in test))
    return root


def fake_pooled_rows(
    patients: int, seed: int, *, test_every: int = 5, max_images: int = 4
) -> tuple[list[Row], set[str]]:
    """A seeded pooled set: 1..max_images films per patient, labels drawn independently with
    :data:`PREVALENCE`, 40 % AP. Every ``test_every``-th patient's films form the test list."""
    rng = np.random.default_rng(seed)
    probs = np.array([PREVALENCE[n] for n in LABELS])
    rows: list[Row] = []
    test: set[str] = set()
    for pid in range(1, patients + 1):
        for fu in range(int(rng.integers(1, max_images + 1))):
            found = [n for n, hit in zip(LABELS, rng.random(len(LABELS)) < probs) if hit]
            name = f"{pid:08d}_{fu:03d}.png"
            rows.append(
                (name, "|".join(found) or "No Finding", pid, rng.choice(["AP", "PA"], p=[0.4, 0.6]))
            )
            if pid % test_every == 0:
                test.add(name)
    return rows, test


def index_of_rows(rows: Sequence[Row], test: Collection[str]) -> pd.DataFrame:
    """The loader-contract index the ``nih`` loader would return for ``rows`` (no files)."""
    labels = np.stack([parse_finding_labels(r[1], source="fake") for r in rows])
    df = pd.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "patient": [pseudonymise(str(r[2])) for r in rows],
            "view": [str(r[3]) for r in rows],
            "split": ["test" if r[0] in test else "train" for r in rows],
        }
    )
    for j, name in enumerate(LABELS):
        df[name] = labels[:, j]
    return df[list(INDEX_COLUMNS)]
