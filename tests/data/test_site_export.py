"""Export a site as DICOM / PNG+CSV, load it back with the site loaders: same images (up to
quantisation), same labels, views, splits and patient grouping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from hospitalnet.data.base import pseudonymise
from hospitalnet.data.csv_loader import CsvLoader
from hospitalnet.data.dicom import DicomLoader
from hospitalnet.data.export import (
    MONO1_SLOPE,
    export_site_as_csv,
    export_site_as_dicom,
    synthetic_identity,
)
from hospitalnet.data.indexing import assemble_index
from hospitalnet.labels import LABELS
from tests.data.loader_fakes import ramp

N = 6


@pytest.fixture
def source():
    """A small NIH-like index and its images (full [0, 1] range, incl. the extremes)."""
    ids = [f"{i // 2:08d}_{i % 2:03d}.png" for i in range(N)]
    images = {
        image_id: ramp(24 + i, 20, seed=i).astype(np.float32) for i, image_id in enumerate(ids)
    }
    images[ids[0]][0, 0], images[ids[0]][0, 1] = 0.0, 1.0
    labels = np.zeros((N, len(LABELS)), np.float32)
    labels[0, [2, 3]] = 1
    labels[2, LABELS.index("Hernia")] = 1
    labels[4] = np.nan
    index = assemble_index(
        ids,
        [pseudonymise(f"NIH-{i // 2}") for i in range(N)],
        ["PA", "AP", "", "PA", "AP", "PA"],
        ["train", "train", "train", "train", "test", "test"],
        labels,
        source="source",
    )
    return index, images


def _same_grouping(a: pd.Series, b: pd.Series) -> bool:
    return bool((pd.factorize(a)[0] == pd.factorize(b)[0]).all())


def _check_round_trip(index, images, loaded, mapping, loader, atol):
    by_source = loaded.set_index("image_id").loc[mapping["image_id"]].reset_index()
    np.testing.assert_array_equal(
        by_source[list(LABELS)].to_numpy(), index[list(LABELS)].to_numpy()
    )  # NaN == NaN here
    assert list(by_source["view"]) == list(index["view"])
    assert list(by_source["split"]) == list(index["split"])
    assert _same_grouping(by_source["patient"], index["patient"])
    worst = max(
        np.abs(loader.read_image(new) - images[old]).max()
        for old, new in zip(mapping["source_image_id"], mapping["image_id"])
    )
    assert worst <= atol, worst


def test_dicom_mono2_round_trip(tmp_path, source):
    index, images = source
    mapping = export_site_as_dicom(index, images.__getitem__, tmp_path, style="mono2", seed=5)
    loader = DicomLoader(str(tmp_path))

    loaded = loader.index()

    _check_round_trip(index, images, loaded, mapping, loader, atol=0.5 / 4095 + 1e-6)


def test_dicom_mono1_voi_round_trip(tmp_path, source):
    index, images = source
    mapping = export_site_as_dicom(index, images.__getitem__, tmp_path, style="mono1_voi", seed=5)
    loader = DicomLoader(str(tmp_path))

    loaded = loader.index()

    # Half a stored step, in modality units, over the narrowest window (1400).
    _check_round_trip(index, images, loaded, mapping, loader, atol=0.5 * MONO1_SLOPE / 1399 + 1e-6)


def test_mono1_voi_headers_are_realistic_and_storage_is_inverted(tmp_path, source):
    index, images = source
    mapping = export_site_as_dicom(index, images.__getitem__, tmp_path, style="mono1_voi", seed=5)
    ds = pydicom.dcmread(tmp_path / mapping["file"][0])
    original = images[mapping["source_image_id"][0]]

    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert float(ds.RescaleSlope) != 1 and float(ds.RescaleIntercept) != 0
    assert "WindowCenter" in ds and "WindowWidth" in ds
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPInstanceUID == mapping["image_id"][0] == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.ViewPosition == "PA"
    # Inverted storage: brighter originals are stored as lower values.
    stored = ds.pixel_array.astype(float)
    assert np.corrcoef(stored.ravel(), original.ravel())[0, 1] < -0.99
    # pydicom's own transforms (trusted peer), then the MONOCHROME1 inversion by hand.
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = -1024.0, 4095 * 0.5 - 1024.0
    np.testing.assert_allclose(1 - (windowed - lo) / (hi - lo), original, atol=2e-4)


def test_mono2_headers(tmp_path, source):
    index, images = source
    mapping = export_site_as_dicom(index, images.__getitem__, tmp_path, style="mono2", seed=5)

    ds = pydicom.dcmread(tmp_path / mapping["file"][1])

    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.Modality == "DX"
    assert (ds.BitsAllocated, ds.BitsStored) == (16, 12) and ds.pixel_array.max() <= 4095
    assert "WindowCenter" not in ds and ds.ViewPosition == "AP"


def test_dicom_export_writes_caller_identities_and_a_labels_csv_without_patients(tmp_path, source):
    index, images = source

    mapping = export_site_as_dicom(
        index,
        images.__getitem__,
        tmp_path,
        style="mono2",
        seed=1,
        patient_identity=lambda p: (f"NAME^{p[:5]}", f"ID-{p}"),
    )

    ds = pydicom.dcmread(tmp_path / mapping["file"][3])
    assert ds.PatientID == f"ID-{index['patient'][3]}"
    assert str(ds.PatientName) == f"NAME^{index['patient'][3][:5]}"
    table = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["file", "labels", "view", "split"]
    assert list(table["labels"][:3]) == ["Effusion|Infiltration", "No Finding", "Hernia"]
    assert table["labels"][4] == ""  # unknown labels stay unknown
    # Hospital-style tree with repeated file names.
    assert all(f.endswith("/IM0001.dcm") and f.count("/") == 2 for f in mapping["file"])


def test_dicom_export_is_byte_identical_for_the_same_seed(tmp_path, source):
    index, images = source
    a = export_site_as_dicom(index, images.__getitem__, tmp_path / "a", style="mono1_voi", seed=7)
    b = export_site_as_dicom(index, images.__getitem__, tmp_path / "b", style="mono1_voi", seed=7)
    c = export_site_as_dicom(index, images.__getitem__, tmp_path / "c", style="mono1_voi", seed=8)

    assert a.equals(b) and not a["image_id"].equals(c["image_id"])
    for rel in a["file"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a/labels.csv").read_bytes() == (tmp_path / "b/labels.csv").read_bytes()


@pytest.mark.parametrize("bit_depth, atol", [(8, 0.5 / 255 + 1e-6), (16, 0.5 / 65535 + 1e-6)])
def test_csv_png_round_trip(tmp_path, source, bit_depth, atol):
    index, images = source
    mapping = export_site_as_csv(index, images.__getitem__, tmp_path, seed=3, bit_depth=bit_depth)
    loader = CsvLoader(str(tmp_path))

    loaded = loader.index()

    assert list(loaded["image_id"]) == list(index["image_id"])  # PNG names keep the ids
    _check_round_trip(index, images, loaded, mapping, loader, atol=atol)
    assert all(p.count("/") == 2 for p in mapping["path"])  # year/study/file


def test_csv_export_is_byte_identical_and_uses_synthetic_ids_by_default(tmp_path, source):
    index, images = source
    export_site_as_csv(index, images.__getitem__, tmp_path / "a", seed=3)
    export_site_as_csv(index, images.__getitem__, tmp_path / "b", seed=3)

    a = (tmp_path / "a/manifest.csv").read_bytes()

    assert a == (tmp_path / "b/manifest.csv").read_bytes()
    table = pd.read_csv(tmp_path / "a/manifest.csv", dtype=str)
    assert table["patient_id"][0] == synthetic_identity(index["patient"][0])[1]
    assert not any(p in a.decode() for p in index["patient"])  # pseudonyms are not re-exported
