"""Write the synthetic world exactly as the NIH ChestX-ray14 release is laid out on disk.

    DIR/Data_Entry_2017.csv            the real header, including the trailing empty column
    DIR/images_001/images/00000001_000.png ...   (12 archives, like the real release)
    DIR/train_val_list.txt, DIR/test_list.txt    split by patient
    DIR/world.json                      generator settings (not part of the NIH layout)

Rendering is vectorised in chunks whose random streams are derived from the seed and the chunk
number, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from hospitalnet.data.synthetic.phantom import render_batch
from hospitalnet.data.synthetic.population import draw_population
from hospitalnet.errors import HospitalnetError
from hospitalnet.labels import LABELS, format_finding_labels
from hospitalnet.seeding import numpy_rng

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
ARCHIVES = 12
CHUNK = 256
TEST_PATIENT_FRACTION = 0.25
GENERATOR_VERSION = 1


def world_metadata(patients: int, seed: int) -> pd.DataFrame:
    """The Data_Entry rows of the world (no pixels), plus ``split`` and true-finding columns."""
    if patients <= 0:
        raise HospitalnetError(f"--patients must be positive, got {patients}")
    df = draw_population(patients, numpy_rng(seed, "synth", "population"))
    df["Image Index"] = [f"{p + 1:08d}_{fu:03d}.png" for p, fu in zip(df.patient_id, df.follow_up)]
    df["Finding Labels"] = [format_finding_labels(row) for row in df[list(LABELS)].to_numpy()]
    rng = numpy_rng(seed, "synth", "split")
    test_patients = rng.random(patients) < TEST_PATIENT_FRACTION
    df["split"] = np.where(test_patients[df.patient_id.to_numpy()], "test", "train_val")
    df["archive"] = 1 + (df.patient_id.to_numpy() * ARCHIVES) // patients
    return df


def _data_entry_csv(df: pd.DataFrame, size: int) -> str:
    lines = [DATA_ENTRY_HEADER]
    for row in df.to_dict("records"):
        lines.append(
            f"{row['Image Index']},{row['Finding Labels']},{row['follow_up']},"
            f"{row['patient_id'] + 1},{row['age']},{row['gender']},{row['view']},"
            f"{size},{size},{0.143 * 1024 / size:.3f},{0.143 * 1024 / size:.3f},"
        )
    return "\n".join(lines) + "\n"


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_world(
    out: str | Path,
    *,
    patients: int = 3000,
    size: int = 128,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate the world into ``out`` and return its metadata (one row per image)."""
    out = Path(out)
    if not 32 <= size <= 1024:
        raise HospitalnetError(f"--size must be between 32 and 1024 px, got {size}")
    if out.exists() and any(out.iterdir()) and not force:
        raise HospitalnetError(f"{out}: exists and is not empty (use --force to overwrite)")
    df = world_metadata(patients, seed)
    out.mkdir(parents=True, exist_ok=True)
    for a in range(1, ARCHIVES + 1):
        (out / f"images_{a:03d}" / "images").mkdir(parents=True, exist_ok=True)

    true_cols = [f"true_{name}" for name in LABELS]
    n = len(df)
    bar = tqdm(total=n, desc="synth: rendering", unit="img", disable=not progress)
    for chunk, start in enumerate(range(0, n, CHUNK)):
        part = df.iloc[start : start + CHUNK]
        pixels = render_batch(
            part[true_cols].to_numpy(dtype=bool),
            part["view"].to_numpy(),
            part["anatomy_seed"].to_numpy(),
            numpy_rng(seed, "synth", "render", str(chunk)),
            size,
        )
        for img, name, archive in zip(pixels, part["Image Index"], part["archive"]):
            (out / f"images_{archive:03d}" / "images" / name).write_bytes(_png_bytes(img))
        bar.update(len(part))
    bar.close()

    (out / "Data_Entry_2017.csv").write_text(_data_entry_csv(df, size), encoding="utf-8")
    for split, fname in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        names = df.loc[df.split == split, "Image Index"].tolist()
        (out / fname).write_text("\n".join(names) + "\n", encoding="utf-8")
    meta = {
        "generator_version": GENERATOR_VERSION,
        "patients": patients,
        "size": size,
        "seed": seed,
        "images": n,
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return df


def write_contact_sheet(world: str | Path, out_png: str | Path, *, per_label: int = 5) -> Path:
    """A grid of example images per label (and No Finding), read back from the PNGs on disk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    world = Path(world)
    entries = pd.read_csv(world / "Data_Entry_2017.csv", usecols=[0, 1])
    paths = {p.name: p for p in world.glob("images_*/images/*.png")}
    rows = [*LABELS, "No Finding"]
    fig, axes = plt.subplots(len(rows), per_label, figsize=(per_label * 1.6, len(rows) * 1.6))
    for i, label in enumerate(rows):
        if label == "No Finding":
            hits = entries[entries["Finding Labels"] == "No Finding"]
        else:
            hits = entries[
                entries["Finding Labels"].str.split("|").apply(lambda s, lab=label: lab in s)
            ]
        # Prefer single-label examples: the trace is then that label's alone.
        single = hits[~hits["Finding Labels"].str.contains("|", regex=False)]
        pick = pd.concat([single, hits]).drop_duplicates().head(per_label)
        for j in range(per_label):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(pick):
                ax.imshow(
                    np.asarray(Image.open(paths[pick.iloc[j, 0]])), cmap="gray", vmin=0, vmax=255
                )
            if j == 0:
                ax.set_ylabel(
                    label.replace("_", " "), fontsize=8, rotation=0, ha="right", va="center"
                )
    fig.suptitle("hospitalnet synthetic ChestX-ray14: examples per label", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (len(rows) * 1.6)))  # room for the title
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
