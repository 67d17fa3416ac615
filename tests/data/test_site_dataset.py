"""The decoded-tensor cache and the site dataset used by training."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hospitalnet.data.base import SiteLoader, pseudonymise
from hospitalnet.data.csv_loader import CsvLoader
from hospitalnet.data.dataset import (
    SiteTensorDataset,
    assign_local_split,
    load_site,
    load_site_tensors,
    resize_to_uint8,
)
from hospitalnet.data.dicom import DicomLoader
from hospitalnet.data.indexing import assemble_index
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS
from tests.data.loader_fakes import make_csv_site, make_dicom_site, ramp, write_png


class CountingCsvLoader(CsvLoader):
    """Counts read_image calls, to see whether the cache was used."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = 0

    def read_image(self, image_id):
        self.reads += 1
        return super().read_image(image_id)


class ArrayLoader(SiteLoader):
    """A loader over in-memory arrays: any SiteLoader, not only ours, must work."""

    name = "arrays"

    def __init__(self, images: dict[str, object], patients: list[str], splits: list[str]):
        super().__init__("unused")
        self.images = images
        self.patients = patients
        self.splits = splits

    def index(self):
        n = len(self.images)
        return assemble_index(
            list(self.images),
            [pseudonymise(p) for p in self.patients],
            [""] * n,
            self.splits,
            np.zeros((n, len(LABELS)), np.float32),
            source="arrays",
        )

    def read_image(self, image_id):
        return self.images[image_id]

    def fingerprint(self):
        return "fixed"


def test_tensors_have_the_documented_shapes_dtypes_and_rows(tmp_path):
    make_csv_site(tmp_path / "site")
    loader = CsvLoader(str(tmp_path / "site"))
    index = loader.index()

    t = load_site_tensors(loader, 16, tmp_path / "cache", progress=False)

    assert t.images.shape == (5, 1, 16, 16) and t.images.dtype == torch.uint8
    assert t.labels.shape == (5, 14) and t.labels.dtype == torch.float32
    assert t.patients.dtype == torch.int64
    np.testing.assert_array_equal(t.image_ids, index["image_id"])
    np.testing.assert_array_equal(t.split, index["split"])
    np.testing.assert_array_equal(t.views, index["view"])
    np.testing.assert_array_equal(
        t.labels.numpy(), index[list(LABELS)].to_numpy(np.float32)
    )  # NaN rows compare equal here
    # Factorised pseudonyms: same patient <-> same code; codes index the sorted pseudonyms.
    np.testing.assert_array_equal(t.patient_keys[t.patients.numpy()], index["patient"])
    assert list(t.patient_keys) == sorted(set(index["patient"]))
    assert t.skipped == 0 and t.fingerprint == loader.fingerprint()


def test_resize_is_antialiased_and_keeps_the_intensity_scale():
    image = np.zeros((64, 64), np.float32)
    image[:, :32] = 1.0  # left half white

    small = resize_to_uint8(image, 16)[0].numpy()

    assert small.dtype == np.uint8 and small.shape == (16, 16)
    assert (small[:, :6] == 255).all() and (small[:, 10:] == 0).all()
    assert 0 < small[0, 7] < 255 and 0 < small[0, 8] < 255  # a blended edge, not aliased
    flat = resize_to_uint8(np.full((50, 70), 0.4, np.float32), 16)
    assert (flat == 102).all()  # 0.4 * 255 = 102


def test_images_match_the_loaders_images_resized(tmp_path):
    make_csv_site(tmp_path / "site")
    loader = CsvLoader(str(tmp_path / "site"))
    loader.index()

    t = load_site_tensors(loader, 8, None, progress=False)

    for row, image_id in enumerate(t.image_ids):
        expected = resize_to_uint8(loader.read_image(image_id), 8)
        assert torch.equal(t.images[row], expected)


def test_second_load_comes_from_the_cache_without_decoding(tmp_path):
    make_csv_site(tmp_path / "site")
    first_loader = CountingCsvLoader(str(tmp_path / "site"))
    first = load_site_tensors(first_loader, 16, tmp_path / "cache", progress=False)
    again = CountingCsvLoader(str(tmp_path / "site"))

    second = load_site_tensors(again, 16, tmp_path / "cache", progress=False)

    assert first_loader.reads == 5 and again.reads == 0
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels.nan_to_num(-1), second.labels.nan_to_num(-1))
    np.testing.assert_array_equal(first.image_ids, second.image_ids)
    np.testing.assert_array_equal(first.patient_keys, second.patient_keys)
    assert not list((tmp_path / "cache").glob("*.tmp"))  # no leftovers of the atomic write


def test_cache_is_invalidated_when_an_image_changes(tmp_path):
    make_csv_site(tmp_path / "site")
    before = load_site_tensors(
        CsvLoader(str(tmp_path / "site")), 16, tmp_path / "cache", progress=False
    )
    write_png(tmp_path / "site/2010/study_0/img_000.png", np.full((30, 30), 255, np.uint8))
    loader = CountingCsvLoader(str(tmp_path / "site"))

    after = load_site_tensors(loader, 16, tmp_path / "cache", progress=False)

    assert loader.reads == 5
    assert (after.images[0] == 255).all() and not (before.images[0] == 255).all()
    assert torch.equal(after.images[1:], before.images[1:])


def test_cache_is_invalidated_when_labels_or_options_change(tmp_path):
    make_csv_site(tmp_path / "site")
    load_site_tensors(CsvLoader(str(tmp_path / "site")), 16, tmp_path / "cache", progress=False)
    table = pd.read_csv(tmp_path / "site/manifest.csv", dtype=str, keep_default_na=False)
    table.loc[0, "labels"] = "Hernia"
    table.to_csv(tmp_path / "site/manifest.csv", index=False)

    relabelled = load_site_tensors(
        CsvLoader(str(tmp_path / "site")), 16, tmp_path / "cache", progress=False
    )
    other_size = CountingCsvLoader(str(tmp_path / "site"))
    load_site_tensors(other_size, 8, tmp_path / "cache", progress=False)

    assert relabelled.labels[0, LABELS.index("Hernia")] == 1
    assert other_size.reads == 5


