"""Bad site data: each case is a clear DataError, or counted and skipped under on_bad=skip; never
a zero-filled image. DICOM fixtures are built with pydicom; pydicom's bundled files are used
offline (download=False) where a real-world file is better than a hand-made one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import JPEGLosslessSV1

from hospitalnet.data.csv_loader import CsvLoader
from hospitalnet.data.dataset import load_site_tensors
from hospitalnet.data.dicom import DicomLoader, read_dicom
from hospitalnet.data.indexing import BadImageError
from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS
from tests.data.loader_fakes import make_csv_site, make_dicom_site, ramp, write_dicom, write_png


def _bundled(name: str) -> str:
    return get_testdata_file(name, download=False)


def _truncate(path, keep_fraction: float = 0.7) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def _labels_csv(root, rows) -> None:
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


# --------------------------------------------------------------------------- DICOM files


def test_truncated_dicom_is_a_clear_error(tmp_path):
    path = tmp_path / "a.dcm"
    write_dicom(path, np.full((32, 32), 100, np.uint16))
    _truncate(path)

    with pytest.raises(DataError, match=r"^a\.dcm: truncated or corrupt pixel data$"):
        read_dicom(path)


def test_bundled_truncated_dicom_is_a_clear_error():
    with pytest.raises(DataError, match="truncated or corrupt pixel data"):
        read_dicom(_bundled("MR_truncated.dcm"))


def test_non_dicom_bytes_named_dcm_are_refused(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))

    with pytest.raises(DataError, match=r"^scan\.dcm: not a DICOM file$"):
        read_dicom(path)


def test_dicom_without_preamble_is_refused_not_forced():
    with pytest.raises(DataError, match="not a DICOM file"):
        read_dicom(_bundled("no_meta.dcm"))


def test_colour_dicom_built_with_pydicom_is_refused_by_name(tmp_path):
    path = tmp_path / "rgb.dcm"
    write_dicom(path, np.zeros((8, 8, 3), np.uint8), photometric="RGB", bits_stored=8)

    with pytest.raises(DataError, match=r"colour image \(RGB\) is not supported"):
        read_dicom(path)


@pytest.mark.parametrize(
    "name, shown",
    [("SC_rgb_small_odd.dcm", "RGB"), ("examples_palette.dcm", "PALETTE COLOR")],
)
def test_bundled_colour_dicom_is_refused_by_name(name, shown):
    with pytest.raises(DataError, match=rf"colour image \({shown}\)"):
        read_dicom(_bundled(name))


def test_multi_frame_dicom_is_refused():
    with pytest.raises(DataError, match="multi-frame"):
        read_dicom(_bundled("rtdose.dcm"))


def _jpeg_lossless_file(tmp_path):
    """A grayscale file declaring JPEG Lossless SV1 (the decoder fails before reading data)."""
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "lossless.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_jpeg_lossless_without_decoder_names_the_missing_package(tmp_path):
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed")
    path = _jpeg_lossless_file(tmp_path)

    with pytest.raises(DataError) as err:
        read_dicom(path)

    message = str(err.value)
    assert "JPEG Lossless" in message and "decoder missing" in message
    assert "pylibjpeg + pylibjpeg-libjpeg" in message and "python-gdcm" in message


def test_jpeg_ls_without_decoder_names_the_missing_package():
    path = _bundled("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG-LS decoder is installed")

    with pytest.raises(DataError, match=r"JPEG-LS .*decoder missing, install .*pylibjpeg-libjpeg"):
        read_dicom(path)


def test_12_bit_jpeg_that_pillow_cannot_decode_names_the_packages():
    path = _bundled("JPGExtended.dcm")
    try:
        _ = pydicom.dcmread(path).pixel_array
    except Exception:  # noqa: BLE001 - the expected case: only Pillow, which lacks 12-bit JPEG
        pass
    else:
        pytest.skip("a 12-bit JPEG decoder is installed")

    with pytest.raises(DataError, match=r"12-bit JPEG; install .*pylibjpeg-libjpeg"):
        read_dicom(path)


# --------------------------------------------------------------------------- the pipeline


def _expected_window_display(ds, invert: bool) -> np.ndarray:
    """The trusted peer: pydicom's transforms, normalised by hand over the window's output range."""
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = 0, 2 ** int(ds.BitsStored) - 1
    if int(ds.PixelRepresentation) == 1:
        lo, hi = -(2 ** (int(ds.BitsStored) - 1)), 2 ** (int(ds.BitsStored) - 1) - 1
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    out = (values - lo) / (hi - lo)
    return 1.0 - out if invert else out


def test_bundled_monochrome1_cr_matches_pydicom_window_then_inversion():
    path = _bundled("dicomdirtests/77654033/CR1/6154")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "WindowCenter" in ds

    image = read_dicom(path)

    np.testing.assert_allclose(image, _expected_window_display(ds, invert=True), atol=1e-6)


def test_monochrome1_is_inverted_after_windowing_not_before(tmp_path):
    # Stored 0..4095 ramp; window [1000, 3000]. Inverting before windowing would window the
    # complement (4095 - s) instead and give a different image.
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))
    path = tmp_path / "m1.dcm"
    write_dicom(path, stored, photometric="MONOCHROME1", WindowCenter=2000.5, WindowWidth=2001)

    image = read_dicom(path)

    s = stored.astype(np.float64)
    displayed = np.clip((s - 1000) / 2000, 0, 1)  # LINEAR window, by hand
    np.testing.assert_allclose(image, 1 - displayed, atol=1e-6)


def test_window_with_rescale_matches_pydicom(tmp_path):
    stored = np.rint(ramp(16, 16) * 4095).astype(np.uint16)
    path = tmp_path / "w.dcm"
    write_dicom(
        path,
        stored,
        RescaleSlope=0.5,
        RescaleIntercept=-1024,
        WindowCenter=-24,
        WindowWidth=700,
    )

    image = read_dicom(path)

    expected = _expected_window_display(pydicom.dcmread(path), invert=False)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_voi_lut_sequence_matches_pydicom(tmp_path):
    # A 12-bit-valued LUT declared as 16 bits (a common real-world mismatch): the entries'
    # own width (12 bits) is the output range.
    entries = 1024
    lut = np.rint(np.linspace(0, 1, entries) ** 0.5 * 4095).astype(int)  # non-linear
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [entries, 1000, 16])
    item.add_new("LUTData", "US", lut.tolist())
    stored = np.tile(np.arange(800, 2200, 7, dtype=np.uint16), (3, 1))
    path = tmp_path / "voi.dcm"
    write_dicom(path, stored, VOILUTSequence=pydicom.Sequence([item]))
    ds = pydicom.dcmread(path)

    image = read_dicom(path)

    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds) / 4095.0
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image.min() == 0.0 and image.max() == 1.0


def test_no_window_normalises_by_bit_depth_not_by_image_range(tmp_path):
    stored = np.full((8, 8), 1000, np.uint16)
    stored[0, 0] = 2000
    path = tmp_path / "b.dcm"
    write_dicom(path, stored, bits_stored=12)

    image = read_dicom(path)

    assert image[1, 1] == pytest.approx(1000 / 4095)
    assert image[0, 0] == pytest.approx(2000 / 4095)


def test_signed_pixels_normalise_over_the_signed_range(tmp_path):
    stored = np.array([[-2048, 0, 2047]], dtype=np.int16)
    path = tmp_path / "s.dcm"
    write_dicom(path, stored, bits_stored=12)

    image = read_dicom(path)

    np.testing.assert_allclose(image, [[0.0, 2048 / 4095, 1.0]], atol=1e-6)


def test_presentation_lut_shape_inverse_inverts_once(tmp_path):
    stored = np.array([[0, 1000, 4095]], dtype=np.uint16)
    plain, inverse = tmp_path / "m2.dcm", tmp_path / "m2inv.dcm"
    write_dicom(plain, stored)
    write_dicom(inverse, stored, PresentationLUTShape="INVERSE")
    mono1 = tmp_path / "m1.dcm"
    mono1_inverse = tmp_path / "m1inv.dcm"
    write_dicom(mono1, stored, photometric="MONOCHROME1")
    write_dicom(mono1_inverse, stored, photometric="MONOCHROME1", PresentationLUTShape="INVERSE")

    # MONOCHROME2 + INVERSE: the complement.
    np.testing.assert_allclose(read_dicom(inverse), 1 - read_dicom(plain), atol=1e-7)
    # MONOCHROME1 + INVERSE (what DX requires for MONOCHROME1): the same single inversion.
    np.testing.assert_allclose(read_dicom(mono1_inverse), read_dicom(mono1), atol=1e-7)
    np.testing.assert_allclose(read_dicom(mono1), 1 - read_dicom(plain), atol=1e-7)


# --------------------------------------------------------------------------- PNG files


def test_truncated_png_is_a_clear_error_in_the_csv_loader(tmp_path):
    make_csv_site(tmp_path)
    _truncate(tmp_path / "2010/study_0/img_000.png", 0.5)
    loader = CsvLoader(str(tmp_path))
    loader.index()

    with pytest.raises(DataError, match=r"^img_000\.png: truncated or corrupt image data$"):
        loader.read_image("img_000.png")


def test_16_bit_png_is_scaled_by_65535(tmp_path):
    values = np.array([[0, 4096, 32768, 65535]], dtype=np.uint16)
    write_png(tmp_path / "a.png", values)
    pd.DataFrame([{"path": "a.png", "patient_id": "X", "labels": "No Finding"}]).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    loader = CsvLoader(str(tmp_path))
    loader.index()

    image = loader.read_image("a.png")

    np.testing.assert_allclose(image, values / 65535.0, atol=1e-7)


def test_rgb_png_with_equal_channels_is_gray_and_colour_is_converted_and_counted(tmp_path):
    gray = np.rint(ramp(6, 6) * 255).astype(np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "g.png")
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "c.png")
    pd.DataFrame(
        [
            {"path": "g.png", "patient_id": "X", "labels": "No Finding"},
            {"path": "c.png", "patient_id": "Y", "labels": "No Finding"},
        ]
    ).to_csv(tmp_path / "manifest.csv", index=False)
    loader = CsvLoader(str(tmp_path))
    loader.index()

    np.testing.assert_allclose(loader.read_image("g.png"), gray / 255.0, atol=1e-7)
    np.testing.assert_allclose(loader.read_image("c.png"), 0.299 * 200 / 255, atol=1e-6)
    assert loader.notes_["colour images converted to gray"] == 1


def test_a_file_that_is_not_an_image_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not an image at all")
    pd.DataFrame([{"path": "a.png", "patient_id": "X", "labels": ""}]).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    loader = CsvLoader(str(tmp_path))
    loader.index()

    with pytest.raises(DataError, match="not a PNG or JPEG image"):
        loader.read_image("a.png")


# --------------------------------------------------------------------------- site tables


@pytest.mark.parametrize("kind", ["csv", "dicom"])
def test_listed_image_missing_on_disk_is_an_error_or_counted(tmp_path, kind):
    if kind == "csv":
        make_csv_site(tmp_path)
        (tmp_path / "2011/study_1/img_001.png").unlink()
        make = CsvLoader
    else:
        make_dicom_site(tmp_path)
        (tmp_path / "study01/IM0001.dcm").unlink()
        make = DicomLoader

    with pytest.raises(DataError, match="listed image not found"):
        make(str(tmp_path)).index()
    skipping = make(str(tmp_path), {"on_bad": "skip"})
    index = skipping.index()
    assert len(index) == 4
    assert skipping.skipped_ == {"listed image not found": 1}


def test_dicom_keyed_by_uid_reports_a_listed_uid_that_is_not_found(tmp_path):
    make_dicom_site(tmp_path, key="sop_instance_uid")
    table = pd.read_csv(tmp_path / "labels.csv", dtype=str)
    table.loc[2, "sop_instance_uid"] = "1.2.3.4"
    table.to_csv(tmp_path / "labels.csv", index=False)

    with pytest.raises(DataError, match=r"^1\.2\.3\.4: listed image not found$"):
        DicomLoader(str(tmp_path)).index()


def test_unknown_label_name_is_an_error_naming_label_and_row(tmp_path):
    make_csv_site(tmp_path)
    table = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    table.loc[1, "labels"] = "Effusion|Covid"
    table.to_csv(tmp_path / "manifest.csv", index=False)

    with pytest.raises(DataError, match=r"manifest\.csv row 3: unknown label name 'Covid'"):
        CsvLoader(str(tmp_path)).index()
    dropping = CsvLoader(str(tmp_path), {"unknown_labels": "drop"})
    index = dropping.index()
    assert dropping.notes_["unknown label names dropped"] == 1
    assert index.loc[1, "Effusion"] == 1.0 and index.loc[1, list(LABELS)].sum() == 1.0


def test_missing_label_values_are_nan_and_stay_nan_in_the_tensors(tmp_path):
    make_csv_site(tmp_path)  # row 3 (PAT-C) has an empty labels cell
    table = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    table.loc[4, "labels"] = "NaN"
    table.to_csv(tmp_path / "manifest.csv", index=False)
    loader = CsvLoader(str(tmp_path))

    index = loader.index()
    tensors = load_site_tensors(loader, 16, None, progress=False)

    assert index.loc[[3, 4], list(LABELS)].isna().all().all()
    assert index.loc[[0, 1, 2], list(LABELS)].notna().all().all()
    assert tensors.labels[3:].isnan().all() and not tensors.labels[:3].isnan().any()


def test_duplicate_image_ids_are_an_error_csv(tmp_path):
    make_csv_site(tmp_path)
    write_png(tmp_path / "other/img_000.png", np.zeros((4, 4), np.uint8))
    table = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    extra = table.iloc[[0]].assign(path="other/img_000.png", split="train")
    pd.concat([table, extra]).to_csv(tmp_path / "manifest.csv", index=False)

    with pytest.raises(DataError, match=r"duplicate image ids \(1; first 'img_000\.png'\)"):
        CsvLoader(str(tmp_path)).index()


def test_duplicate_image_ids_are_an_error_dicom(tmp_path):
    make_dicom_site(tmp_path)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy/IM0001.dcm").write_bytes((tmp_path / "study00/IM0001.dcm").read_bytes())
    table = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False)
    extra = table.iloc[[0]].assign(file="copy/IM0001.dcm")
    pd.concat([table, extra]).to_csv(tmp_path / "labels.csv", index=False)

    with pytest.raises(DataError, match="duplicate image ids"):
        DicomLoader(str(tmp_path)).index()
    with pytest.raises(DataError, match="duplicate image ids"):
        DicomLoader(str(tmp_path), {"image_id": "file_name"}).index()


def test_same_patient_in_train_and_test_is_an_error(tmp_path):
    make_csv_site(tmp_path)
    table = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    table.loc[3, "patient_id"] = "PAT-A"  # PAT-A has train rows; row 3 is test
    table.to_csv(tmp_path / "manifest.csv", index=False)

    with pytest.raises(DataError, match=r"1 patient\(s\) appear in both the train and the test"):
        CsvLoader(str(tmp_path)).index()


@pytest.mark.parametrize(
    "bad_path", ["/etc/passwd", "../outside.png", "a/../../b.png", "C:\\x.png"]
)
def test_paths_outside_the_root_are_refused_without_echoing_them(tmp_path, bad_path):
    make_csv_site(tmp_path)
    table = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    table.loc[0, "path"] = bad_path
    table.to_csv(tmp_path / "manifest.csv", index=False)

    with pytest.raises(DataError, match=r"manifest\.csv row 2: image path must") as err:
        CsvLoader(str(tmp_path)).index()
    assert bad_path not in str(err.value)


def test_bad_split_value_is_an_error(tmp_path):
    make_csv_site(tmp_path)
    table = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    table.loc[0, "split"] = "validation"
    table.to_csv(tmp_path / "manifest.csv", index=False)

    with pytest.raises(DataError, match=r"row 2: split 'validation' is not"):
        CsvLoader(str(tmp_path)).index()


# --------------------------------------------------------------------------- at ingest


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", "truncated or corrupt pixel data"),
        ("garbage", "not a DICOM file"),
        ("rgb", "colour image (RGB) is not supported; expected MONOCHROME1 or MONOCHROME2"),
    ],
)
def test_bad_dicom_at_ingest_stops_or_is_counted_never_zero_filled(tmp_path, damage, reason):
    root = tmp_path / "site"
    make_dicom_site(root)
    bad = root / "study02/IM0001.dcm"
    loader = DicomLoader(str(root))
    bad_id = loader.index()["image_id"][2]
    if damage == "truncate":
        _truncate(bad)
    elif damage == "garbage":
        bad.write_bytes(b"\x00" * 50)
    else:
        write_dicom(
            bad, np.zeros((8, 8, 3), np.uint8), photometric="RGB", bits_stored=8, sop_uid=bad_id
        )

    with pytest.raises(DataError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        load_site_tensors(DicomLoader(str(root)), 16, None, progress=False)
    tensors = load_site_tensors(
        DicomLoader(str(root), {"on_bad": "skip"}), 16, tmp_path / "cache", progress=False
    )

    assert tensors.skipped == 1 and tensors.skip_reasons == {reason: 1}
    assert len(tensors) == 4 and bad_id not in tensors.image_ids
    assert (tensors.images.flatten(1).float().std(dim=1) > 0).all()  # no blank stand-ins


def test_bad_image_error_carries_id_and_reason():
    err = BadImageError("x.png", "truncated or corrupt image data")

    assert isinstance(err, DataError)
    assert (err.image_id, err.reason, str(err)) == (
        "x.png",
        "truncated or corrupt image data",
        "x.png: truncated or corrupt image data",
    )
