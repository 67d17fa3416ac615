"""One set of contract tests, run against every registered loader over a tiny fake site."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from hospitalnet.data.base import INDEX_COLUMNS, SiteLoader
from hospitalnet.data.registry import LOADERS
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS
from tests.data.loader_fakes import RAW_PATIENTS, SITE_MAKERS, ramp, write_dicom, write_png

CONTRACT_LOADERS = ["dicom", "csv", "chestmnist", "nih"]


def _loader(name: str, root) -> tuple[SiteLoader, list]:
    if name == "nih":
        pytest.importorskip("hospitalnet.data.nih")
    if name not in LOADERS:
        pytest.skip(f"loader {name!r} is not registered")
    options, files = SITE_MAKERS[name](root)
    return LOADERS[name](str(root), options, source=f"test {name}"), files


def _rewrite(path, seed: int) -> None:
    """Rewrite an image file with other pixel values (and another size in bytes)."""
    before = path.stat().st_size
    if path.suffix == ".dcm":
        stored = np.rint(ramp(30, 26, seed=seed) * 4095).astype(np.uint16)
        write_dicom(path, stored, patient_id="PAT-A")
    elif path.suffix == ".png":
        write_png(path, np.rint(ramp(30, 26, seed=seed) * 255).astype(np.uint8))
    else:  # the ChestMNIST npz: one more training image
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["train_images"] = np.concatenate(
            [arrays["train_images"], arrays["train_images"][:1]]
        )
        arrays["train_labels"] = np.concatenate(
            [arrays["train_labels"], arrays["train_labels"][:1]]
        )
        np.savez(path, **arrays)
    assert path.stat().st_size != before


@pytest.fixture(params=CONTRACT_LOADERS)
def site(request, tmp_path):
    return _loader(request.param, tmp_path / request.param)


def test_index_has_exactly_the_contract_columns_and_dtypes(site):
    loader, _ = site

    index = loader.index()

    assert tuple(index.columns) == INDEX_COLUMNS
    for column in ("image_id", "patient", "view", "split"):
        assert all(isinstance(v, str) for v in index[column]), column
    for label in LABELS:
        assert index[label].dtype == np.float32
    values = index[list(LABELS)].to_numpy()
    assert np.all(np.isnan(values) | (values == 0) | (values == 1))
    assert set(index["view"]) <= {"PA", "AP", ""}
    assert set(index["split"]) <= {"train", "test", ""}
    assert len(index) > 0


def test_image_ids_are_unique_names_not_paths(site):
    loader, _ = site

    ids = loader.index()["image_id"]

    assert ids.is_unique
    assert not any("/" in i or "\\" in i for i in ids)


def test_patients_are_pseudonymised(site):
    loader, _ = site

    index = loader.index()

    assert all(re.fullmatch(r"p[0-9a-f]{16}", p) for p in index["patient"])
    cells = " ".join(map(str, index.to_numpy().ravel()))
    for raw in RAW_PATIENTS:
        assert raw not in cells


def test_read_image_gives_2d_float32_in_unit_range(site):
    loader, _ = site

    for image_id in loader.index()["image_id"]:
        image = loader.read_image(image_id)

        assert isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 2
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert image.std() > 0  # the fake images have structure: not a zero-filled stand-in


def test_read_image_of_an_unknown_id_is_a_data_error(site):
    loader, _ = site
    loader.index()

    with pytest.raises(DataError):
        loader.read_image("no-such-image")


def test_fingerprint_is_stable_and_changes_when_a_file_changes(site):
    loader, files = site
    first = loader.fingerprint()

    assert loader.fingerprint() == first
    _rewrite(files[0], seed=99)

    assert loader.fingerprint() != first


def test_fingerprint_changes_when_only_the_mtime_changes(site):
    loader, files = site
    first = loader.fingerprint()
    st = files[-1].stat()

    os.utime(files[-1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    assert loader.fingerprint() != first
