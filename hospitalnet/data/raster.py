"""PNG and JPEG images as float32 (H, W) in [0, 1] (Pillow, restricted to those two formats).

Scaling follows the file's bit depth, never the image's min/max: 8-bit / 255, 16-bit / 65535 (PNG
stores 16-bit samples scaled to the full range; a 12-bit source is scaled up by the writer).

Colour files: an X-ray exported as RGB with three equal channels is read losslessly as gray. A file
with truly different channels is converted with the ITU-R BT.601 luma weights (what Pillow's "L"
conversion uses) and reported through ``colour=True`` so the loader can count it: a colour image
in a chest X-ray archive is usually a screenshot or an annotated export, worth a look, but not a
reason to stop a site.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hospitalnet.data.indexing import BadImageError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def read_raster(path: str | Path, *, image_id: str) -> tuple[np.ndarray, bool]:
    """Return ``(image, colour)``: the float32 image and whether colour had to be converted."""
    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as img:
            img.load()  # decodes now: a truncated file raises here, never zero-fills
            return _to_unit_float(img, image_id)
    except FileNotFoundError:
        raise BadImageError(image_id, "file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(image_id, "not a PNG or JPEG image") from None
    except Image.DecompressionBombError:
        raise BadImageError(image_id, "image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError):
        # Pillow: "image file is truncated", broken data stream, bad CRC.
        raise BadImageError(image_id, "truncated or corrupt image data") from None


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
