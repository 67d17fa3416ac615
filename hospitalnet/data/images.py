"""Decoding of ordinary image files (PNG/JPEG) into float32 [0, 1] grayscale.

A truncated or corrupt file raises :class:`DataError` naming the image id (never its path) and is
never replaced by a zero-filled image. 16-bit PNGs are scaled by 65535, 8-bit ones by 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hospitalnet.errors import DataError


def read_grayscale(path: Path, image_id: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in training
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
            elif mode == "I":
                arr = np.asarray(img, dtype=np.int32).astype(np.float32)
                arr = arr / (65535.0 if arr.max() > 255 else 255.0)
            elif mode == "F":
                arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
            else:
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DataError(f"image {image_id}: missing on disk") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        kind = "truncated or corrupt" if "truncated" in str(err).lower() else "unreadable"
        raise DataError(f"image {image_id}: {kind} image file") from None
    if arr.ndim != 2:
        raise DataError(f"image {image_id}: expected a 2-D grayscale image, got shape {arr.shape}")
    return arr
