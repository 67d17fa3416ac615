"""Tiny fake copies of each on-disk site layout, written into tmp_path (nothing downloaded).

Imported by the tests of this folder (pytest puts the folder on sys.path).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

CANARY_NAME = "CANARY^PATIENT"
CANARY_ID = "CANARY-ID-123"


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    patient_name: str = "TEST^PATIENT",
    patient_id: str = "TEST-1",
    view: str | None = "PA",
    sop_uid: str | None = None,
    signed: bool = False,
    **attributes: Any,
) -> str:
    """Write a single-frame DICOM with ``stored`` raw values; return its SOP Instance UID.

    ``stored`` may be (H, W) grayscale or (H, W, 3) for an RGB file. Extra keyword arguments
    become header attributes (RescaleSlope=..., WindowCenter=..., PresentationLUTShape=...).
    """
    uid = sop_uid or generate_uid(entropy_srcs=[str(path)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(path), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path), "series"])
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.Modality = "CR"
    if view is not None:
        ds.ViewPosition = view
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.set_pixel_data(
        stored,
        photometric_interpretation=photometric,
        bits_stored=bits_stored,
        generate_instance_uid=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(uid)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write ``image`` (uint8 or uint16 array) as a grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def ramp(h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    """A float image in [0, 1] with structure (not constant), deterministic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    return np.clip(0.1 + 0.8 * (x + y) / (h + w) + 0.05 * rng.random((h, w)), 0, 1)


# Each fake site: a list of (raw patient id, labels text, view, split), enough to cover two
# patients per split and one unknown-labels row.
ROWS = [
    ("PAT-A", "Effusion|Infiltration", "PA", "train"),
    ("PAT-A", "No Finding", "AP", "train"),
    ("PAT-B", "Pleural Thickening", "PA", "train"),
    ("PAT-C", "", "PA", "test"),
    ("PAT-D", "Mass|Nodule", "AP", "test"),
]
RAW_PATIENTS = sorted({r[0] for r in ROWS})


def make_dicom_site(root: Path, *, key: str = "file") -> tuple[dict[str, Any], list[Path]]:
    """Nested study folders with repeated file names, plus labels.csv keyed by ``key``."""
    rows, files = [], []
    for i, (patient, labels, view, split) in enumerate(ROWS):
        rel = f"study{i:02d}/IM0001.dcm"
        stored = np.rint(ramp(seed=i) * 4095).astype(np.uint16)
        uid = write_dicom(root / rel, stored, patient_id=patient, view=view)
        files.append(root / rel)
        row = {"labels": labels, "split": split}
        row["file" if key == "file" else "sop_instance_uid"] = rel if key == "file" else uid
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return {}, files


def make_csv_site(root: Path) -> tuple[dict[str, Any], list[Path]]:
    rows, files = [], []
    for i, (patient, labels, view, split) in enumerate(ROWS):
        rel = f"20{10 + i}/study_{i}/img_{i:03d}.png"
        write_png(root / rel, np.rint(ramp(seed=i) * 255).astype(np.uint8))
        files.append(root / rel)
        rows.append(
            {"path": rel, "patient_id": patient, "labels": labels, "view": view, "split": split}
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return {}, files


def make_chestmnist_site(root: Path) -> tuple[dict[str, Any], list[Path]]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, size=(n, 14), dtype=np.uint8)
    path = root / "chestmnist.npz"
    root.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return {}, [path]


def make_nih_site(root: Path) -> tuple[dict[str, Any], list[Path]]:
    """DATA.md section 2: Data_Entry_2017.csv, nested images_001/images/*.png, split lists."""
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
    )
    lines, files, train, test = [header], [], [], []
    for i, (patient, labels, view, split) in enumerate(ROWS):
        pid = 100 + RAW_PATIENTS.index(patient)
        name = f"{pid:08d}_{i:03d}.png"
        path = root / "images_001" / "images" / name
        write_png(path, np.rint(ramp(seed=i) * 255).astype(np.uint8))
        files.append(path)
        lines.append(f"{name},{labels or 'No Finding'},{i},{pid},50,M,{view},24,20,0.14,0.14,\n")
        (train if split == "train" else test).append(name)
    (root / "Data_Entry_2017.csv").write_text("".join(lines))
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return {}, files


SITE_MAKERS: dict[str, Callable[[Path], tuple[dict[str, Any], list[Path]]]] = {
    "dicom": make_dicom_site,
    "csv": make_csv_site,
    "chestmnist": make_chestmnist_site,
    "nih": make_nih_site,
}
