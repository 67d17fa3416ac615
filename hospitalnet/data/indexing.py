"""Pieces the format loaders share: the bad-image error, safe relative paths, file fingerprints,
label/view/split cell parsing, and the checks every site index must pass.

Privacy rule for everything here: messages name a file by its base name (or image id) and a CSV
by its base name and row number, never a folder path and never a patient identifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd

from hospitalnet.data.base import INDEX_COLUMNS, pseudonymise
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS, NUM_LABELS, parse_finding_labels

logger = logging.getLogger(__name__)

SPLITS = ("train", "test", "")
VIEWS = ("PA", "AP")
# Cell values that mean "no label recorded" (the row's 14 labels are unknown, masked out).
MISSING_LABEL_TEXT = frozenset({"", "nan", "na", "n/a", "null"})


class BadImageError(DataError):
    """One image cannot be used (unreadable, truncated, unsupported, missing).

    Carries the image id and a short reason so that ``on_bad: skip`` can count images by reason.
    """

    def __init__(self, image_id: str, reason: str) -> None:
        super().__init__(f"{image_id}: {reason}")
        self.image_id = image_id
        self.reason = reason


def safe_relative_path(text: str, *, source: str) -> PurePosixPath:
    """Validate a path taken from a site's CSV: relative to the data root, no ``..``.

    Backslashes (CSV files written on Windows) are read as separators. The message never echoes
    the path, which may contain a patient name.
    """
    raw = str(text).strip().replace("\\", "/")
    if not raw:
        raise DataError(f"{source}: empty image path")
    if PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).drive:
        raise DataError(f"{source}: image path must be relative to the data root, not absolute")
    rel = PurePosixPath(raw)
    if ".." in rel.parts:
        raise DataError(f"{source}: image path must stay inside the data root (no '..')")
    return rel


def source_name(path: str | os.PathLike[str]) -> str:
    """How a site's metadata file is named in messages: its base name only."""
    return Path(path).name


