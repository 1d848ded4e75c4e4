"""Runtime for image classifiers: pixels [1, H, W] per item -> class probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from service.errors import InputError
from service.runtimes.base import DecodeLimits, TensorSpec, classification_item
from service.runtimes.images import decode_image


class ImageClassifierRuntime:
    task = "image-classification"

    def __init__(self, module: nn.Module, manifest: dict[str, Any], device: torch.device,
                 dtype: torch.dtype, limits: DecodeLimits, tokenizer: Any = None) -> None:
        self.module = module.to(device=device, dtype=dtype)
        self.device = device
        self.dtype = dtype
        self.limits = limits
        self.labels: list[str] = list(manifest.get("labels") or [])
        channels, height, width = manifest.get("preprocessing", {}).get("shape", [1, 28, 28])
        self.shape = (int(channels), int(height), int(width))
        num_classes = len(self.labels)
        self.inputs = [TensorSpec("pixels", "FP32", [-1, *self.shape])]
        self.outputs = [TensorSpec("probabilities", "FP32", [-1, num_classes]),
                        TensorSpec("label", "BYTES", [-1])]

    # -- decode (worker thread, before queueing) ---------------------------------------------
    def decode_image(self, data: bytes, index: int, invert: bool | None) -> np.ndarray:
        return decode_image(data, index, (self.shape[2], self.shape[1]), self.limits.max_image_pixels, invert)

    def decode_pixels(self, array: np.ndarray, index: int) -> np.ndarray:
        """One item of raw pixels (OIP V2 ``pixels``): float [C, H, W] in [0, 1]."""
        if array.shape != self.shape:
            raise InputError(index, f"pixels must have shape {list(self.shape)}, got {list(array.shape)}")
        if not np.isfinite(array).all():
            raise InputError(index, "pixels contain NaN or infinity")
        if array.min() < 0.0 or array.max() > 1.0:
            raise InputError(index, "pixels must lie in [0, 1]")
        return np.ascontiguousarray(array, dtype=np.float32)

    # -- forward (inference worker) ----------------------------------------------------------
    @torch.inference_mode()
    def forward(self, payloads: list[np.ndarray]) -> Sequence[np.ndarray]:
        batch = torch.from_numpy(np.stack(payloads)).to(self.device, self.dtype, non_blocking=True)
        probabilities = torch.softmax(self.module(batch).float(), dim=-1)  # [N, C]
        return list(probabilities.cpu().numpy())

    def warmup(self, max_batch_size: int) -> None:
        for size in sorted({1, max_batch_size}):
            self.forward([np.zeros(self.shape, dtype=np.float32)] * size)

    # -- encode (event loop; numpy only) -----------------------------------------------------
    def encode(self, probabilities: np.ndarray, top_k: int) -> dict[str, Any]:
        return classification_item(probabilities, self.labels, top_k)
