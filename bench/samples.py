"""Real MNIST test digits as PNG bytes, and the check that a server labels them as the dataset does."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from bench.servers import predict
from training.data import load_image_split


@dataclass(frozen=True)
class Sample:
    index: int  # in the official test split
    png: bytes
    label: str


def load(count: int) -> list[Sample]:
    split = load_image_split("mnist", "test")
    samples = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(split.images[index], mode="L").save(buffer, format="PNG")
        samples.append(Sample(index, buffer.getvalue(), str(int(split.labels[index]))))
    return samples


def check(server: str, base_url: str, samples: list[Sample]) -> None:
    """POST each sample once; raise unless every answer is well-formed and labels the digit as the dataset does."""
    for sample in samples:
        answer = predict(base_url, sample.png)
        got = answer["predictions"][0]["label"]
        if answer.get("model") != "mnist-cnn" or got != sample.label:
            raise RuntimeError(f"{server}: test image {sample.index} labelled {got!r}, dataset says "
                               f"{sample.label!r} (answer {answer})")
