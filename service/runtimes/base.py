"""What runtimes offer: decode+validate one input, forward a batch, encode one result.

``decode_*`` runs before queueing, so a bad input fails only its own request (inline for small inputs,
in a worker thread for large ones); ``forward`` runs in the device's inference worker; ``encode`` is
cheap and runs on the event loop. Language models differ: the decoding loop drives their ``prefill``
and ``step`` instead of ``forward`` (see service/decoder.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # OIP V2 names: FP32, BYTES, INT64, ...
    shape: list[int]  # -1 for the batch dimension

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(frozen=True)
class DecodeLimits:
    max_image_pixels: int


class Runtime(Protocol):
    """The part every request/response runtime shares (the registry and the batcher rely on it)."""

    task: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] | None

    def forward(self, payloads: list[Any]) -> Sequence[Any]: ...

    def warmup(self, max_batch_size: int) -> None: ...


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on a GPU (tensor cores, half the memory) and float32 on the CPU."""
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, requested)
    return dtype


def classification_item(probabilities: np.ndarray, labels: list[str], top_k: int) -> dict[str, Any]:
    """``{"label", "index", "score", "top_k"}`` for one row of class probabilities."""
    order = np.argsort(-probabilities)[: max(1, min(top_k, len(probabilities)))]
    best = int(order[0])
    return {
        "label": labels[best],
        "index": best,
        "score": float(probabilities[best]),
        "top_k": [{"label": labels[i], "index": int(i), "score": float(probabilities[i])} for i in order],
    }
