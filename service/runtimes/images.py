"""Image decoding for every image model: any format, size and mode -> float pixels [1, H, W] in [0, 1]."""

from __future__ import annotations

import contextlib
import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InputError

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM"}
ACCEPTED_MEDIA_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/bmp", "image/x-ms-bmp",
                        "image/gif", "image/tiff", "image/x-portable-pixmap"}


def decode_image(data: bytes, index: int, size: tuple[int, int], max_pixels: int,
                 invert: bool | None = None) -> np.ndarray:
    """Bytes of an image file -> float32 [1, H, W] in [0, 1], light ink on a dark background.

    ``invert=None`` decides from the border: a light border means dark ink on light paper (a photo
    or a drawing), which is inverted to match the MNIST-style training data.
    """
    if not data:
        raise InputError(index, "empty image")
    try:
        # Pillow warns of a possible decompression bomb when it opens a large image: an error here. A PNG says
        # its size in its first bytes: where that is small, no warning can come, and installing the filter
        # (which resets the warnings machinery's caches) cost 5% of a front-end's CPU per 28x28 prediction.
        pixels = png_pixels(data)
        bomb_possible = pixels is None or Image.MAX_IMAGE_PIXELS is None or pixels > Image.MAX_IMAGE_PIXELS
        with warnings.catch_warnings() if bomb_possible else contextlib.nullcontext():
            if bomb_possible:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise InputError(index, f"unsupported image format {image.format}; send PNG, JPEG, WebP or BMP",
                                 status=415)
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(index, f"image of {width}x{height} pixels exceeds the limit of {max_pixels}",
                                 status=413)
            image.draft("L", size)  # JPEG: decode at a reduced scale when that is enough
            gray = _to_gray(image)
            if gray.size != size:
                gray = gray.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own bound on the
        # pixels, checked from the header as ours is: it decides only where SERVE_MAX_IMAGE_PIXELS is above it
        raise InputError(index, f"image too large to decode: {exc}", status=413) from exc
    except UnidentifiedImageError as exc:
        raise InputError(index, f"not a readable image ({exc.__class__.__name__})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(index, f"corrupt or truncated image: {exc}") from exc
    levels = np.asarray(gray)  # uint8 [H, W]
    if invert is None:
        invert = _border_mean(levels) > 0.5
    pixels = (INVERTED_PIXELS if invert else PIXELS)[levels]  # one lookup, not three array passes
    return pixels[None, :, :]


PIXELS = np.arange(256, dtype=np.float32) / 255.0  # a gray level -> its float in [0, 1]
INVERTED_PIXELS = 1.0 - PIXELS
# Where Pillow finds an orientation for a PNG (an eXIf chunk, a raw EXIF or XMP text chunk), once loaded.
PNG_ORIENTATION_KEYS = frozenset({"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"})


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_pixels(data: bytes) -> int | None:
    """A PNG's width x height from its header, without opening it; None for anything else."""
    if len(data) >= 24 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width * height)
    return None


def _may_be_rotated(image: Image.Image) -> bool:
    """Whether an orientation tag can apply; most PNGs have none, and looking for one costs as much as
    decoding a 28x28 image."""
    if image.format != "PNG":
        return True
    image.load()
    return not PNG_ORIENTATION_KEYS.isdisjoint(image.info)


def _to_gray(image: Image.Image) -> Image.Image:
    if _may_be_rotated(image):
        image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent -> paper
        return Image.alpha_composite(background, rgba).convert("L")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        span = float(array.max() - array.min()) or 1.0
        return Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8), "L")
    return image if image.mode == "L" else image.convert("L")  # (converting to its own mode copies it)


def _border_mean(levels: np.ndarray) -> float:
    """The mean of the outermost rows and columns (corners twice), in [0, 1], from the gray levels."""
    total = int(levels[0].sum()) + int(levels[-1].sum()) + int(levels[:, 0].sum()) + int(levels[:, -1].sum())
    return total / (255.0 * 2 * (levels.shape[0] + levels.shape[1]))
