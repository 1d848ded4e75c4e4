"""Runtimes for image models: pixels [1, H, W] per item -> class probabilities (classifiers) or an
anomaly score with the reconstruction (autoencoders)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from models.imaging import png_bytes
from service.errors import InputError
from service.runtimes import v2
from service.runtimes.base import DecodeLimits, Runtime, TensorSpec, classification_item
from service.runtimes.images import decode_image
from service.schemas import AnomalyParameters, ImageParameters

if TYPE_CHECKING:
    import torch


class ImageRuntime(Runtime):
    """Decoding shared by image models: files of any format, or raw pixels (OIP V2)."""

    body = "image"
    payload_type = np.ndarray  # float32 [C, H, W] in [0, 1]

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        super().__init__(manifest, limits, tokenizer)
        self.labels = list(manifest.get("labels") or [])
        channels, height, width = manifest.get("preprocessing", {}).get("shape", [1, 28, 28])
        self.shape = (int(channels), int(height), int(width))
        self.inputs = [TensorSpec("pixels", "FP32", [-1, *self.shape])]
        self.outputs: list[TensorSpec] = []

    def prepare_forward(self, max_batch_size: int) -> None:
        from service.engine.prepare import prepare_image_forward

        self.prepared = prepare_image_forward(self.module, self.shape, self.device, self.dtype, max_batch_size,
                                              str(self.manifest.get("name")), key=self.prepare_key(max_batch_size))
        self.forward_kind = self.prepared.description

    # -- decode (front-end, before queueing) ---------------------------------------------
    def decode_image(self, data: bytes, index: int, invert: bool | None) -> np.ndarray:
        return decode_image(data, index, (self.shape[2], self.shape[1]), self.limits.max_image_pixels, invert)

    def decode(self, raw: bytes, index: int, params: Any) -> np.ndarray:
        return self.decode_image(raw, index, params.invert)

    def v2_items(self, tensors: dict[str, np.ndarray], parameters: dict[str, Any],
                 max_inputs: int) -> tuple[list[Any], Any]:
        name = self.inputs[0].name
        v2.check_names(tensors, [name], str(self.manifest.get("name")))
        return v2.float_rows(tensors[name], name, list(self.shape), max_inputs), None

    def v2_decode(self, raw: np.ndarray, index: int, params: Any) -> np.ndarray:
        return self.decode_pixels(raw, index)

    def decode_pixels(self, array: np.ndarray, index: int) -> np.ndarray:
        """One item of raw pixels (OIP V2 ``pixels``): float [C, H, W] in [0, 1]."""
        if array.shape != self.shape:
            raise InputError(index, f"pixels must have shape {list(self.shape)}, got {list(array.shape)}")
        if not np.isfinite(array).all():
            raise InputError(index, "pixels contain NaN or infinity")
        if array.min() < 0.0 or array.max() > 1.0:
            raise InputError(index, "pixels must lie in [0, 1]")
        return np.ascontiguousarray(array, dtype=np.float32)

    def batch(self, payloads: list[np.ndarray]) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.stack(payloads)).to(self.device, self.dtype, non_blocking=True)

    def warmup(self, max_batch_size: int) -> None:
        for size in sorted({1, max_batch_size}):
            self.forward([np.zeros(self.shape, dtype=np.float32)] * size)


class ImageClassifierRuntime(ImageRuntime):
    task = "image-classification"
    parameters = ImageParameters
    result_type = np.ndarray  # class probabilities [C]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outputs = [TensorSpec("probabilities", "FP32", [-1, len(self.labels or [])]),
                        TensorSpec("label", "BYTES", [-1])]

    def forward(self, payloads: list[np.ndarray]) -> Sequence[np.ndarray]:
        import torch

        with torch.inference_mode():
            probabilities = torch.softmax(self.prepared(self.batch(payloads)).float(), dim=-1)  # [N, C]
            return list(probabilities.cpu().numpy())

    def encode(self, probabilities: np.ndarray, params: Any) -> dict[str, Any]:
        return classification_item(probabilities, self.labels or [], params.top_k)

    def v2_outputs(self, results: list[np.ndarray]) -> dict[str, np.ndarray]:
        probabilities = np.stack(results).astype(np.float32)
        return {"probabilities": probabilities, "label": v2.labels_tensor(probabilities, self.labels or [])}


@dataclass(frozen=True)
class AnomalyResult:
    score: float
    reconstruction: np.ndarray  # [C, H, W] in [0, 1]


class AnomalyRuntime(ImageRuntime):
    task = "anomaly-detection"
    parameters = AnomalyParameters
    result_type = AnomalyResult

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        super().__init__(manifest, limits, tokenizer)
        self.threshold = float(manifest["threshold"])
        self.outputs = [TensorSpec("anomaly_score", "FP32", [-1]), TensorSpec("is_anomaly", "BOOL", [-1]),
                        TensorSpec("reconstruction", "FP32", [-1, *self.shape])]

    def forward(self, payloads: list[np.ndarray]) -> Sequence[AnomalyResult]:
        import torch

        with torch.inference_mode():
            pixels = self.batch(payloads)
            reconstruction = self.prepared(pixels)
            scores = self.module.score(pixels.float(), reconstruction.float())
        return [AnomalyResult(float(score), image) for score, image in
                zip(scores.cpu().numpy(), reconstruction.float().cpu().numpy(), strict=True)]

    def encode(self, result: AnomalyResult, params: Any) -> dict[str, Any]:
        item: dict[str, Any] = {"anomaly_score": result.score, "threshold": self.threshold,
                                "is_anomaly": result.score > self.threshold}
        if params.reconstruction:
            item["reconstruction_png_b64"] = base64.b64encode(png_bytes(result.reconstruction[0])).decode()
        return item

    def v2_outputs(self, results: list[AnomalyResult]) -> dict[str, np.ndarray]:
        scores = np.array([result.score for result in results], dtype=np.float32)
        return {"anomaly_score": scores, "is_anomaly": scores > self.threshold,
                "reconstruction": np.stack([result.reconstruction for result in results]).astype(np.float32)}
