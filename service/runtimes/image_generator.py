"""Runtime for image generators: (n, seed, label) -> n images, the same bytes for the same seed.

Each request's noise comes from its own seeded generator and runs as its own forward inside the
batch, so neither its noise nor its arithmetic depends on what else was batched with it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.imaging import grid, png_bytes
from service.runtimes.base import DecodeLimits, TensorSpec


@dataclass(frozen=True)
class SampleRequest:
    n: int
    seed: int
    label: int | None


@dataclass(frozen=True)
class Samples:
    seed: int
    images: np.ndarray  # [n, H, W] in [0, 1]
    labels: list[int]


class ImageGeneratorRuntime:
    task = "image-generation"

    def __init__(self, module: nn.Module, manifest: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 limits: DecodeLimits, tokenizer: Any = None) -> None:
        self.module = module.to(device=device, dtype=torch.float32)  # exact bytes per seed: no half precision
        self.device = device
        self.labels: list[str] | None = manifest.get("labels")
        self.conditional = bool(manifest.get("conditional", False))
        self.latent = int(manifest["config"]["latent"])
        self.classes = int(manifest["config"].get("num_classes", 0))
        self.inputs = [TensorSpec("seed", "INT64", [1])]
        self.outputs = [TensorSpec("images", "FP32", [-1, 1, 28, 28])]

    def decode_request(self, request: SampleRequest, index: int) -> SampleRequest:
        return request  # validated by the route's parameter schema

    @torch.inference_mode()
    def forward(self, payloads: list[SampleRequest]) -> Sequence[Samples]:
        results = []
        for request in payloads:
            rng = torch.Generator().manual_seed(request.seed)
            noise = torch.randn(request.n, self.latent, generator=rng)
            if request.label is not None:
                labels = torch.full((request.n,), request.label, dtype=torch.long)
            else:
                labels = torch.randint(0, max(1, self.classes), (request.n,), generator=rng)
            images = self.module(noise.to(self.device), labels.to(self.device))  # [n, 1, 28, 28]
            results.append(Samples(request.seed, images[:, 0].float().cpu().numpy(), labels.tolist()))
        return results

    def warmup(self, max_batch_size: int) -> None:
        self.forward([SampleRequest(16, 0, None)])

    def label_name(self, label: int) -> str:
        return self.labels[label] if self.labels else str(label)

    def png_grid(self, samples: Samples) -> bytes:
        return png_bytes(grid(samples.images))

    def as_json(self, samples: Samples) -> dict[str, Any]:
        return {"seed": samples.seed, "samples": [
            {"label": self.label_name(label), "png_b64": base64.b64encode(png_bytes(image)).decode()}
            for image, label in zip(samples.images, samples.labels, strict=True)]}
