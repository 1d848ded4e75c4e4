"""Runtimes for text models: strings -> token ids (truncated at the model's maximum) -> length-bucketed,
padded batches -> class probabilities (classifiers) or sentence embeddings (embedders)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import InputError
from service.runtimes import v2
from service.runtimes.base import DecodeLimits, Runtime, TensorSpec, classification_item
from service.schemas import TextParameters

if TYPE_CHECKING:
    import torch

BUCKET_GROWTH = 1.5  # a new bucket starts where lengths exceed 1.5x the bucket's shortest


@dataclass(frozen=True)
class TextItem:
    ids: list[int]
    truncated: bool


@dataclass(frozen=True)
class TextResult:
    vector: np.ndarray  # class probabilities [C] or an embedding [D]
    truncated: bool
    tokens: int


def length_buckets(lengths: Sequence[int], growth: float = BUCKET_GROWTH) -> list[list[int]]:
    """Indices grouped so that each padded group wastes little: sort by length, cut where it grows."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    for index in order:
        if buckets and lengths[index] <= growth * lengths[buckets[-1][0]]:
            buckets[-1].append(index)
        else:
            buckets.append([index])
    return buckets


class TextRuntime(Runtime):
    """Shared by the text classifier and embedder: tokenization, bucketing, padding, the forward."""

    body = "text"
    parameters = TextParameters
    payload_type = TextItem
    result_type = TextResult

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        if tokenizer is None:
            raise ValueError(f"{manifest['name']}: a text model needs a tokenizer in its artifact")
        super().__init__(manifest, limits, tokenizer)
        self.max_tokens = int(manifest.get("preprocessing", {}).get("max_tokens", 128))
        self.pad_id = int(manifest["config"].get("pad_id", 0))
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(self.max_tokens)  # the tokenizer keeps [SEP] when it truncates
        self.inputs = [TensorSpec("text", "BYTES", [-1])]

    def decode(self, raw: Any, index: int, params: Any) -> TextItem:
        return self.decode_text(raw, index)

    def v2_items(self, tensors: dict[str, np.ndarray], parameters: dict[str, Any],
                 max_inputs: int) -> tuple[list[Any], Any]:
        v2.check_names(tensors, ["text"], str(self.manifest.get("name")))
        return v2.bytes_items(tensors["text"], "text", max_inputs), None

    def v2_decode(self, raw: Any, index: int, params: Any) -> TextItem:
        return self.decode_bytes(raw, index)

    def decode_text(self, text: Any, index: int) -> TextItem:
        if not isinstance(text, str):
            raise InputError(index, f"must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(index, "empty text")
        encoding = self.tokenizer.encode(text)
        return TextItem(encoding.ids or [self.pad_id + 1], truncated=bool(encoding.overflowing))

    def decode_bytes(self, raw: Any, index: int) -> TextItem:
        """OIP V2 BYTES elements arrive as bytes: UTF-8 text."""
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(index, "text is not valid UTF-8") from None
        return self.decode_text(raw, index)

    def prepare_forward(self, max_batch_size: int) -> None:
        """Checked at three shapes, each of another length and row count than the batch of 32-token inputs it
        is traced and timed on, so a shape baked into the trace fails the check."""
        import torch

        from service.engine.prepare import prepare

        generator = torch.Generator().manual_seed(0)
        vocab = int(self.manifest["config"]["vocab_size"])

        def inputs(rows: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
            lengths = torch.randint(1, tokens + 1, (rows,), generator=generator)
            lengths[0] = tokens
            ids = torch.randint(self.pad_id + 1, vocab, (rows, tokens), generator=generator)
            ids[torch.arange(tokens)[None, :] >= lengths[:, None]] = self.pad_id
            return ids.to(self.device), lengths.to(self.device)

        checks = [inputs(rows, min(tokens, self.max_tokens)) for rows, tokens in ((1, 6), (3, 19), (5, 48))]
        timing = inputs(min(8, max_batch_size), min(32, self.max_tokens))  # a MiniLM's full batch takes seconds
        self.prepared = prepare(str(self.manifest.get("name")), self.module, checks, timing, self.device, self.dtype,
                                key=self.prepare_key(max_batch_size))
        self.forward_kind = self.prepared.description

    def run_module(self, items: list[TextItem]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            return self._run_buckets(items)

    def _run_buckets(self, items: list[TextItem]) -> list[np.ndarray]:
        import torch

        outputs: list[np.ndarray] = [np.empty(0)] * len(items)
        for bucket in length_buckets([len(item.ids) for item in items]):
            longest = max(len(items[i].ids) for i in bucket)
            ids = torch.full((len(bucket), longest), self.pad_id, dtype=torch.long)
            for row, i in enumerate(bucket):
                ids[row, : len(items[i].ids)] = torch.tensor(items[i].ids)
            lengths = torch.tensor([len(items[i].ids) for i in bucket])
            result = self.prepared(ids.to(self.device), lengths.to(self.device)).float()  # [B, C] or [B, D]
            for row, value in zip(bucket, self.postprocess(result).cpu().numpy(), strict=True):
                outputs[row] = value
        return outputs

    def postprocess(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def forward(self, payloads: list[TextItem]) -> Sequence[TextResult]:
        return [TextResult(vector, item.truncated, len(item.ids))
                for vector, item in zip(self.run_module(payloads), payloads, strict=True)]

    def warmup(self, max_batch_size: int) -> None:
        self.forward([TextItem([self.pad_id + 1] * 8, False)] * max_batch_size)
        self.forward([TextItem([self.pad_id + 1] * self.max_tokens, False)])


class TextClassifierRuntime(TextRuntime):
    task = "text-classification"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outputs = [TensorSpec("probabilities", "FP32", [-1, len(self.labels or [])]),
                        TensorSpec("label", "BYTES", [-1])]

    def postprocess(self, output: torch.Tensor) -> torch.Tensor:
        return output.softmax(dim=-1)

    def encode(self, result: TextResult, params: Any) -> dict[str, Any]:
        return {**classification_item(result.vector, self.labels or [], params.top_k), "truncated": result.truncated}

    def v2_outputs(self, results: list[TextResult]) -> dict[str, np.ndarray]:
        probabilities = np.stack([result.vector for result in results]).astype(np.float32)
        return {"probabilities": probabilities, "label": v2.labels_tensor(probabilities, self.labels or [])}


class TextEmbedderRuntime(TextRuntime):
    task = "text-embedding"

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        super().__init__(manifest, limits, tokenizer)
        self.dimensions = int(manifest["config"]["dim"])
        self.outputs = [TensorSpec("embedding", "FP32", [-1, self.dimensions])]

    def encode(self, result: TextResult, params: Any = None) -> dict[str, Any]:
        return {"embedding": result.vector.astype(np.float32).tolist(), "truncated": result.truncated}

    def v2_outputs(self, results: list[TextResult]) -> dict[str, np.ndarray]:
        return {"embedding": np.stack([result.vector for result in results]).astype(np.float32)}
