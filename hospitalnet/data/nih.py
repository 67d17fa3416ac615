"""The ``nih`` site loader: the NIH ChestX-ray14 release as a user unpacks it.

Layout (DATA.md section 2)::

    ROOT/Data_Entry_2017.csv  (or Data_Entry_2017_v2020.csv)
    ROOT/train_val_list.txt, ROOT/test_list.txt      the official split (optional)
    ROOT/images_001/images/00000001_000.png ...      nested, or all PNGs in one flat folder

Quirks handled: the bracketed headers ``OriginalImage[Width,Height]`` and
``OriginalImagePixelSpacing[x,y]`` split into extra columns, the 2017 file's trailing empty column
(with or without a matching trailing comma in the header), a UTF-8 BOM, both file names, and
images nested or flat (the PNGs under the root are indexed recursively, once, by file name).

Options (``data.options`` in a site manifest):

``csv``
    The Data_Entry file name in the root (or an absolute path). ``None`` = whichever of
    ``Data_Entry_2017_v2020.csv`` / ``Data_Entry_2017.csv`` exists (the v2020 file wins when both do).
``image_list``
    Keep only these images: a ``.csv`` file with an ``Image Index`` column and optionally a
    ``split`` column (train / test / empty; what ``hospitalnet partition`` writes), or any other
    file with one image name per line. ``${VAR}`` / ``${VAR:-default}`` and ``~`` are expanded;
    a relative path is taken relative to the data root. ``None`` = every image of the CSV.
``split_lists``
    Fill the ``split`` column from ``train_val_list.txt`` ("train") and ``test_list.txt``
    ("test") when they exist. A ``split`` column of the image list takes precedence.
``on_missing_image``
    A CSV row whose PNG is not on disk: ``error`` (default) or ``skip`` (counted in ``skipped_``).
``on_bad``
    A PNG that cannot be decoded (truncated, not a PNG): ``error`` (default) or ``skip`` (left
    out when the site's images are decoded and counted by reason, as the other loaders do).
``unknown_labels``
    A label name outside the 14 and their aliases: ``error`` (names label, CSV and row) or
    ``drop`` (the name is ignored and counted in ``notes_``).

Errors name the CSV or list file by its base name, a row number and image ids (file names), never
a folder path or a patient id; patients leave the loader only as :func:`pseudonymise` pseudonyms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from hospitalnet.data.base import pseudonymise
from hospitalnet.data.file_loader import ImageFileLoader, on_bad_option, unknown_labels_option
from hospitalnet.data.indexing import (
    assemble_index,
    parse_labels_cell,
    parse_split,
    parse_view,
)
from hospitalnet.data.manifest import expand_vars
from hospitalnet.data.raster import read_raster
from hospitalnet.errors import DataError
from hospitalnet.labels import NUM_LABELS

logger = logging.getLogger(__name__)

# Newest first: when both files are present the v2020 revision is read.
CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
SPLIT_LISTS = (("train_val_list.txt", "train"), ("test_list.txt", "test"))
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
# The Data_Entry columns kept (and written by ``hospitalnet partition``); the split-off halves of
# the bracketed headers and the trailing empty column are dropped. v2020 says "Patient Sex".
ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "Patient Sex",
    "View Position",
)
MISSING_ON_DISK = "listed image not found"


def read_data_entry(path: Path) -> pd.DataFrame:
    """The Data_Entry CSV as stripped strings, :data:`ENTRY_COLUMNS` only, in file order.

    The returned frame has a ``row`` column: the line number in the file (header = 1), for
    messages.
    """
    name = path.name
    try:
        with warnings.catch_warnings():
            # A header without the trailing comma while the rows have it: pandas warns that it
            # drops the (empty) extra field, which is exactly what we want.
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            table = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                index_col=False,
                encoding="utf-8-sig",
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{name}: not a readable CSV ({type(err).__name__})") from None
    except OSError as err:
        raise DataError(f"{name}: cannot read ({err.strerror})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(repr(c) for c in missing)}")
    kept = table[[c for c in ENTRY_COLUMNS if c in table.columns]].apply(lambda s: s.str.strip())
    kept.insert(0, "row", np.arange(2, len(kept) + 2))
    return kept


def _read_names(path: Path) -> list[str]:
    """One image name per line (blank lines ignored)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise DataError(f"{path.name}: cannot read ({err.strerror})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _first_duplicate(values: pd.Series) -> tuple[int, str]:
    dup = values[values.duplicated()]
    return len(dup), (str(dup.iloc[0]) if len(dup) else "")


def _pseudonyms(patient_ids: pd.Series) -> list[str]:
    """:func:`pseudonymise` each distinct id once (a patient has up to 184 images)."""
    codes, uniques = pd.factorize(patient_ids)
    names = np.array([pseudonymise(p) for p in uniques], dtype=object)
    return names[codes].tolist()


@dataclass(frozen=True)
class _Selection:
    """This site's rows of the Data_Entry CSV, the split of each, and where each PNG is."""

    table: pd.DataFrame  # ENTRY_COLUMNS present in the CSV + "row" + "split"
    split_source: str  # which file the split came from (for the overlap message)
    paths: dict[str, str]  # image id -> file, for the selected images found on disk
    missing: list[str]  # selected image ids not found on disk (kept in CSV order)


class NihLoader(ImageFileLoader):
    """NIH ChestX-ray14: Data_Entry CSV + PNGs (flat or nested), optional image list and split.

    Attributes set by :meth:`index`: ``skipped_`` (images left out, by reason) and ``notes_``
    (things worth knowing that did not stop the site, e.g. unknown label names dropped).
    """

    name = "nih"

    class Options(ImageFileLoader.Options):
        csv: str | None = Field(
            None, description="Data_Entry file; None = Data_Entry_2017(_v2020).csv in the root"
        )
        image_list: str | None = Field(
            None, description="file of image names (or CSV with Image Index[, split]); None = all"
        )
        split_lists: bool = Field(
            True, description="fill split from train_val_list.txt / test_list.txt when present"
        )
        on_missing_image: Literal["error", "skip"] = Field(
            "error", description="a CSV row without its PNG: stop, or skip it and count it"
        )
        on_bad: Literal["error", "skip"] = on_bad_option(
            "an unreadable PNG: stop with its error, or skip it and count it"
        )
        unknown_labels: Literal["error", "drop"] = unknown_labels_option(
            "an unknown label name: stop, or drop the name and count it"
        )

    options: Options

    def __init__(
        self, root: str, options: dict[str, Any] | None = None, *, source: str = ""
    ) -> None:
        super().__init__(root, options, source=source)
        self._entries: pd.DataFrame | None = None

    # ------------------------------------------------------------------------------- files

    def csv_path(self) -> Path:
        """The Data_Entry CSV this loader reads (raises :class:`DataError` when absent)."""
        if not self.root_path.is_dir():
            raise DataError(f"{self.source}: the data folder (data.root) does not exist")
        names = [self.options.csv] if self.options.csv else list(CSV_NAMES)
        for name in names:
            path = self.root_path / name  # an absolute name replaces the root
            if path.is_file():
                return path
        wanted = " or ".join(Path(n).name for n in names)
        raise DataError(f"{self.source}: no {wanted} in the data folder (data.root)")

    def image_list_path(self) -> Path | None:
        text = self.options.image_list
        if text is None:
            return None
        path = Path(expand_vars(text, source=f"{self.source}: data.options.image_list"))
        path = path if path.is_absolute() else self.root_path / path
        if not path.is_file():
            raise DataError(f"{self.source}: data.options.image_list: {text} not found")
        return path

    def _split_list_paths(self) -> list[tuple[Path, str]]:
        if not self.options.split_lists:
            return []
        pairs = [(self.root_path / name, split) for name, split in SPLIT_LISTS]
        return [(p, s) for p, s in pairs if p.is_file()]

    def _scan_pngs(self) -> dict[str, list[str]]:
        """File name -> every PNG of that name under the root (recursive, one pass)."""
        found: dict[str, list[str]] = {}  # plain strings: 112k Path objects cost seconds
        stack, seen = [self.root_path], set()
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            if real in seen:
                continue  # a symlink loop, or two links to one folder
            seen.add(real)
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # an unreadable sub-folder holds nothing we can use
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif entry.name.lower().endswith(".png"):
                    found.setdefault(entry.name, []).append(entry.path)
        return found

    # --------------------------------------------------------------------------- selection

    def _select(self) -> _Selection:
        csv_path = self.csv_path()
        csv_name = csv_path.name
        table = read_data_entry(csv_path)
        if (table["Image Index"] == "").any():
            row = int(table.loc[table["Image Index"] == "", "row"].iloc[0])
            raise DataError(f"{csv_name} row {row}: empty Image Index")
        n_dup, first = _first_duplicate(table["Image Index"])
        if n_dup:
            raise DataError(
                f"{csv_name}: {n_dup} duplicate Image Index value(s) (first {first}); "
                "each image must be listed once"
            )
        table["split"] = ""
        split_source = csv_name
        for list_path, split in self._split_list_paths():
            listed = table["Image Index"].isin(set(_read_names(list_path)))
            clash = listed & (table["split"] != "")
            if clash.any():
                raise DataError(
                    f"{list_path.name}: {int(clash.sum())} image(s) also in another split list "
                    f"(first {table.loc[clash, 'Image Index'].iloc[0]})"
                )
            table.loc[listed, "split"] = split
            split_source = "train_val_list.txt / test_list.txt"

        list_path = self.image_list_path()
        if list_path is not None:
            table, from_list = self._apply_image_list(table, list_path, csv_name)
            if from_list:
                split_source = list_path.name

        empty_patient = table["Patient ID"] == ""
        if empty_patient.any():
            row = int(table.loc[empty_patient, "row"].iloc[0])
            raise DataError(f"{csv_name} row {row}: empty Patient ID")

        on_disk = self._scan_pngs()
        ids = table["Image Index"].tolist()
        repeated = [i for i in ids if len(on_disk.get(i, ())) > 1]
        if repeated:
            raise DataError(
                f"{self.source}: {len(repeated)} image(s) found more than once under the data "
                f"folder (first {repeated[0]}); keep one copy (flat or nested, not both)"
            )
        paths = {i: on_disk[i][0] for i in ids if i in on_disk}
        missing = [i for i in ids if i not in paths]
        return _Selection(table.reset_index(drop=True), split_source, paths, missing)

    def _apply_image_list(
        self, table: pd.DataFrame, list_path: Path, csv_name: str
    ) -> tuple[pd.DataFrame, bool]:
        """Restrict ``table`` to the listed images; return whether the list carried a split."""
        list_name = list_path.name
        has_split = False
        if list_path.suffix.lower() == ".csv":
            try:
                listed = pd.read_csv(
                    list_path, dtype=str, keep_default_na=False, encoding="utf-8-sig"
                )
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
                raise DataError(f"{list_name}: not a readable CSV ({type(err).__name__})") from None
            listed.columns = [str(c).strip() for c in listed.columns]
            if "Image Index" not in listed.columns:
                raise DataError(f"{list_name}: missing column 'Image Index'")
            names = listed["Image Index"].str.strip()
            has_split = "split" in listed.columns
            splits = (
                [
                    parse_split(v, source=f"{list_name} row {i + 2}")
                    for i, v in enumerate(listed["split"])
                ]
                if has_split
                else None
            )
        else:
            names = pd.Series(_read_names(list_path), dtype=str)
            splits = None
        n_dup, first = _first_duplicate(names)
        if n_dup:
            raise DataError(f"{list_name}: {n_dup} image(s) listed twice (first {first})")
        known = set(table["Image Index"])
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DataError(
                f"{list_name}: {len(unknown)} listed image(s) not in {csv_name} "
                f"(first {unknown[0]})"
            )
        table = table[table["Image Index"].isin(set(names))].copy()
        if splits is not None:
            table["split"] = table["Image Index"].map(dict(zip(names, splits)))
        return table, has_split

    # ------------------------------------------------------------------------------ contract

    def index(self) -> pd.DataFrame:
        selection = self._select()
        csv_name = self.csv_path().name
        table = selection.table
        self.skipped_, self.notes_ = Counter(), Counter()
        if selection.missing:
            n, first = len(selection.missing), selection.missing[0]
            if self.options.on_missing_image == "error":
                raise DataError(
                    f"{csv_name}: {n} listed image(s) missing on disk under the data folder "
                    f"(first {first}); to leave them out set data.options.on_missing_image: "
                    "skip (hospitalnet partition: --on-missing-image skip)"
                )
            self.skipped_[MISSING_ON_DISK] += n
            logger.warning("%s: skipped %d listed image(s) missing on disk", csv_name, n)
            table = table[table["Image Index"].isin(selection.paths.keys())]
            table = table.reset_index(drop=True)

        labels = self._parse_labels(table, csv_name)
        index = assemble_index(
            table["Image Index"].tolist(),
            _pseudonyms(table["Patient ID"]),  # the raw id goes no further
            [parse_view(v) for v in table.get("View Position", pd.Series("", index=table.index))],
            table["split"].tolist(),
            labels,
            source=selection.split_source,
        )
        self._paths = selection.paths
        self._entries = table.drop(columns="row").reset_index(drop=True)
        return index

    def entries(self) -> pd.DataFrame:
        """The site's Data_Entry rows (kept columns, strings) plus ``split``, row-aligned with
        :meth:`index`. Holds raw patient ids: for writing the site's own files, never reports."""
        if self._entries is None:
            self.index()
        assert self._entries is not None
        return self._entries.copy()

    def _parse_labels(self, table: pd.DataFrame, csv_name: str) -> np.ndarray:
        """Parse each distinct Finding Labels value once (112k rows hold ~800 distinct ones)."""
        if table.empty:
            return np.zeros((0, NUM_LABELS), dtype=np.float32)
        codes, uniques = pd.factorize(table["Finding Labels"], sort=False)
        _, first_pos = np.unique(codes, return_index=True)  # codes are 0..len(uniques)-1
        first_row = table["row"].to_numpy()[first_pos]
        counts = np.bincount(codes, minlength=len(uniques))
        dropped: Counter[str] = Counter()
        vectors = np.empty((len(uniques), NUM_LABELS), dtype=np.float32)
        for code, value in enumerate(uniques):
            names: list[str] = []
            vectors[code] = parse_labels_cell(
                value,
                source=f"{csv_name} row {first_row[code]}",
                unknown=self.options.unknown_labels,
                dropped=names,
            )
            for name in names:
                dropped[name] += int(counts[code])
        if dropped:
            self.notes_["unknown label names dropped"] += sum(dropped.values())
            logger.warning(
                "%s: dropped unknown label name(s) %s (%d occurrence(s))",
                csv_name,
                ", ".join(repr(n) for n in sorted(dropped)),
                sum(dropped.values()),
            )
        return vectors[codes]

    def read_image(self, image_id: str) -> np.ndarray:
        path = self._indexed_path(image_id)
        image, note = read_raster(path, image_id=image_id)
        if note:
            self._note(note, self.source)
        return image

    def fingerprint(self) -> str:
        """Digest of the CSV, list files and options, and of (name, size, mtime) of every image
        this site selects (a missing one counts too, so its arrival changes the digest)."""
        selection = self._select()
        h = hashlib.sha256()
        h.update(json.dumps({"loader": self.name, **self.options.model_dump()}).encode())
        files = [self.csv_path(), *(p for p, _ in self._split_list_paths())]
        list_path = self.image_list_path()
        if list_path is not None:
            files.append(list_path)
        for path in files:
            st = path.stat()
            h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        for image_id in selection.table["Image Index"]:
            path = selection.paths.get(image_id)
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None
            size, mtime = (st.st_size, st.st_mtime_ns) if st is not None else (-1, -1)
            h.update(f"{image_id}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()[:32]
