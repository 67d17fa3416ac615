"""DICOM chest X-rays: the display pipeline (:func:`read_dicom`) and the ``dicom`` site loader.

The pipeline follows the DICOM grayscale chain with pydicom 3's own transforms:

1. ``dcmread`` without ``force``: anything without the DICM preamble is "not a DICOM file".
2. One sample per pixel, MONOCHROME1 or MONOCHROME2, one frame; anything else is refused by name.
3. The pixels are decoded at ingest (a truncated file only fails here).
4. ``apply_modality_lut`` (rescale slope/intercept or a Modality LUT), then ``apply_voi_lut`` when
   a window or a VOI LUT is present, then the inversion to presentation values, then [0, 1].

Normalisation uses the range the transform can produce, never the image's own min/max (which would
stretch every film differently): the window maps onto the modality output range (as pydicom's
``apply_windowing`` does), a VOI LUT onto its entries' bit width, and without either the stored
bit depth (``BitsStored``, ``PixelRepresentation``) through the modality transform.

Inversion happens once, after windowing: for MONOCHROME1 (minimum = white) and for Presentation LUT
Shape INVERSE. The standard requires INVERSE exactly when the image is MONOCHROME1 (PS3.3, the
Presentation LUT Shape attribute: "INVERSE shall be used if Photometric Interpretation is
MONOCHROME1"), so both together describe one inversion, not two; a conformant DX MONOCHROME1 file
would otherwise come out as a negative.

Privacy: messages name a file by its image id (base name or SOP Instance UID), never by its folder
path or a header value. pydicom's own warnings and log records can quote header values (a patient
name with an invalid character), so they are withheld: warnings are caught and only counted, and the
text of pydicom log records is replaced.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import warnings
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pydicom
from pydantic import Field
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.pixels.processing import apply_voi
from pydicom.uid import UID

from hospitalnet.data.file_loader import ImageFileLoader, on_bad_option, unknown_labels_option
from hospitalnet.data.indexing import (
    BadImageError,
    IndexRows,
    describe_counts,
    files_fingerprint,
    parse_view,
    safe_relative_path,
)
from hospitalnet.errors import DataError

logger = logging.getLogger(__name__)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Defined terms of (0028,0004); only these are named in messages (a corrupt header could hold
# anything, and header text is never echoed).
_KNOWN_PHOTOMETRIC = frozenset(
    {
        "PALETTE COLOR",
        "RGB",
        "HSV",
        "ARGB",
        "CMYK",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
        "XYB",
    }
)
# pydicom names plugin requirements by import name; users install by PyPI name.
_PYPI_NAME = {"gdcm": "python-gdcm"}


# --------------------------------------------------------------------------- privacy guard


class _WithholdText(logging.Filter):
    """Replace the text of pydicom log records: it may quote header values."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = "pydicom reported a problem (text withheld: it may quote header values)"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


@cache
def _guard_pydicom_logs() -> None:
    # A filter on a logger only sees records created on that logger, so each pydicom logger that
    # exists once pydicom.pixels is imported gets one.
    names = {"pydicom"} | {
        n for n in logging.root.manager.loggerDict if n == "pydicom" or n.startswith("pydicom.")
    }
    for name in sorted(names):
        logging.getLogger(name).addFilter(_WithholdText())


# --------------------------------------------------------------------------- the pipeline


def read_dicom(path: str | Path, *, image_id: str | None = None) -> np.ndarray:
    """Read one grayscale DICOM image as float32 (H, W) in [0, 1], 1 = brightest on display.

    Parameters
    ----------
    path
        The file.
    image_id
        How the file is named in error messages; ``None`` = the file's base name.

    Raises
    ------
    BadImageError
        (a :class:`DataError`) naming the image id and the reason: not a DICOM file, colour or
        unsupported photometric interpretation, multi-frame, truncated or corrupt pixel data, or a
        compressed transfer syntax whose decoder package is missing (the package is named).
    """
    name = image_id if image_id is not None else Path(path).name
    _guard_pydicom_logs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _read_file(path, name)
        try:
            _check_grayscale_image(ds, name)
        except (ValueError, TypeError, OverflowError):
            # pydicom converts header values when they are read: a malformed number ("1A" in
            # an IS element) raises here. The value itself is never echoed.
            raise BadImageError(name, "malformed number in the DICOM header") from None
        stored = _decode_pixels(ds, name)
        image = _to_presentation(stored, ds, name)
    if caught:
        logger.debug("%s: %d pydicom warning(s) withheld", name, len(caught))
    return image


