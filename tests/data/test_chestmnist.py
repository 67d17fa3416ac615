"""ChestMNIST specifics: label order by name, splits, pseudo-patients, no pickle."""

from __future__ import annotations

import numpy as np
import pytest

from hospitalnet.data.chestmnist import COLUMN_ORDER, MEDMNIST_CHEST_LABELS, ChestMnistLoader
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS


def _npz(path, *, train=3, val=1, test=2, size=28, **override):
    arrays = {}
    for split, n in (("train", train), ("val", val), ("test", test)):
        arrays[f"{split}_images"] = np.arange(n * size * size, dtype=np.uint8).reshape(
            n, size, size
        )
        arrays[f"{split}_labels"] = np.zeros((n, 14), np.uint8)
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_each_medmnist_column_lands_on_the_label_of_the_same_name(tmp_path):
    labels = np.eye(14, dtype=np.uint8)  # row k: only MedMNIST column k set
    _npz(
        tmp_path / "chestmnist.npz",
        train=14,
        train_labels=labels,
        train_images=np.zeros((14, 28, 28), np.uint8),
    )
    spelled = {"pleural": "Pleural_Thickening"}

    index = ChestMnistLoader(str(tmp_path), {"splits": ["train"]}).index()

    for k, name in enumerate(MEDMNIST_CHEST_LABELS):
        ours = spelled.get(name, name.capitalize())
        row = index.loc[k, list(LABELS)].to_numpy()
        assert row[LABELS.index(ours)] == 1 and row.sum() == 1, name
    assert sorted(COLUMN_ORDER.tolist()) == list(range(14))


def test_val_is_indexed_as_train_and_ids_name_the_npz_split(tmp_path):
    _npz(tmp_path / "chestmnist_64.npz", size=64)

    index = ChestMnistLoader(str(tmp_path)).index()

    assert list(index["image_id"]) == [
        "train_000000",
        "train_000001",
        "train_000002",
        "val_000000",
        "test_000000",
        "test_000001",
    ]
    assert list(index["split"]) == ["train"] * 4 + ["test"] * 2
    assert index["patient"].is_unique  # each image its own pseudo-patient


def test_read_image_scales_uint8_to_unit_range(tmp_path):
    _npz(tmp_path / "chestmnist.npz")
    loader = ChestMnistLoader(str(tmp_path))

    image = loader.read_image("val_000000")

    np.testing.assert_allclose(image, (np.arange(784) % 256).reshape(28, 28) / 255.0, atol=1e-7)


def test_file_choice_is_explicit_when_ambiguous(tmp_path):
    _npz(tmp_path / "chestmnist.npz")
    _npz(tmp_path / "chestmnist_128.npz", size=128)

    with pytest.raises(DataError, match=r"2 chestmnist\*\.npz files .*set options\.file"):
        ChestMnistLoader(str(tmp_path)).index()
    index = ChestMnistLoader(str(tmp_path), {"file": "chestmnist_128.npz"}).index()
    assert len(index) == 6


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "chestmnist.npz"
    _npz(path)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["train_labels"] = np.array([{"x": 1}] * 3, dtype=object)
    np.savez(path, **arrays)  # allow_pickle defaults to True for saving

    with pytest.raises(DataError, match="not a readable MedMNIST npz"):
        ChestMnistLoader(str(tmp_path)).index()


def test_non_binary_labels_are_refused(tmp_path):
    _npz(tmp_path / "chestmnist.npz", train_labels=np.full((3, 14), 2, np.uint8))

    with pytest.raises(DataError, match="train_labels must be 0 or 1"):
        ChestMnistLoader(str(tmp_path)).index()
