"""Pixels -> pictures, shared by training (sample grids for a person to look at) and serving (PNG answers)."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Floats in [0, 1], any leading shape -> uint8 in [0, 255] (rounded, clipped)."""
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> Image.Image:
    """images [N, H, W] floats in [0, 1] -> one grayscale picture, ``columns`` wide (default: square-ish)."""
    count, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding), np.uint8)
    for index, image in enumerate(to_uint8(images)):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[top:top + height, left:left + width] = image
    return Image.fromarray(canvas, "L")


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """PNG bytes; the same pixels always give the same bytes."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(to_uint8(image), "L")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
