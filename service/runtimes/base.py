"""The runtime contract: one class per task kind, with a front-end half and an engine half.

Front-end half (HTTP processes; no torch, no model): built from the manifest alone, it decodes and
validates one input (``decode_*``) before anything is queued, so a bad input fails only its own
request, and it encodes one result (``encode``). Its ``inputs``/``outputs`` are the V2 tensor specs.

Engine half (the engine process): ``attach`` gives it the module on its device, then ``forward``
runs a batch of decoded payloads (or, for ``scheduler`` "generation" and "denoising", the loops of
service/decoder.py and service/denoiser.py drive its ``prefill``/``step``). torch is imported inside
these methods only, so the front-ends never load it.

``payload_type`` and ``result_type`` are what crosses between the two halves (service/transport.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

from service.errors import ServeError

if TYPE_CHECKING:
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


SchedulerKind = Literal["batch", "generation", "denoising"]


BodyKind = Literal["image", "text", "series"]


class Runtime:
    """The base of every runtime (see the module's docstring for the two halves)."""

    task: ClassVar[str] = ""
    scheduler: ClassVar[SchedulerKind] = "batch"
    body: ClassVar[BodyKind | None] = None  # how the native and KServe V1 routes read inputs (None: no such route)
    parameters: ClassVar[type[BaseModel] | None] = None  # the request parameters' schema
    payload_type: ClassVar[Any] = Any
    result_type: ClassVar[Any] = Any
    # The task's default latency objective (a manifest's serving.latency_objective_ms or the operator's wins):
    # from arrival to result; a language model's, per token; a diffusion model's, for its whole sampling.
    latency_objective_ms: ClassVar[float] = 100.0

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        self.manifest = manifest
        self.limits = limits
        self.labels: list[str] | None = manifest.get("labels")
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.module: Any = None
        self.prepared: Any = None  # the forward that serves: the module until prepare_forward builds another
        self.device: Any = None
        self.dtype: Any = None
        self.forward_kind = "eager"  # what prepare_forward built, for the model's metadata

    # -- front-end half ------------------------------------------------------------------------
    def prepare(self, params: Any) -> Any:
        """Check a request's parameters against this model (e.g. a horizon within bounds); the parameters."""
        return params

    def units(self, raw: Any) -> int:
        """The places one raw input takes in the model's queue (a generator's: its images)."""
        return 1

    def decode(self, raw: Any, index: int, params: Any) -> Any:
        """One raw input (file bytes, text, numbers) -> the payload the engine runs; InputError if bad."""
        raise ServeError(400, f"a {self.task} model has no predict route", "wrong_task")

    def encode(self, result: Any, params: Any) -> dict[str, Any]:
        """One result -> its JSON item."""
        raise NotImplementedError

    def v2_items(self, tensors: dict[str, np.ndarray], parameters: dict[str, Any],
                 max_inputs: int) -> tuple[list[Any], Any]:
        """V2 input tensors (and the request's parameters) -> raw inputs and parameters for ``v2_decode``."""
        raise ServeError(400, f"a {self.task} model has no V2 infer", "wrong_task")

    def v2_decode(self, raw: Any, index: int, params: Any) -> Any:
        return self.decode(raw, index, params)

    def v2_outputs(self, results: list[Any]) -> dict[str, np.ndarray]:
        """Results -> V2 output tensors by name (those of ``outputs``)."""
        raise NotImplementedError

    # -- engine half ---------------------------------------------------------------------------
    def attach(self, module: Any, device: torch.device, dtype: torch.dtype) -> None:
        """Take the loaded module onto the device (engine only)."""
        self.module = self.prepared = module.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype

    def prepare_forward(self, max_batch_size: int) -> None:
        """Build the fastest correct form of the forward for this device (service/engine/prepare.py); the
        runtimes that have none serve eager."""

    def prepare_key(self, max_batch_size: int) -> str:
        """What makes two preparations the same: the weights (the manifest's sha256) and the batch size."""
        sha256 = self.manifest.get("sha256")
        return f"{sha256}/{max_batch_size}" if sha256 else ""

    def forward(self, payloads: list[Any]) -> Sequence[Any]:
        raise NotImplementedError(f"{type(self).__name__} runs on a {self.scheduler} loop, not in batches")

    def warmup(self, max_batch_size: int) -> None:
        raise NotImplementedError


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on a GPU (tensor cores, half the memory) and float32 on the CPU."""
    import torch

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
