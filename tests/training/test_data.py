"""IDX readers, on files written here and on the real datasets' headers."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import requires_data
from training.data import load_image_split, read_idx_images, read_idx_labels


def write_idx(tmp_path: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "train") -> None:
    with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
    with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def test_reads_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5])
    (tmp_path / "toy").mkdir()
    write_idx(tmp_path / "toy", images, labels)
    monkeypatch.setenv("SERVE_DATA_DIR", str(tmp_path))
    split = load_image_split("toy", "train")
    assert np.array_equal(split.images, images) and split.labels.tolist() == labels.tolist()


def test_bad_magic_and_sizes_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(struct.pack(">IIII", 1234, 1, 28, 28) + bytes(784))
    with pytest.raises(ValueError, match="magic"):
        read_idx_images(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as handle:
        handle.write(struct.pack(">II", 2049, 10) + bytes(3))
    with pytest.raises(ValueError, match="labels"):
        read_idx_labels(short)
    with pytest.raises(FileNotFoundError, match="SERVE_DATA_DIR"):
        read_idx_images(tmp_path / "missing.gz")


@requires_data("mnist")
def test_real_mnist_test_split() -> None:
    split = load_image_split("mnist", "test")
    assert split.images.shape == (10_000, 28, 28) and split.images.dtype == np.uint8
    assert np.bincount(split.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
