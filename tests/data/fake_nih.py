"""Write a tiny fake copy of the NIH ChestX-ray14 layout (with its quirks) for loader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def write_fake_nih(
    root: Path,
    rows: list[tuple[str, str, int, str]],
    *,
    nested: bool = True,
    csv_name: str = "Data_Entry_2017.csv",
    test: set[str] = frozenset(),
    images: bool = True,
    size: int = 8,
) -> Path:
    """rows: (image index, finding labels, patient id, view). Returns root."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for i, (name, labels, pid, view) in enumerate(rows):
        lines.append(f"{name},{labels},0,{pid},50,M,{view},{size},{size},0.143,0.143,")
        if images:
            folder = root / f"images_{1 + i % 2:03d}" / "images" if nested else root
            folder.mkdir(parents=True, exist_ok=True)
            px = np.full((size, size), (i * 37) % 256, dtype=np.uint8)
            Image.fromarray(px, mode="L").save(folder / name)
    (root / csv_name).write_text("\n".join(lines) + "\n")
    names = [r[0] for r in rows]
    (root / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
    (root / "test_list.txt").write_text("\n".join(n for n in names if n in test) + "\n")
    return root
