"""PNG and JPEG images as float32 (H, W) in [0, 1] (Pillow, restricted to those two formats).

Scaling follows the file's bit depth, never the image's min/max: 8-bit / 255, 16-bit / 65535 (PNG
stores 16-bit samples scaled to the full range; a 12-bit source is scaled up by the writer).

Many exporters do not scale up: they store a detector's 12-bit values (0..4095) as they are in a
16-bit PNG, which / 65535 loads as 0..0.0625, nearly black. Such a file is recognised by its
``sBIT`` chunk (significant bits < 16) when the values fit in that many bits and are not the
left-shifted form the PNG standard prescribes, or, without ``sBIT``, by every value fitting in 12
bits while some exceed 8 bits (12 bits is the common X-ray detector depth; a full-range 16-bit
film whose brightest pixel is below 6.3 % does not occur). It is then divided by 2**bits - 1 and
reported (:data:`LOW_BIT_NOTE`), so a site sees how many files were read this way.

Colour files: an X-ray exported as RGB with three equal channels is read losslessly as gray. A file
with truly different channels is converted with the ITU-R BT.601 luma weights (what Pillow's "L"
conversion uses) and reported through ``colour=True`` so the loader can count it: a colour image
in a chest X-ray archive is usually a screenshot or an annotated export, worth a look, but not a
reason to stop a site.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hospitalnet.data.indexing import BadImageError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
COLOUR_NOTE = "colour images converted to gray"
LOW_BIT_NOTE = "16-bit PNGs holding fewer significant bits, rescaled"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_raster(path: str | Path, *, image_id: str) -> tuple[np.ndarray, str | None]:
    """Return ``(image, note)``: the float32 image and what had to be converted to read it
    (:data:`COLOUR_NOTE`, :data:`LOW_BIT_NOTE`), or None."""
    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as img:
            img.load()  # decodes now: a truncated file raises here, never zero-fills
            image, colour = _to_unit_float(img, image_id)
            if colour:
                return image, COLOUR_NOTE
            if img.format == "PNG" and (img.mode.startswith("I;16") or img.mode == "I"):
                return _rescale_low_bits(image, png_significant_bits(path))
            return image, None
    except FileNotFoundError:
        raise BadImageError(image_id, "file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(image_id, "not a PNG or JPEG image") from None
    except Image.DecompressionBombError:
        raise BadImageError(image_id, "image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError):
        # Pillow: "image file is truncated", broken data stream, bad CRC.
        raise BadImageError(image_id, "truncated or corrupt image data") from None


def png_significant_bits(path: str | Path) -> int | None:
    """The gray sample's significant bits from a PNG's ``sBIT`` chunk (None when absent).

    Pillow does not read ``sBIT``; the chunks before the image data are walked here.
    """
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):  # sBIT must precede the image data
                return None
            data = fh.read(length)
            fh.seek(4, 1)  # CRC (Pillow has checked the file already)
            if kind == b"sBIT":
                return int(data[0]) if data else None


def _rescale_low_bits(image: np.ndarray, sbit: int | None) -> tuple[np.ndarray, str | None]:
    """A 16-bit gray image (already / 65535) whose values are stored unscaled in fewer bits."""
    values = np.rint(image * 65535.0).astype(np.int64)
    top = int(values.max())
    if sbit is not None and 1 <= sbit < 16:
        shift = 16 - sbit
        low = values & ((1 << shift) - 1)
        # The standard's form: the sample shifted left, the low bits zero or replicated top bits.
        if np.all((low == 0) | (low == values >> sbit)):
            return image, None
        if top < 2**sbit:
            return (values / float(2**sbit - 1)).astype(np.float32), LOW_BIT_NOTE
        return image, None
    if 255 < top < 2**12:
        return (values / 4095.0).astype(np.float32), LOW_BIT_NOTE
    return image, None


def _to_unit_float(img: Image.Image, image_id: str) -> tuple[np.ndarray, bool]:
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0, False
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float32) / 65535.0, False
    if mode == "I":  # 16-bit PNG on some Pillow versions: int32 holding 0..65535
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise BadImageError(image_id, "pixel values outside the 16-bit range")
        return arr.astype(np.float32) / 65535.0, False
    if mode == "1":
        return np.asarray(img, dtype=np.float32), False
    if mode == "LA":
        return np.asarray(img.getchannel("L"), dtype=np.float32) / 255.0, False
    if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return rgb[..., 0].copy(), False
        return np.clip(rgb @ _LUMA, 0.0, 1.0).astype(np.float32), True
    raise BadImageError(image_id, f"unsupported pixel mode {mode}")
