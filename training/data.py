"""Readers for the formats under ``../shared/data`` (override the root with ``SERVE_DATA_DIR``)."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "SERVE_DATA_DIR"
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def data_root() -> Path:
    """The datasets' root: ``$SERVE_DATA_DIR``, else ``../shared/data`` beside the repository."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _open(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; set {DATA_DIR_ENV} to the datasets' root")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return handle.read()


def read_idx_images(path: Path) -> np.ndarray:
    """IDX3 images -> uint8 array [N, rows, cols]."""
    raw = _open(path)
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IDX_IMAGES_MAGIC:
        raise ValueError(f"{path}: magic {magic}, expected {IDX_IMAGES_MAGIC}")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16)
    if pixels.size != count * rows * cols:
        raise ValueError(f"{path}: {pixels.size} pixels for a header of {count}x{rows}x{cols}")
    return pixels.reshape(count, rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    """IDX1 labels -> int64 array [N]."""
    raw = _open(path)
    magic, count = struct.unpack(">II", raw[:8])
    if magic != IDX_LABELS_MAGIC:
        raise ValueError(f"{path}: magic {magic}, expected {IDX_LABELS_MAGIC}")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)
    if labels.size != count:
        raise ValueError(f"{path}: {labels.size} labels for a header of {count}")
    return labels


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int64 [N]


def load_image_split(dataset: str, split: str) -> ImageSplit:
    """``dataset`` is a folder under the data root (mnist, fashion-mnist); ``split`` is train or test."""
    prefix = {"train": "train", "test": "t10k"}[split]
    folder = data_root() / dataset
    images = read_idx_images(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx_labels(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return ImageSplit(images, labels)


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # int64 [N]


def load_sst2(split: str) -> TextSplit:
    """SST-2 TSV (``label<TAB>sentence``): split is train, dev or test."""
    path = data_root() / "sst2" / f"{split}.tsv"
    lines = _open(path).decode("utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["label", "sentence"]:
        raise ValueError(f"{path}: expected the header 'label<TAB>sentence'")
    texts, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        label, _, sentence = line.partition("\t")
        if label not in ("0", "1") or not sentence:
            raise ValueError(f"{path}:{number}: malformed row")
        texts.append(sentence)
        labels.append(int(label))
    return TextSplit(texts, np.array(labels, dtype=np.int64))


@dataclass(frozen=True)
class Series:
    times: list[str]
    values: np.ndarray  # float64 [N]


def load_series(name: str = "monthly-sunspots") -> Series:
    """A two-column CSV under ``timeseries/`` (a header, then time,value rows)."""
    path = data_root() / "timeseries" / f"{name}.csv"
    rows = _open(path).decode("utf-8").splitlines()[1:]
    times, values = [], []
    for number, row in enumerate(rows, start=2):
        time_text, _, value = row.partition(",")
        try:
            values.append(float(value))
        except ValueError:
            raise ValueError(f"{path}:{number}: {value!r} is not a number") from None
        times.append(time_text.strip('"'))
    return Series(times, np.array(values))


def load_shakespeare() -> str:
    """tiny shakespeare, the character-level language-modelling corpus."""
    return _open(data_root() / "tinyshakespeare" / "input.txt").decode("utf-8")
