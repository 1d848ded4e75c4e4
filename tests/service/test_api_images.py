"""Large images: bounded by their pixels (read from the header, before any decoding, in every format), and
decoded off the event loop in the bounded decode pool; small ones decode inline."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from service.frontend.predict import DECODE_THREADS
from tests.conftest import png_bytes
from tests.service.test_api_native import assert_error

PNG = {"content-type": "image/png"}


@dataclass(frozen=True)
class Decode:
    size: tuple[int, int]
    on_event_loop: bool  # ran in a thread that runs an event loop (the front-end's)


class Decodes:
    """Every image decode the server runs (Pillow's ``ImageFile.load``, the real one, watched)."""

    def __init__(self) -> None:
        self.seen: list[Decode] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def watch(self, load: Callable[[ImageFile.ImageFile], object]) -> Callable[[ImageFile.ImageFile], object]:
        def watched(image: ImageFile.ImageFile) -> object:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            with self._lock:
                self.seen.append(Decode(image.size, on_loop))
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            try:
                return load(image)
            finally:
                with self._lock:
                    self.running -= 1
        return watched


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Decodes]:
    watcher = Decodes()
    monkeypatch.setattr(ImageFile.ImageFile, "load", watcher.watch(ImageFile.ImageFile.load))
    yield watcher


def blank(width: int, height: int, fmt: str = "PNG") -> bytes:
    """A compressible image: a bar on black, a few KB as PNG however many pixels it has."""
    image = np.zeros((height, width), dtype=np.uint8)
    image[height // 4: 3 * height // 4, width // 2 - width // 20: width // 2 + width // 20] = 255
    return png_bytes(image, fmt=fmt)


def test_a_small_image_decodes_inline(client: TestClient, digit_png: bytes, decodes: Decodes) -> None:
    assert client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers=PNG).status_code == 200
    assert decodes.seen and all(d.on_event_loop for d in decodes.seen)  # cheaper than a thread hop


def test_a_large_compressible_image_decodes_off_the_event_loop(client: TestClient, decodes: Decodes) -> None:
    png = blank(3000, 3000)  # 9 million pixels in a few KB
    assert len(png) < 20_000
    response = client.post("/v1/models/tiny-cnn/predict", content=png, headers=PNG)
    assert response.status_code == 200, response.text
    assert decodes.seen and {d.size for d in decodes.seen} == {(3000, 3000)}
    assert not any(d.on_event_loop for d in decodes.seen)


def test_large_decodes_run_at_most_decode_threads_at_once(client: TestClient, decodes: Decodes) -> None:
    png = blank(2000, 2000)
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: client.post("/v1/models/tiny-cnn/predict", content=png,
                                                       headers=PNG).status_code, range(6)))
    assert statuses == [200] * 6
    assert len({id(d) for d in decodes.seen}) >= 6 and not any(d.on_event_loop for d in decodes.seen)
    assert decodes.most_at_once <= DECODE_THREADS  # the others waited their turn, not in 6 threads at once


MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "BMP": "image/bmp",
               "GIF": "image/gif", "TIFF": "image/tiff", "PPM": "image/x-portable-pixmap"}


def test_an_image_over_the_pixel_limit_is_413_before_any_decoding(make_client: Callable[..., TestClient],
                                                                   decodes: Decodes, digit_png: bytes) -> None:
    client = make_client(max_image_pixels=1_000_000)
    for fmt, media_type in MEDIA_TYPES.items():
        body = assert_error(client.post("/v1/models/tiny-cnn/predict", content=blank(1200, 1000, fmt),
                                        headers={"content-type": media_type}), 413)
        assert body["error"] == "inputs[0]: image of 1200x1000 pixels exceeds the limit of 1000000", fmt
    over = blank(1200, 1000)
    encoded = {"b64": base64.b64encode(over).decode()}
    assert_error(client.post("/v1/models/tiny-cnn/predict", json={"inputs": [encoded]}), 413)
    assert_error(client.post("/v1/models/tiny-cnn:predict", json={"instances": [encoded]}), 413)  # KServe V1
    assert decodes.seen == []  # every one refused from its header
    body = assert_error(client.post("/v1/models/tiny-cnn/predict", files=[("file", ("a.png", digit_png, "image/png")),
                                                                         ("file", ("b.png", over, "image/png"))]), 413)
    assert body["error"].startswith("inputs[1]: ")
    assert all(d.size == (28, 28) for d in decodes.seen)  # the over-limit file was never decoded
    assert client.post("/v1/models/tiny-cnn/predict", content=blank(1000, 1000), headers=PNG).status_code == 200


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that states its size and holds almost no data (as a decompression bomb's header does)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pillows_own_pixel_bound_is_a_413_too(make_client: Callable[..., TestClient], decodes: Decodes) -> None:
    """Where SERVE_MAX_IMAGE_PIXELS is set above Pillow's bound, Pillow refuses first: still 413, undecoded."""
    client = make_client(max_image_pixels=10 * Image.MAX_IMAGE_PIXELS)
    side = int((3 * Image.MAX_IMAGE_PIXELS) ** 0.5)
    body = assert_error(client.post("/v1/models/tiny-cnn/predict", content=png_header_only(side, side), headers=PNG),
                        413)
    assert "too large to decode" in body["error"]
    assert decodes.seen == []
