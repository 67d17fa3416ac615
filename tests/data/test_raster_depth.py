"""16-bit PNGs that hold fewer significant bits (a detector's 12-bit values stored as they are):
recognised by the sBIT chunk or the value range and scaled by their true depth, and counted.
Expected values are computed by hand from the stored integers."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hospitalnet.data.nih import NihLoader
from hospitalnet.data.raster import LOW_BIT_NOTE, png_significant_bits, read_raster
from tests.data.loader_fakes import make_nih_site


def _write_png16(path: Path, values: np.ndarray, sbit: int | None = None) -> None:
    """A 16-bit gray PNG of ``values``; with ``sbit``, an sBIT chunk right after IHDR."""
    Image.fromarray(values.astype(np.uint16)).save(path, format="PNG")
    if sbit is None:
        return
    data = path.read_bytes()
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, IHDR length/type/data/CRC
    body = b"sBIT" + bytes([sbit])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])


def _twelve_bit_film() -> np.ndarray:
    y, x = np.mgrid[0:32, 0:24]
    values = (200 + (x * 31 + y * 97) % 3895).astype(np.int64)
    values[0, 0] = 4094  # the brightest pixel of the film
    return values


def test_twelve_bit_values_without_sbit_are_scaled_by_4095(tmp_path):
    values = _twelve_bit_film()
    assert values.max() == 4094
    _write_png16(tmp_path / "a.png", values)

    image, note = read_raster(tmp_path / "a.png", image_id="a.png")

    # Before: values / 65535, a film between 0.003 and 0.0625.
    np.testing.assert_allclose(image, values / 4095.0, rtol=0, atol=1e-6)
    assert note == LOW_BIT_NOTE and image.max() > 0.99


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_sbit_names_the_depth_of_unscaled_values(tmp_path, bits):
    values = _twelve_bit_film() % (2**bits - 7) + 3
    _write_png16(tmp_path / "a.png", values, sbit=bits)
    assert png_significant_bits(tmp_path / "a.png") == bits

    image, note = read_raster(tmp_path / "a.png", image_id="a.png")

    np.testing.assert_allclose(image, values / float(2**bits - 1), rtol=0, atol=1e-6)
    assert note == LOW_BIT_NOTE


def test_sbit_with_values_scaled_up_as_the_standard_says_is_read_by_65535(tmp_path):
    raw = _twelve_bit_film()
    stored = (raw << 4) | (raw >> 8)  # PNG's left shift with bit replication
    _write_png16(tmp_path / "a.png", stored, sbit=12)

    image, note = read_raster(tmp_path / "a.png", image_id="a.png")

    np.testing.assert_allclose(image, stored / 65535.0, rtol=0, atol=1e-6)
    assert note is None


def test_full_range_16_bit_png_is_unchanged(tmp_path):
    values = _twelve_bit_film() * 16  # max 65504: uses the full range
    _write_png16(tmp_path / "a.png", values)

    image, note = read_raster(tmp_path / "a.png", image_id="a.png")

    np.testing.assert_allclose(image, values / 65535.0, rtol=0, atol=1e-6)
    assert note is None and png_significant_bits(tmp_path / "a.png") is None


def test_the_nih_loader_counts_rescaled_pngs(tmp_path):
    _, files = make_nih_site(tmp_path)
    _write_png16(files[0], _twelve_bit_film())
    loader = NihLoader(str(tmp_path))
    loader.index()

    image = loader.read_image(files[0].name)

    assert image.max() == pytest.approx(4094 / 4095, abs=1e-6)
    assert loader.notes_ == {LOW_BIT_NOTE: 1}