def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    make_csv_site(tmp_path / "site")
    first = load_site_tensors(
        CsvLoader(str(tmp_path / "site")), 16, tmp_path / "cache", progress=False
    )
    (st_file,) = (tmp_path / "cache").glob("*.safetensors")
    st_file.write_bytes(st_file.read_bytes()[:100])
    loader = CountingCsvLoader(str(tmp_path / "site"))

    with caplog.at_level(logging.WARNING):
        again = load_site_tensors(loader, 16, tmp_path / "cache", progress=False)

    assert loader.reads == 5 and torch.equal(first.images, again.images)
    assert "unreadable" in caplog.text


def test_works_with_any_site_loader_and_checks_its_images(tmp_path):
    good = ramp(10, 12).astype(np.float32)
    loader = ArrayLoader(
        {"a": good, "b": good * 2, "c": np.zeros((4, 4), np.float64)},
        ["p1", "p2", "p3"],
        ["train", "train", "test"],
    )

    with pytest.raises(DataError, match=r"^b: pixel values outside \[0, 1\]$"):
        load_site_tensors(loader, 8, None, progress=False)
    t = load_site_tensors(loader, 8, tmp_path / "cache", on_bad="skip", progress=False)

    assert list(t.image_ids) == ["a"] and t.skipped == 2
    assert t.skip_reasons == {
        "pixel values outside [0, 1]": 1,
        "loader returned something other than a 2-D float32 array": 1,
    }


def test_dataset_view_serves_one_split_as_floats_in_unit_range(tmp_path):
    make_csv_site(tmp_path / "site")
    t = load_site_tensors(CsvLoader(str(tmp_path / "site")), 16, None, progress=False)

    train, test, everything = (
        SiteTensorDataset(t, "train"),
        SiteTensorDataset(t, "test"),
        SiteTensorDataset(t, None),
    )
    image, labels = train[0]

    assert (len(train), len(test), len(everything)) == (3, 2, 5)
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(image, t.images[0].float() / 255)
    assert torch.equal(labels, t.labels[0])


def test_batches_cover_the_split_once_and_shuffle_deterministically(tmp_path):
    make_csv_site(tmp_path / "site")
    t = load_site_tensors(CsvLoader(str(tmp_path / "site")), 16, None, progress=False)
    data = SiteTensorDataset(t, None)

    def epoch(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([x for x, _ in data.batches(2, generator=gen)])

    ordered = torch.cat([x for x, _ in data.batches(2)])
    assert torch.equal(ordered, t.images.float() / 255)
    assert torch.equal(epoch(1), epoch(1))
    a = epoch(1)
    assert sorted(a.flatten(1).sum(1).tolist()) == sorted(ordered.flatten(1).sum(1).tolist())
    assert [len(x) for x, _ in data.batches(2, drop_last=True)] == [2, 2]


def test_load_site_goes_from_a_manifest_through_the_registry(tmp_path):
    make_dicom_site(tmp_path / "data")
    manifest = tmp_path / "sites" / "n4.yaml"
    manifest.parent.mkdir()
    manifest.write_text(
        yaml.safe_dump({"site": "n4", "data": {"loader": "dicom", "root": "../data"}})
    )

    t = load_site(manifest, 16, tmp_path / "cache", progress=False)

    assert len(t) == 5 and set(t.split) == {"train", "test"}
    assert list((tmp_path / "cache").glob("n4-16px-*.safetensors"))
    direct = load_site_tensors(DicomLoader(str(tmp_path / "data")), 16, None, progress=False)
    assert torch.equal(t.images, direct.images)


def _unsplit(n_patients: int, per_patient: int = 2):
    images = {
        f"i{p}_{k}": np.full((4, 4), 0.5, np.float32)
        for p in range(n_patients)
        for k in range(per_patient)
    }
    patients = [f"P{p}" for p in range(n_patients) for _ in range(per_patient)]
    return load_site_tensors(
        ArrayLoader(images, patients, [""] * len(images)), 4, None, progress=False
    )


def test_local_split_is_by_patient_seeded_and_sized():
    t = _unsplit(20)

    a = assign_local_split(t, test_fraction=0.25, seed=3, site="n2")
    b = assign_local_split(t, test_fraction=0.25, seed=3, site="n2")
    c = assign_local_split(t, test_fraction=0.25, seed=4, site="n2")

    np.testing.assert_array_equal(a.split, b.split)
    assert not np.array_equal(a.split, c.split)
    patients = a.patients.numpy()
    test_patients = set(patients[a.split == "test"])
    assert len(test_patients) == 5
    assert not test_patients & set(patients[a.split == "train"])


def test_local_split_keeps_existing_sides():
    t = _unsplit(6)
    split = t.split.astype("<U5")
    split[t.patients.numpy() == 0] = "test"
    given = dataclasses.replace(t, split=split)

    out = assign_local_split(given, test_fraction=0.5, seed=0, site="x")

    assert (out.split[t.patients.numpy() == 0] == "test").all()
    assert set(out.split) <= {"train", "test"}


def test_a_cache_inside_the_data_root_is_refused(tmp_path):
    make_csv_site(tmp_path / "site")

    with pytest.raises(ConfigError, match="cache folder must be outside the data root"):
        load_site_tensors(CsvLoader(str(tmp_path / "site")), 8, tmp_path / "site/cache")