def _read_file(path: str | Path, name: str, **kwargs: Any) -> Dataset:
    try:
        ds = pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        raise BadImageError(name, "not a DICOM file") from None
    except FileNotFoundError:
        raise BadImageError(name, "file not found") from None
    except IsADirectoryError:
        raise BadImageError(name, "is a folder, not a file") from None
    except PermissionError:
        raise BadImageError(name, "permission denied") from None
    except Exception:  # noqa: BLE001 - pydicom raises many types on a damaged header
        raise BadImageError(name, "truncated or corrupt DICOM header") from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise BadImageError(name, "truncated or corrupt DICOM header (no transfer syntax)")
    return ds


def _check_grayscale_image(ds: Dataset, name: str) -> None:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise BadImageError(name, "float pixel data is not supported")
        raise BadImageError(name, "truncated or corrupt pixel data (no Pixel Data element)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = ds.get("SamplesPerPixel")
    if photometric in _KNOWN_PHOTOMETRIC or (samples is not None and samples != 1):
        shown = photometric if photometric in _KNOWN_PHOTOMETRIC else f"{samples} samples/pixel"
        raise BadImageError(
            name, f"colour image ({shown}) is not supported; expected MONOCHROME1 or MONOCHROME2"
        )
    if photometric not in MONOCHROME or samples is None:
        raise BadImageError(
            name, "unsupported photometric interpretation; expected MONOCHROME1 or MONOCHROME2"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise BadImageError(name, "multi-frame images are not supported")
    if "BitsStored" not in ds or "PixelRepresentation" not in ds:
        raise BadImageError(name, "truncated or corrupt DICOM header (no BitsStored)")
    if "PresentationLUTSequence" in ds:
        raise BadImageError(name, "a Presentation LUT Sequence is not supported")


def _decode_pixels(ds: Dataset, name: str) -> np.ndarray:
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        stored = ds.pixel_array
    except Exception:  # noqa: BLE001 - decoders raise many types on damaged data
        if syntax.is_compressed:
            raise BadImageError(name, decoder_problem(syntax)) from None
        raise BadImageError(name, "truncated or corrupt pixel data") from None
    if stored.ndim != 2:
        raise BadImageError(name, f"unexpected pixel array of {stored.ndim} dimensions")
    return stored


def missing_decoder_packages(syntax: UID) -> list[str]:
    """Install options pydicom reports for ``syntax``, as PyPI names ("pylibjpeg + ...")."""
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError):
        return []
    options = []
    for line in decoder.missing_dependencies:  # "pylibjpeg - requires pylibjpeg>=2.0 and ..."
        _, _, requirement = line.partition(" - requires ")
        names = [
            re.split(r"[<>=!~ ]", part.strip(), maxsplit=1)[0]
            for part in requirement.split(" and ")
        ]
        names = [_PYPI_NAME.get(n, n) for n in names if n and n != "numpy"]
        if names:
            options.append(" + ".join(names))
    return options


def decoder_problem(syntax: UID) -> str:
    """Why ``syntax`` could not be decoded, naming the package(s) that would decode it."""
    options = " or ".join(missing_decoder_packages(syntax)) or "a pydicom pixel-data plugin"
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError):
        return f"unsupported transfer syntax {syntax.name}"
    if not decoder.is_available:
        return f"cannot decode {syntax.name} pixel data: decoder missing, install {options}"
    plugins = ", ".join(decoder.available_plugins)
    return (
        f"cannot decode {syntax.name} pixel data with the installed decoder ({plugins}): "
        f"truncated or corrupt data, or a variant it does not support (e.g. 12-bit JPEG; "
        f"install {options})"
    )


def _to_presentation(stored: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    try:
        if stored.dtype.kind in "iu" and int(stored.max()) - min(int(stored.min()), 0) <= 2**16:
            # Every step is a function of the stored value alone, so run the pipeline once over
            # the values that occur and look the pixels up (same result, ~10x faster at 1024 px
            # than windowing a million float64 pixels).
            first = 0 if stored.dtype.kind == "u" else int(stored.min())
            domain = np.arange(first, int(stored.max()) + 1).astype(stored.dtype)
            table = _presentation_values(domain, ds, name).astype(np.float32)
            if first == 0:
                return table[stored]  # unsigned: the stored value is the table row
            return table[np.subtract(stored, first, dtype=np.int64)]
        return _presentation_values(stored, ds, name).astype(np.float32)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError):
        raise BadImageError(name, "unsupported or corrupt grayscale transform attributes") from None


