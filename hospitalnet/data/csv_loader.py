"""The ``csv`` site loader: a manifest CSV listing image files (PNG, JPEG or DICOM) under a root.

The generic format for a hospital that exports images plus a table: one row per image with its
path (relative to the data root), patient id, pipe-separated labels and optionally view and split.
Column names are options, so an existing export can be read without rewriting it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from hospitalnet.config import Section
from hospitalnet.data.dicom import read_dicom
from hospitalnet.data.file_loader import ImageFileLoader, on_bad_option, unknown_labels_option
from hospitalnet.data.indexing import (
    BadImageError,
    IndexRows,
    files_fingerprint,
    parse_view,
    safe_relative_path,
)
from hospitalnet.data.raster import RASTER_SUFFIXES, read_raster
from hospitalnet.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")


class CsvColumns(Section):
    """Column names in the manifest CSV (``view``, ``split`` and ``image_id`` may be absent)."""

    path: str = Field("path", description="image path relative to the data root")
    patient_id: str = Field("patient_id", description="patient identifier (pseudonymised)")
    labels: str = Field("labels", description="pipe-separated labels; empty = unknown")
    view: str = Field("view", description="PA or AP (optional column)")
    split: str = Field("split", description="train, test or empty (optional column)")
    image_id: str = Field("image_id", description="optional; else the file's base name")


class CsvLoader(ImageFileLoader):
    """Images listed in a manifest CSV; PNG/JPEG through Pillow, ``.dcm`` through read_dicom.

    Paths must be relative to the data root and stay inside it (no ``..``, not absolute). Image
    ids are the ``image_id`` column when present, else the file's base name (which must then be
    unique). Colour PNG/JPEG files are converted to gray and counted in ``notes_``.
    """

    name = "csv"

    class Options(ImageFileLoader.Options):
        manifest: str = Field("manifest.csv", description="manifest CSV file in the data root")
        columns: CsvColumns = CsvColumns()
        on_bad: Literal["error", "skip"] = on_bad_option()
        unknown_labels: Literal["error", "drop"] = unknown_labels_option()

    options: Options

    def _read_manifest(self) -> tuple[pd.DataFrame, list[Path]]:
        name, cols = self.options.manifest, self.options.columns
        try:
            table = pd.read_csv(self.root_path / name, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise DataError(f"{name}: manifest CSV not found in the data root") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DataError(f"{name}: not a readable CSV ({type(err).__name__})") from None
        table.columns = [c.strip() for c in table.columns]
        for column in (cols.path, cols.patient_id, cols.labels):
            if column not in table.columns:
                raise DataError(f"{name}: no {column!r} column (set options.columns)")
        paths = [
            self.root_path / safe_relative_path(text, source=f"{name} row {i + 2}")
            for i, text in enumerate(table[cols.path])
        ]
        return table, paths

    def fingerprint(self) -> str:
        _, paths = self._read_manifest()
        return files_fingerprint(
            self.root_path,
            [self.root_path / self.options.manifest, *paths],
            loader=self.name,
            options=self.options.model_dump(),
        )

    def index(self) -> pd.DataFrame:
        name, cols = self.options.manifest, self.options.columns
        table, paths = self._read_manifest()
        self.skipped_, self.notes_ = Counter(), Counter()
        has_id = cols.image_id in table.columns
        rows = IndexRows(unknown_labels=self.options.unknown_labels)
        by_id: dict[str, Path] = {}
        for i, (row, path) in enumerate(zip(table.to_dict("records"), paths)):
            where = f"{name} row {i + 2}"
            image_id = str(row[cols.image_id]).strip() if has_id else path.name
            if not image_id:
                raise DataError(f"{where}: empty image id")
            if not path.is_file():
                self._bad(BadImageError(image_id, "listed image not found"))
                continue
            raw_patient = str(row[cols.patient_id]).strip()
            if not raw_patient:
                raise DataError(f"{where}: empty patient id")
            view = parse_view(row.get(cols.view, ""))
            rows.add(image_id, raw_patient, view, row.get(cols.split, ""), row[cols.labels], where)
            by_id[image_id] = path
        index = rows.finish(name, self.skipped_, self.notes_)
        self._paths = by_id
        return index

    def read_image(self, image_id: str) -> np.ndarray:
        path = self._indexed_path(image_id)
        suffix = path.suffix.lower()
        if suffix in DICOM_SUFFIXES:
            return read_dicom(path, image_id=image_id)
        if suffix not in RASTER_SUFFIXES:
            raise BadImageError(image_id, f"unsupported file type {suffix!r} (PNG, JPEG or DICOM)")
        image, note = read_raster(path, image_id=image_id)
        if note:
            self._note(note, self.options.manifest)
        return image