def files_fingerprint(
    root: Path, files: Iterable[Path], *, loader: str, options: dict[str, Any]
) -> str:
    """A digest of (relative path, size, mtime) of ``files`` plus the loader name and options.

    Stat-based like make/rsync: content hashing of a hospital's whole archive at every start would
    cost minutes; a rewrite changes size or mtime. Paths enter only the digest, never the output.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"loader": loader, "options": options}, sort_keys=True).encode())
    for path in sorted(files):
        try:
            st = path.stat()
        except OSError:
            size, mtime = -1, -1
        else:
            size, mtime = st.st_size, st.st_mtime_ns
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:32]


def parse_labels_cell(
    value: object, *, source: str, unknown: str, dropped: list[str]
) -> np.ndarray:
    """Pipe-separated labels -> 14-vector; a missing cell gives all NaN (masked, not negative)."""
    text = "" if value is None else str(value)
    if text.strip().lower() in MISSING_LABEL_TEXT:
        return np.full(NUM_LABELS, np.nan, dtype=np.float32)
    return parse_finding_labels(text, source=source, unknown=unknown, dropped=dropped)


def parse_view(value: object) -> str:
    """PA or AP; anything else (lateral, empty) is recorded as unknown ("")."""
    text = "" if value is None else str(value).strip().upper()
    return text if text in VIEWS else ""


def parse_split(value: object, *, source: str) -> str:
    text = "" if value is None else str(value).strip().lower()
    if text not in SPLITS:
        raise DataError(f"{source}: split {text!r} is not 'train', 'test' or empty")
    return text


class IndexRows:
    """A loader's index as it reads its rows: pseudonymised, parsed, checked on ``finish``.

    The CSV and DICOM loaders share this, so every format parses views, splits and label cells
    and reports dropped label names and skipped images in one way.
    """

    def __init__(self, *, unknown_labels: str) -> None:
        self.unknown_labels = unknown_labels
        self.image_ids: list[str] = []
        self.patients: list[str] = []
        self.views: list[str] = []
        self.splits: list[str] = []
        self.labels: list[np.ndarray] = []
        self.dropped: list[str] = []  # unknown label names (unknown_labels: drop)

    def add(
        self, image_id: str, raw_patient: str, view: str, split: object, labels: object, where: str
    ) -> None:
        """One image; the raw patient id is pseudonymised here and goes no further."""
        self.image_ids.append(image_id)
        self.patients.append(pseudonymise(raw_patient))
        self.views.append(view)
        self.splits.append(parse_split(split, source=where))
        self.labels.append(
            parse_labels_cell(
                labels, source=where, unknown=self.unknown_labels, dropped=self.dropped
            )
        )

    def finish(self, source: str, skipped: Counter[str], notes: Counter[str]) -> pd.DataFrame:
        """The checked index; counts dropped label names in ``notes`` and logs what was left."""
        if self.dropped:
            notes["unknown label names dropped"] += len(self.dropped)
            logger.warning("%s: dropped %d unknown label name(s)", source, len(self.dropped))
        if skipped:
            logger.warning(
                "%s: skipped %d listed image(s): %s",
                source,
                sum(skipped.values()),
                describe_counts(skipped),
            )
        labels = np.array(self.labels, dtype=np.float32).reshape(len(self.image_ids), -1)
        return assemble_index(
            self.image_ids, self.patients, self.views, self.splits, labels, source=source
        )


def assemble_index(
    image_ids: list[str],
    patients: list[str],
    views: list[str],
    splits: list[str],
    labels: np.ndarray,
    *,
    source: str,
) -> pd.DataFrame:
    """Build the index DataFrame in the contract's column order and dtypes, then check it."""
    df = pd.DataFrame(
        {
            "image_id": pd.Series(image_ids, dtype=str),
            "patient": pd.Series(patients, dtype=str),
            "view": pd.Series(views, dtype=str),
            "split": pd.Series(splits, dtype=str),
        }
    )
    labels = np.asarray(labels, dtype=np.float32).reshape(len(image_ids), NUM_LABELS)
    for j, name in enumerate(LABELS):
        df[name] = labels[:, j]
    check_index(df, source=source)
    return df


def check_index(df: pd.DataFrame, *, source: str) -> None:
    """The checks every loader's index must pass (also run on indexes from other loaders)."""
    if tuple(df.columns) != INDEX_COLUMNS:
        raise DataError(f"{source}: index columns are not the loader contract's INDEX_COLUMNS")
    for name in LABELS:
        if df[name].dtype != np.float32:
            raise DataError(f"{source}: label column {name} is {df[name].dtype}, not float32")
    values = df[list(LABELS)].to_numpy()
    if not np.all(np.isnan(values) | (values == 0) | (values == 1)):
        raise DataError(f"{source}: label values must be 0, 1 or NaN (unknown)")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise DataError(
            f"{source}: duplicate image ids ({len(dup)}; first {dup.iloc[0]!r}); "
            "each image must be listed once"
        )
    bad_split = set(df["split"]) - set(SPLITS)
    if bad_split:
        raise DataError(f"{source}: split values must be 'train', 'test' or empty")
    by_split = df.groupby("split")["patient"].agg(set)
    if "train" in by_split and "test" in by_split:
        both = by_split["train"] & by_split["test"]
        if both:
            # The count only: even a pseudonym is not worth printing.
            raise DataError(
                f"{source}: {len(both)} patient(s) appear in both the train and the test split; "
                "splits must be by patient"
            )


def count_reasons(errors: Iterable[BadImageError]) -> Counter[str]:
    return Counter(e.reason for e in errors)


def describe_counts(counts: Counter[str] | dict[str, int]) -> str:
    """``"2 truncated or corrupt pixel data, 1 not a DICOM file"`` (largest first)."""
    return ", ".join(f"{n} {reason}" for reason, n in Counter(counts).most_common())