def _presentation_values(stored: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    """Modality LUT, VOI, normalisation to [0, 1], inversion: float64 presentation values."""
    values = apply_modality_lut(stored, ds)
    voi = voi_kind(ds)
    if voi:
        values = apply_voi_lut(values, ds)
    lo, hi = voi_lut_range(ds) if voi == "lut" else modality_range(ds)
    if not hi > lo:
        raise BadImageError(name, "empty output range of the grayscale transform")
    image = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    np.clip(image, 0.0, 1.0, out=image)
    if is_inverted(ds):
        image = 1.0 - image
    return image


def voi_kind(ds: Dataset) -> Literal["lut", "window", ""]:
    """Which VOI transform ``apply_voi_lut`` applies (same tests as pydicom; the LUT wins)."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return ""


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The values BitsStored and PixelRepresentation allow (the true bit depth)."""
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def modality_range(ds: Dataset) -> tuple[float, float]:
    """Output range of the modality transform; a window maps onto this same range."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    lo, hi = stored_range(ds)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        a, b = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        return min(a, b), max(a, b)
    return float(lo), float(hi)


def voi_lut_range(ds: Dataset) -> tuple[float, float]:
    """Output range of the VOI LUT: 0 .. 2**bits - 1 with the entries' actual bit width.

    The descriptor's third value is often 16 for a LUT whose entries are 12-bit; using the
    entries' width (as DCMTK does) avoids a dark image, and is a property of the LUT, not of
    the image.
    """
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries = int(descriptor[0]) or 2**16
    first = int(descriptor[1])
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds)
    bits = min(int(descriptor[2]), max(1, int(np.max(table)).bit_length()))
    return 0.0, float(2**bits - 1)


def is_inverted(ds: Dataset) -> bool:
    """MONOCHROME1 or Presentation LUT Shape INVERSE: one inversion either way (see module doc)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


# --------------------------------------------------------------------------- the site loader


class DicomLoader(ImageFileLoader):
    """A folder of DICOM files (searched recursively) plus a labels CSV in the data root.

    The CSV has ``labels`` (pipe-separated ChestX-ray14 names, aliases accepted, "No Finding" = all
    absent, empty = unknown) and one key column: ``file`` (path relative to the root) or
    ``sop_instance_uid`` (the folder is then scanned for that UID). Optional: ``patient_id`` (else
    the DICOM PatientID header), ``view`` (else the ViewPosition header) and ``split``.
    Patient ids are pseudonymised as soon as they are read.

    Image ids are SOP Instance UIDs by default (file names repeat across study folders in most
    hospital exports: IM0001 in every study); ``image_id: file_name`` uses base names instead.
    """

    name = "dicom"

    class Options(ImageFileLoader.Options):
        labels_csv: str = Field("labels.csv", description="labels CSV file in the data root")
        image_id: Literal["sop_instance_uid", "file_name"] = Field(
            "sop_instance_uid", description="what names an image: its UID or its file's base name"
        )
        file_glob: str = Field(
            "*", description="file names scanned when the CSV is keyed by sop_instance_uid"
        )
        on_bad: Literal["error", "skip"] = on_bad_option()
        unknown_labels: Literal["error", "drop"] = unknown_labels_option()

    options: Options

    # -- the labels CSV
    @property
    def _csv_path(self) -> Path:
        return self.root_path / self.options.labels_csv

    def _read_labels_csv(self) -> pd.DataFrame:
        csv_name = self.options.labels_csv
        try:
            table = pd.read_csv(self._csv_path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise DataError(f"{csv_name}: labels CSV not found in the data root") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DataError(f"{csv_name}: not a readable CSV ({type(err).__name__})") from None
        table.columns = [c.strip() for c in table.columns]
        if "labels" not in table.columns:
            raise DataError(f"{csv_name}: no 'labels' column")
        if "file" not in table.columns and "sop_instance_uid" not in table.columns:
            raise DataError(f"{csv_name}: needs a 'file' or a 'sop_instance_uid' column")
        return table

    def _scanned_files(self) -> list[Path]:
        root, csv_path = self.root_path, self._csv_path
        found = []
        for path in root.rglob("*"):
            rel = path.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or path == csv_path:
                continue
            if path.name.upper() == "DICOMDIR" or not path.is_file():
                continue
            if fnmatch.fnmatch(path.name, self.options.file_glob):
                found.append(path)
        return sorted(found)

    def _listed_files(self, table: pd.DataFrame) -> list[Path]:
        csv_name = self.options.labels_csv
        return [
            self.root_path / safe_relative_path(text, source=f"{csv_name} row {i + 2}")
            for i, text in enumerate(table["file"])
        ]

    # -- the contract
    def fingerprint(self) -> str:
        table = self._read_labels_csv()
        files = self._listed_files(table) if "file" in table.columns else self._scanned_files()
        return files_fingerprint(
            self.root_path,
            [self._csv_path, *files],
            loader=self.name,
            options=self.options.model_dump(),
        )

    def index(self) -> pd.DataFrame:
        csv_name = self.options.labels_csv
        table = self._read_labels_csv()
        self.skipped_ = Counter()
        self.notes_ = Counter()
        if "file" in table.columns:
            headers = self._headers_by_file(table)
        else:
            headers = self._headers_by_uid(table)

        rows = IndexRows(unknown_labels=self.options.unknown_labels)
        paths: dict[str, Path] = {}
        for i, row in enumerate(table.to_dict("records")):
            where = f"{csv_name} row {i + 2}"
            header = headers[i]
            if isinstance(header, BadImageError):
                self._bad(header)
                continue
            path, uid, header_patient, header_view = header
            image_id = uid if self.options.image_id == "sop_instance_uid" else path.name
            raw_patient = str(row.get("patient_id", "")).strip() or header_patient
            if not raw_patient:
                self._bad(BadImageError(image_id, "no patient id (CSV and PatientID empty)"))
                continue
            view = parse_view(row.get("view", "")) or parse_view(header_view)
            rows.add(image_id, raw_patient, view, row.get("split", ""), row["labels"], where)
            paths[image_id] = path
        index = rows.finish(csv_name, self.skipped_, self.notes_)
        self._paths = paths
        return index

    def read_image(self, image_id: str) -> np.ndarray:
        return read_dicom(self._indexed_path(image_id), image_id=image_id)

    # -- helpers
    def _header(self, path: Path) -> tuple[Path, str, str, str] | BadImageError:
        """(path, SOP Instance UID, raw PatientID, ViewPosition) or the reason it is unusable."""
        _guard_pydicom_logs()
        name = path.name
        if not path.is_file():
            return BadImageError(name, "listed image not found")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # may quote header values
                ds = _read_file(
                    path,
                    name,
                    stop_before_pixels=True,
                    specific_tags=["SOPInstanceUID", "PatientID", "ViewPosition"],
                )
        except BadImageError as err:
            return err
        uid = str(
            ds.get("SOPInstanceUID", "") or ds.file_meta.get("MediaStorageSOPInstanceUID", "")
        )
        if not uid:
            return BadImageError(name, "no SOP Instance UID")
        return (
            path,
            uid.strip(),
            str(ds.get("PatientID", "") or "").strip(),
            str(ds.get("ViewPosition", "") or ""),
        )

    def _headers_by_file(self, table: pd.DataFrame) -> list[Any]:
        return [self._header(path) for path in self._listed_files(table)]

    def _headers_by_uid(self, table: pd.DataFrame) -> list[Any]:
        csv_name = self.options.labels_csv
        by_uid: dict[str, tuple[Path, str, str, str]] = {}
        unreadable: Counter[str] = Counter()
        for path in self._scanned_files():
            header = self._header(path)
            if isinstance(header, BadImageError):
                # A scanned file is only bad if it was meant to be an image: count it; under
                # on_bad=error a non-DICOM file among the scanned ones stops the index.
                if self.options.on_bad == "error":
                    raise DataError(
                        f"{header} (found while scanning for {csv_name}'s UIDs; "
                        "narrow options.file_glob or set on_bad: skip)"
                    )
                unreadable[header.reason] += 1
                continue
            uid = header[1]
            if uid in by_uid:
                raise DataError(f"{csv_name}: duplicate image ids (SOP Instance UID {uid!r})")
            by_uid[uid] = header
        if unreadable:
            logger.warning(
                "%s: %d scanned file(s) ignored: %s",
                csv_name,
                sum(unreadable.values()),
                describe_counts(unreadable),
            )
            self.notes_.update({f"scanned files ignored: {k}": v for k, v in unreadable.items()})
        listed = [str(u).strip() for u in table["sop_instance_uid"]]
        unlisted = len(set(by_uid) - set(listed))
        if unlisted:
            logger.info("%s: %d DICOM file(s) have no labels row; ignored", csv_name, unlisted)
        return [by_uid.get(u) or BadImageError(u, "listed image not found") for u in listed]
