"""The ``chestmnist`` site loader: MedMNIST's ChestMNIST ``.npz`` files that a user already has.

ChestMNIST (MedMNIST v2) is ChestX-ray14 resized to 28 px (``chestmnist.npz``) or 64/128/224 px
(``chestmnist_64.npz`` ...). Each file holds ``train_images``/``train_labels``, ``val_...`` and
``test_...``: images uint8 (N, H, W), labels (N, 14) binary. This project never downloads it.

No patient ids: MedMNIST ships none, so every image is its own pseudo-patient. Patient-level
splits, patient bootstrap and the patient-overlap checks are therefore only as good as MedMNIST's
own split (which follows the official, patient-wise ChestX-ray14 split); a seeded local split made
by this toolkit cannot keep one patient's follow-up images together.

Splits: ``train`` and ``val`` both come from the official train_val list and are indexed as
"train"; ``test`` is the official test list, indexed as "test".
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from hospitalnet.data.base import SiteLoader, pseudonymise
from hospitalnet.data.indexing import BadImageError, assemble_index, files_fingerprint
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS

# MedMNIST's INFO["chestmnist"]["label"], columns 0..13, in its own spelling.
MEDMNIST_CHEST_LABELS: tuple[str, ...] = (
    "atelectasis",
    "cardiomegaly",
    "effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
    "consolidation",
    "edema",
    "emphysema",
    "fibrosis",
    "pleural",
    "hernia",
)
# Explicit name map: MedMNIST spelling -> ours. Identical order today, but matched by name so a
# reordering upstream cannot silently relabel the data.
_TO_OURS = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "effusion": "Effusion",
    "infiltration": "Infiltration",
    "mass": "Mass",
    "nodule": "Nodule",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "emphysema": "Emphysema",
    "fibrosis": "Fibrosis",
    "pleural": "Pleural_Thickening",
    "hernia": "Hernia",
}
# Column j of our label matrix is column COLUMN_ORDER[j] of MedMNIST's.
_FROM_OURS = {ours: theirs for theirs, ours in _TO_OURS.items()}
COLUMN_ORDER = np.array([MEDMNIST_CHEST_LABELS.index(_FROM_OURS[name]) for name in LABELS])
NPZ_SPLITS = ("train", "val", "test")
_OUR_SPLIT = {"train": "train", "val": "train", "test": "test"}


class ChestMnistLoader(SiteLoader):
    """Read a ChestMNIST ``.npz`` (see the module docstring for splits and pseudo-patients).

    Image ids are ``{npz split}_{row:06d}`` (e.g. ``val_000017``).
    """

    name = "chestmnist"

    class Options(SiteLoader.Options):
        file: str | None = Field(
            None, description="npz file in the data root; None = the only chestmnist*.npz there"
        )
        splits: list[Literal["train", "val", "test"]] = Field(
            default_factory=lambda: list(NPZ_SPLITS), description="which npz splits to index"
        )

    options: Options

    def __init__(
        self, root: str, options: dict[str, Any] | None = None, *, source: str = ""
    ) -> None:
        super().__init__(root, options, source=source)
        self.root_path = Path(root)
        self._images: dict[str, np.ndarray] = {}

    @property
    def npz_path(self) -> Path:
        if self.options.file is not None:
            return self.root_path / self.options.file
        found = sorted(self.root_path.glob("chestmnist*.npz"))
        if len(found) != 1:
            what = "no chestmnist*.npz" if not found else f"{len(found)} chestmnist*.npz files"
            raise DataError(f"chestmnist: {what} in the data root; set options.file")
        return found[0]

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        path = self.npz_path
        try:
            with np.load(path, allow_pickle=False) as npz:
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
        except FileNotFoundError:
            raise DataError(f"{path.name}: file not found in the data root") from None
        except KeyError:
            raise DataError(f"{path.name}: no {split}_images/{split}_labels arrays") from None
        except (ValueError, OSError, zipfile.BadZipFile, EOFError):
            raise DataError(f"{path.name}: not a readable MedMNIST npz file") from None
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(f"{path.name}: {split}_images must be uint8 (N, H, W) grayscale")
        if labels.shape != (len(images), len(LABELS)):
            raise DataError(f"{path.name}: {split}_labels must be (N, 14)")
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path.name}: {split}_labels must be 0 or 1")
        return images, labels

    def fingerprint(self) -> str:
        return files_fingerprint(
            self.root_path, [self.npz_path], loader=self.name, options=self.options.model_dump()
        )

    def index(self) -> pd.DataFrame:
        ids: list[str] = []
        label_blocks = []
        splits: list[str] = []
        for split in dict.fromkeys(self.options.splits):  # ordered, no repeats
            images, labels = self._load(split)
            self._images[split] = images
            ids.extend(f"{split}_{i:06d}" for i in range(len(images)))
            splits.extend([_OUR_SPLIT[split]] * len(images))
            label_blocks.append(labels[:, COLUMN_ORDER].astype(np.float32))
        labels = np.concatenate(label_blocks) if label_blocks else np.zeros((0, len(LABELS)))
        # Each image its own pseudo-patient (MedMNIST has no patient ids).
        patients = [pseudonymise(f"chestmnist:{i}") for i in ids]
        return assemble_index(
            ids, patients, [""] * len(ids), splits, labels, source=self.npz_path.name
        )

    def read_image(self, image_id: str) -> np.ndarray:
        split, _, row = image_id.partition("_")
        if split not in NPZ_SPLITS or not row.isdigit():
            raise BadImageError(image_id, "not a ChestMNIST image id")
        if split not in self._images:
            self._images[split] = self._load(split)[0]
        images = self._images[split]
        if int(row) >= len(images):
            raise BadImageError(image_id, "not in this site's index")
        return images[int(row)].astype(np.float32) / 255.0
