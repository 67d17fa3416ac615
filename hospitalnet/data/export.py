"""Write a site's images in another hospital's storage format (DICOM tree, PNG tree + CSV).

The synthetic default world is generated in the NIH layout; some of its sites are then exported
with these functions so that the default network really goes through the ``dicom`` and ``csv``
loaders, including the hard parts of DICOM (MONOCHROME1 storage, rescale, VOI window).

Both writers are deterministic: the same inputs and seed give byte-identical files (UIDs come from
:func:`pydicom.uid.generate_uid` with seeded entropy, dates from the seeded generator; nothing
reads the clock).

Patient identity: the index carries pseudonyms only. The DICOM headers and the CSV need a patient
name/id, so the caller may pass ``patient_identity(pseudonym) -> (PatientName, PatientID)``; the
default makes synthetic values from the pseudonym. Tests pass canary values through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from hospitalnet.labels import LABELS, format_finding_labels
from hospitalnet.seeding import numpy_rng

ReadImage = Callable[[str], np.ndarray]
PatientIdentity = Callable[[str], tuple[str, str]]

# mono1_voi: the stored raw value s maps to modality units m = SLOPE * s + INTERCEPT (12 bits:
# m in [-1024, 1023.5]); the window (centre c, width w, in m units, varied per image) maps onto
# that whole range, and MONOCHROME1 inverts it. Values outside the window exist in storage, as in
# a real CR plate.
MONO1_SLOPE = 0.5
MONO1_INTERCEPT = -1024.0
BITS_STORED = 12


def synthetic_identity(pseudonym: str) -> tuple[str, str]:
    """A synthetic (PatientName, PatientID) derived from a pseudonym (stable, not reversible)."""
    digest = hashlib.sha256(pseudonym.encode()).hexdigest()
    return f"SYNTHETIC^{digest[:8].upper()}", f"SYN{int(digest[8:18], 16) % 10**9:09d}"


def _labels_text(row: pd.Series) -> str:
    vec = row[list(LABELS)].to_numpy(dtype=np.float32)
    return "" if np.isnan(vec).any() else format_finding_labels(vec)


def _study_dates(n: int, rng: np.random.Generator) -> list[str]:
    years = rng.integers(2012, 2024, size=n)
    days = rng.integers(0, 365, size=n)
    return [
        (np.datetime64(f"{y}-01-01") + np.timedelta64(int(d), "D")).astype(str).replace("-", "")
        for y, d in zip(years, days)
    ]


def _uid(seed: int, *parts: str) -> str:
    # pydicom's own root: with a prefix, generate_uid hashes the entropy (prefix=None would
    # ignore it and return a random UUID-based UID).
    return str(generate_uid(PYDICOM_ROOT_UID, entropy_srcs=["hospitalnet", str(seed), *parts]))


def encode_mono2(image: np.ndarray) -> np.ndarray:
    """[0, 1] -> 12-bit stored values (MONOCHROME2: bright = high)."""
    return np.rint(np.clip(image, 0, 1) * (2**BITS_STORED - 1)).astype(np.uint16)


def encode_mono1_voi(image: np.ndarray, center: float, width: float) -> np.ndarray:
    """[0, 1] -> 12-bit stored values that the pipeline maps back to ``image``.

    The display value after the LINEAR window (PS3.3 C.11.2.1.2.1) is
    ``((m - (c - 0.5)) / (w - 1) + 0.5)`` of the output range, and MONOCHROME1 shows its
    complement; solving ``1 - that = image`` for m and then the rescale for s gives this.
    """
    m = (center - 0.5) + (width - 1.0) * (0.5 - np.clip(image, 0, 1))
    stored = np.rint((m - MONO1_INTERCEPT) / MONO1_SLOPE)
    return np.clip(stored, 0, 2**BITS_STORED - 1).astype(np.uint16)


def export_site_as_dicom(
    index: pd.DataFrame,
    read_image: ReadImage,
    out_dir: str | Path,
    *,
    style: Literal["mono2", "mono1_voi"],
    seed: int,
    patient_identity: PatientIdentity = synthetic_identity,
    labels_csv: str = "labels.csv",
) -> pd.DataFrame:
    """Write one DICOM file per index row plus ``labels_csv`` for the ``dicom`` loader.

    Layout: ``out_dir/{year}/{study date}_{n}/IM0001.dcm`` (file names repeat across studies, as
    in most hospital exports; the loader keys images by SOP Instance UID). ``mono2`` writes DX,
    MONOCHROME2, 12 bits stored in 16; ``mono1_voi`` writes CR, MONOCHROME1 (inverted storage)
    with RescaleSlope/Intercept 0.5/-1024, a per-image WindowCenter/Width and Presentation LUT
    Shape INVERSE, such that the display pipeline returns the image up to 12-bit quantisation.
    The labels CSV has ``file, labels, view, split`` and no patient column: the loader takes the
    patient from the PatientID header.

    Returns
    -------
    pandas.DataFrame
        ``source_image_id`` (the index's), ``image_id`` (the SOP Instance UID the loader will
        report) and ``file`` (path relative to ``out_dir``), one row per image.
    """
    if style not in ("mono2", "mono1_voi"):
        raise ValueError(f"unknown DICOM export style {style!r}")
    out = Path(out_dir)
    rng = numpy_rng(seed, "export-dicom", style)
    dates = _study_dates(len(index), rng)
    # Window kept inside the 12-bit modality range (|m| <= 1000 < 1023.5), so nothing clips.
    centers = np.clip(rng.normal(0.0, 40.0, size=len(index)), -100.0, 100.0)
    widths = rng.uniform(1400.0, 1800.0, size=len(index))
    rows, mapping = [], []
    for k, (_, row) in enumerate(index.iterrows()):
        source_id = str(row["image_id"])
        patient_name, patient_id = patient_identity(str(row["patient"]))
        sop_uid = _uid(seed, "sop", source_id)
        rel = f"{dates[k][:4]}/{dates[k]}_{k:06d}/IM0001.dcm"
        ds = _dicom_dataset(
            read_image(source_id),
            style=style,
            sop_uid=sop_uid,
            study_uid=_uid(seed, "study", source_id),
            series_uid=_uid(seed, "series", source_id),
            patient_name=patient_name,
            patient_id=patient_id,
            study_date=dates[k],
            view=str(row["view"]),
            center=float(np.round(centers[k], 1)),
            width=float(np.round(widths[k], 1)),
            instance=k + 1,
        )
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        rows.append(
            {"file": rel, "labels": _labels_text(row), "view": row["view"], "split": row["split"]}
        )
        mapping.append({"source_image_id": source_id, "image_id": sop_uid, "file": rel})
    pd.DataFrame(rows, columns=["file", "labels", "view", "split"]).to_csv(
        out / labels_csv, index=False
    )
    return pd.DataFrame(mapping, columns=["source_image_id", "image_id", "file"])


def _dicom_dataset(
    image: np.ndarray,
    *,
    style: str,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    patient_name: str,
    patient_id: str,
    study_date: str,
    view: str,
    center: float,
    width: float,
    instance: int,
) -> Dataset:
    sop_class = (
        DigitalXRayImageStorageForPresentation
        if style == "mono2"
        else ComputedRadiographyImageStorage
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.Modality = "DX" if style == "mono2" else "CR"
    ds.Manufacturer = "hospitalnet synthetic"
    ds.BodyPartExamined = "CHEST"
    if view in ("PA", "AP"):
        ds.ViewPosition = view
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelSpacing = [0.143, 0.143]

    image = np.asarray(image, dtype=np.float32)
    if style == "mono2":
        stored = encode_mono2(image)
        photometric = "MONOCHROME2"
        ds.PresentationLUTShape = "IDENTITY"
    else:
        stored = encode_mono1_voi(image, center, width)
        photometric = "MONOCHROME1"
        ds.PresentationLUTShape = "INVERSE"  # required with MONOCHROME1 (one inversion)
        ds.RescaleSlope = MONO1_SLOPE
        ds.RescaleIntercept = MONO1_INTERCEPT
        ds.RescaleType = "US"
        ds.WindowCenter = center
        ds.WindowWidth = width
        ds.VOILUTFunction = "LINEAR"
    ds.set_pixel_data(
        stored,
        photometric_interpretation=photometric,
        bits_stored=BITS_STORED,
        generate_instance_uid=False,  # keep the deterministic UID
    )
    return ds


def export_site_as_csv(
    index: pd.DataFrame,
    read_image: ReadImage,
    out_dir: str | Path,
    *,
    seed: int,
    patient_identity: PatientIdentity = synthetic_identity,
    bit_depth: Literal[8, 16] = 8,
    manifest: str = "manifest.csv",
) -> pd.DataFrame:
    """Write one grayscale PNG per index row in a hospital-style tree plus a manifest CSV.

    Layout: ``out_dir/{year}/{study date}_{n}/{image_id}.png``; the manifest (columns ``path,
    patient_id, labels, view, split``) is what the ``csv`` loader reads with its default options,
    and the image ids it reports are the PNG base names (the index's ids, with ``.png`` added when
    missing). ``bit_depth`` 8 or 16 (16-bit PNG, scaled to the full 0..65535 range).

    Returns
    -------
    pandas.DataFrame
        ``source_image_id``, ``image_id`` (as the loader will report it) and ``path``.
    """
    if bit_depth not in (8, 16):
        raise ValueError("bit_depth must be 8 or 16")
    out = Path(out_dir)
    rng = numpy_rng(seed, "export-csv")
    dates = _study_dates(len(index), rng)
    rows, mapping = [], []
    for k, (_, row) in enumerate(index.iterrows()):
        source_id = str(row["image_id"])
        file_name = source_id if source_id.lower().endswith(".png") else f"{source_id}.png"
        if "/" in file_name or "\\" in file_name or file_name.startswith("."):
            raise ValueError("image ids must be file names, not paths")
        rel = f"{dates[k][:4]}/{dates[k]}_{k:06d}/{file_name}"
        image = np.clip(np.asarray(read_image(source_id), dtype=np.float32), 0, 1)
        if bit_depth == 8:
            pixels = Image.fromarray(np.rint(image * 255).astype(np.uint8))
        else:
            pixels = Image.fromarray(np.rint(image * 65535).astype(np.uint16))
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels.save(path, format="PNG")
        _, patient_id = patient_identity(str(row["patient"]))
        rows.append(
            {
                "path": rel,
                "patient_id": patient_id,
                "labels": _labels_text(row),
                "view": row["view"],
                "split": row["split"],
            }
        )
        mapping.append({"source_image_id": source_id, "image_id": file_name, "path": rel})
    pd.DataFrame(rows, columns=["path", "patient_id", "labels", "view", "split"]).to_csv(
        out / manifest, index=False
    )
    return pd.DataFrame(mapping, columns=["source_image_id", "image_id", "path"])
