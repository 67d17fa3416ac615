"""The NIH ChestX-ray14 layout: Data_Entry_2017.csv (or _v2020) + PNG images.

Handles the release's quirks: the bracketed headers ``OriginalImage[Width,Height]`` that split into
extra columns, the 2017 file's trailing empty column, images either flat or nested as
``images_0XX/images/*.png`` (indexed recursively, by file name), and the official
``train_val_list.txt`` / ``test_list.txt``. ``image_list`` (a file of image names, or a CSV with an
``Image Index`` and an optional ``split`` column, as ``hospitalnet partition`` writes) restricts
the site to its own images; a relative ``image_list`` is taken relative to the data root.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from hospitalnet.config import Section
from hospitalnet.data.base import INDEX_COLUMNS, SiteLoader, pseudonymise
from hospitalnet.data.raster import read_raster
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS, parse_finding_labels

log = logging.getLogger(__name__)

CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
REQUIRED = ("Image Index", "Finding Labels", "Patient ID")


class NihLoader(SiteLoader):
    name = "nih"

    class Options(Section):
        csv: str | None = None  # default: the first of CSV_NAMES found in the root
        image_list: str | None = None
        split_lists: bool = True
        on_missing_image: Literal["error", "skip"] = "error"
        unknown_labels: Literal["error", "drop"] = "error"

    # --- files ----------------------------------------------------------------------------
    @cached_property
    def _root(self) -> Path:
        root = Path(self.root)
        if not root.is_dir():
            raise DataError(f"{self.source}: data folder does not exist")
        return root

    @cached_property
    def _csv_path(self) -> Path:
        names = [self.options.csv] if self.options.csv else list(CSV_NAMES)
        for name in names:
            if (self._root / name).is_file():
                return self._root / name
        raise DataError(f"{self.source}: no {' or '.join(names)} in the data folder")

    @cached_property
    def _files(self) -> dict[str, Path]:
        """File name -> path of every PNG under the root (flat or nested), indexed once."""
        files: dict[str, Path] = {}
        for folder, _, names in os.walk(self._root):
            for name in names:
                if name.lower().endswith(".png"):
                    files.setdefault(name, Path(folder) / name)
        return files

    def _list_path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self._root / p

    # --- contract -------------------------------------------------------------------------
    def index(self) -> pd.DataFrame:
        src = self._csv_path.name
        try:
            raw = pd.read_csv(self._csv_path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise DataError(f"{src}: not a readable CSV ({err})") from None
        missing = [c for c in REQUIRED if c not in raw.columns]
        if missing:
            raise DataError(f"{src}: missing column(s) {', '.join(missing)}")
        dupes = raw["Image Index"].duplicated()
        if dupes.any():
            raise DataError(
                f"{src}: {int(dupes.sum())} duplicate Image Index value(s), "
                f"first {raw.loc[dupes, 'Image Index'].iloc[0]!r}"
            )
        df = raw
        split = pd.Series("", index=df.index)
        if self.options.image_list:
            keep, split_of = self._read_image_list(self.options.image_list)
            unknown = sorted(set(keep) - set(df["Image Index"]))
            if unknown:
                raise DataError(
                    f"{self.options.image_list}: {len(unknown)} image(s) not in {src}, "
                    f"first {unknown[0]!r}"
                )
            df = df[df["Image Index"].isin(set(keep))].reset_index(drop=True)
            split = df["Image Index"].map(split_of).fillna("")
        elif self.options.split_lists:
            split = self._official_split(df)
        dropped: list[str] = []
        labels = (
            np.stack(
                [
                    parse_finding_labels(
                        v, source=src, unknown=self.options.unknown_labels, dropped=dropped
                    )
                    for v in df["Finding Labels"]
                ]
            )
            if len(df)
            else np.zeros((0, len(LABELS)), np.float32)
        )
        if dropped:
            log.warning(
                "%s: dropped %d unknown label name(s) (%s)",
                src,
                len(dropped),
                ", ".join(sorted(set(dropped))),
            )
        out = pd.DataFrame(
            {
                "image_id": df["Image Index"].to_numpy(),
                "patient": [pseudonymise(p) for p in df["Patient ID"]],
                "view": df.get("View Position", pd.Series("", index=df.index))
                .str.upper()
                .to_numpy(),
                "split": split.to_numpy(),
            }
        )
        for j, name in enumerate(LABELS):
            out[name] = labels[:, j]
        out = self._check_images(out)
        _refuse_patient_overlap(out, src)
        return out[list(INDEX_COLUMNS)]

    def _read_image_list(self, name: str) -> tuple[list[str], dict[str, str]]:
        path = self._list_path(name)
        if not path.is_file():
            raise DataError(f"{self.source}: image_list {name} not found")
        if path.suffix.lower() == ".csv":
            lst = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "Image Index" not in lst.columns:
                raise DataError(f"{path.name}: missing column Image Index")
            split = lst["split"] if "split" in lst.columns else pd.Series("", index=lst.index)
            return lst["Image Index"].tolist(), dict(zip(lst["Image Index"], split))
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return names, {}

    def _official_split(self, df: pd.DataFrame) -> pd.Series:
        split = pd.Series("", index=df.index)
        for fname, value in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
            p = self._root / fname
            if p.is_file():
                listed = {line.strip() for line in p.read_text().splitlines() if line.strip()}
                split[df["Image Index"].isin(listed)] = value
        return split

    def _check_images(self, out: pd.DataFrame) -> pd.DataFrame:
        present = out["image_id"].isin(self._files.keys())
        if present.all():
            return out
        n_missing = int((~present).sum())
        first = out.loc[~present, "image_id"].iloc[0]
        if self.options.on_missing_image == "error":
            raise DataError(
                f"{self._csv_path.name}: {n_missing} listed image(s) missing on disk, first {first}"
            )
        log.warning(
            "%s: skipped %d listed image(s) missing on disk", self._csv_path.name, n_missing
        )
        return out[present].reset_index(drop=True)

    def read_image(self, image_id: str) -> np.ndarray:
        path = self._files.get(image_id)
        if path is None:
            raise DataError(f"image {image_id}: missing on disk")
        return read_raster(path, image_id=image_id)[0]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(self.options.model_dump_json().encode())
        listed = [self._csv_path]
        if self.options.image_list:
            listed.append(self._list_path(self.options.image_list))
        listed += [self._root / n for n in ("train_val_list.txt", "test_list.txt")]
        for p in listed:
            if p.is_file():
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        for name in sorted(self._files):
            st = self._files[name].stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:32]


def _refuse_patient_overlap(index: pd.DataFrame, source: str) -> None:
    train = set(index.loc[index["split"] == "train", "patient"])
    test = set(index.loc[index["split"] == "test", "patient"])
    both = train & test
    if both:
        raise DataError(
            f"{source}: {len(both)} patient(s) appear in both the train and the test "
            "split (splits must be by patient)"
        )
