"""Runtime for character language models: prompt encoding, prefill, one batched decoding step, sampling.

Every method that touches torch runs in the device's inference worker (called by service/decoder.py).
A batch's state is the GPT's key/value cache (with each row's length) or the LSTM's (h, c); rows
join after their own prefill and leave between steps, so the batch changes shape only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.errors import InputError
from service.runtimes.base import DecodeLimits, Runtime, TensorSpec
from service.schemas import GenerateRequest

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    """What the front-end sends the decoding loop: the prompt's ids and how to sample."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    seed: int | None
    stop: tuple[str, ...]
    deadline: float  # time.monotonic(): it must be admitted to the running batch before this


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "length" | "stop"
    tokens: int
    prompt_tokens: int


Event = Piece | Finished


def sample(logits: torch.Tensor, samplings: list[Sampling], generators: list[torch.Generator]) -> list[int]:
    """One token per row of logits [N, V], each row with its own settings and random generator.

    Greedy at temperature 0, else top-k and nucleus (top-p) filtering, then inverse-CDF sampling with
    one uniform draw from the row's own generator, so a seeded request gets the same text whatever
    else shares its batch. Vectorised over rows: one pass per decoding step, not one per sequence.
    """
    import torch

    logits = logits.float()
    vocab = logits.shape[1]
    temperature = torch.tensor([s.temperature for s in samplings], device=logits.device)
    scaled = logits / temperature.clamp(min=1e-6)[:, None]
    if any(s.top_k is not None and s.top_k < vocab for s in samplings):
        k = torch.tensor([min(s.top_k or vocab, vocab) for s in samplings], device=logits.device)
        kth = scaled.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # [N, 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if any(s.top_p < 1.0 for s in samplings):
        top_p = torch.tensor([s.top_p for s in samplings], device=logits.device)
        ordered, order = scaled.sort(dim=-1, descending=True)
        probabilities = torch.softmax(ordered, dim=-1)
        drop = probabilities.cumsum(-1) - probabilities >= top_p[:, None]  # keep the first token past top_p
        scaled = scaled.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    cdf = torch.softmax(scaled, dim=-1).cumsum(-1)
    draws = torch.stack([torch.rand((), generator=g) for g in generators]).to(logits.device)
    sampled = torch.searchsorted(cdf, draws[:, None]).clamp(max=vocab - 1).flatten()
    chosen = torch.where(temperature == 0, logits.argmax(-1), sampled)
    return [int(token) for token in chosen.tolist()]


class LanguageModelRuntime(Runtime):
    task = "text-generation"
    scheduler = "generation"
    parameters = GenerateRequest
    payload_type = GenerationRequest

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        super().__init__(manifest, limits, tokenizer)
        self.vocab: list[str] = list(manifest["vocab"])
        self.index = {char: i for i, char in enumerate(self.vocab)}
        self.family = manifest["architecture"]
        self.context: int | None = manifest["config"].get("block_size") if self.family == "gpt" else None
        self.inputs = [TensorSpec("prompt", "BYTES", [1])]
        self.outputs = [TensorSpec("text", "BYTES", [1])]

    # -- text <-> ids (event loop or threads: no torch) --------------------------------------
    def encode_prompt(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.index})
        if unknown:
            raise InputError(None, f"prompt has characters outside the model's vocabulary: {''.join(unknown)!r}")
        return [self.index[c] for c in text] or [self.index.get("\n", 0)]

    def token_text(self, token: int) -> str:
        return self.vocab[token]

    # -- state (inference worker) ------------------------------------------------------------
    def attach(self, module: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().attach(module, device, dtype)
        if self.family == "gpt":
            from models.gpt import CachedStep

            self.prepared = CachedStep(self.module)  # the step's forward: logits only, the cache updated in place

    def prepare_forward(self, max_batch_size: int) -> None:
        """The decoding step (one token per row, with the cache), checked at 1, 3 and ``max_batch_size`` rows
        at random lengths and timed at 16 rows. Prefills stay eager: they run once per prompt."""
        import torch

        from service.engine.prepare import prepare

        generator = torch.Generator().manual_seed(0)

        def inputs(rows: int) -> tuple[Any, ...]:
            ids = torch.randint(0, len(self.vocab), (rows, 1), generator=generator).to(self.device)
            if self.family == "gpt":
                cache = [tuple(torch.randn(z.shape, generator=generator).to(z) for z in layer)
                         for layer in self.module.empty_cache(rows)]
                context = int(self.context or 1)
                lengths = torch.randint(0, context - 1, (rows,), generator=generator).to(self.device)
                return ids, cache, lengths
            layers, hidden = self.module.config.layers, self.module.config.hidden
            state = tuple(torch.randn(layers, rows, hidden, generator=generator).to(self.device) for _ in range(2))
            return ids, state

        checks = [inputs(1), inputs(3), inputs(max_batch_size)]
        self.prepared = prepare(str(self.manifest.get("name")), self.prepared, checks, inputs(min(16, max_batch_size)),
                               self.device, self.dtype, key=self.prepare_key(max_batch_size))
        self.forward_kind = self.prepared.description

    def prefill(self, ids: list[int]) -> tuple[Any, torch.Tensor]:
        """Run one prompt alone: its row state and the logits [V] for the next token."""
        return self.prefill_many([ids])[0]

    def prefill_many(self, prompts: list[list[int]]) -> list[tuple[Any, torch.Tensor]]:
        """Each prompt's row state and next-token logits [V]; prompts of one length share one forward."""
        import torch

        if self.context is not None:
            prompts = [ids[-(self.context - 1):] for ids in prompts]  # a GPT sees at most its context: keep the end
        by_length: dict[int, list[int]] = {}
        for index, ids in enumerate(prompts):
            by_length.setdefault(len(ids), []).append(index)
        results: list[tuple[Any, torch.Tensor]] = [None] * len(prompts)  # type: ignore[list-item]
        with torch.inference_mode():
            for indices in by_length.values():
                tokens = torch.tensor([prompts[i] for i in indices], device=self.device)  # [n, T]
                for index, result in zip(indices, self._prefill_rows(tokens), strict=True):
                    results[index] = result
        return results

    def _prefill_rows(self, tokens: torch.Tensor) -> list[tuple[Any, torch.Tensor]]:
        """Prompts of one length [n, T]: per row, its state (a batch of one) and logits [V]."""
        import torch

        n, length = tokens.shape
        if self.family == "gpt":
            logits, layers = self.module(tokens)
            cache = self.module.empty_cache(n)
            for (keys, values), (new_keys, new_values) in zip(cache, layers, strict=True):
                keys[:, :, :length] = new_keys
                values[:, :, :length] = new_values
            row_length = torch.tensor([length], device=self.device)
            return [(([(k[i:i + 1], v[i:i + 1]) for k, v in cache], row_length), logits[i, -1]) for i in range(n)]
        logits, (hidden, cell) = self.module(tokens)
        return [((hidden[:, i:i + 1], cell[:, i:i + 1]), logits[i, -1]) for i in range(n)]

    def join(self, batch: Any, rows: list[Any]) -> Any:
        """The batch state with ``rows`` appended (batch may be None)."""
        import torch

        parts = ([batch] if batch is not None else []) + rows
        if self.family == "gpt":
            cache = [(torch.cat([p[0][layer][0] for p in parts]), torch.cat([p[0][layer][1] for p in parts]))
                     for layer in range(len(parts[0][0]))]
            return cache, torch.cat([p[1] for p in parts])
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def keep(self, batch: Any, rows: list[int]) -> Any:
        """The batch state with only ``rows`` (None when empty)."""
        import torch

        if not rows:
            return None
        index = torch.tensor(rows, device=self.device)
        if self.family == "gpt":
            cache, lengths = batch
            return [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache], lengths[index]
        return batch[0].index_select(1, index), batch[1].index_select(1, index)

    def refill_ids(self, history: list[int]) -> list[int]:
        """What a full GPT row is refilled from: the second half of its context, without the pending token
        (the next step feeds it)."""
        return history[-(self.context or 2) // 2 - 1:-1]

    def full_rows(self, batch: Any) -> list[int]:
        """Rows whose context is full (a GPT's next position would be past its block size)."""
        import torch

        if self.family != "gpt" or batch is None:
            return []
        return [int(i) for i in torch.nonzero(batch[1] >= self.context).flatten()]

    def replace_row(self, batch: Any, row: int, state: Any) -> Any:
        if self.family == "gpt":
            (cache, lengths), (row_cache, row_length) = batch, state
            for (keys, values), (row_keys, row_values) in zip(cache, row_cache, strict=True):
                keys[row], values[row] = row_keys[0], row_values[0]
            lengths[row] = row_length[0]
            return batch
        batch[0][:, row], batch[1][:, row] = state[0][:, 0], state[1][:, 0]
        return batch

    def step(self, batch: Any, tokens: list[int]) -> tuple[Any, torch.Tensor]:
        """Feed one token per row: the advanced state and logits [N, V]."""
        import torch

        with torch.inference_mode():
            return self._step(batch, tokens)

    def _step(self, batch: Any, tokens: list[int]) -> tuple[Any, torch.Tensor]:
        import torch

        ids = torch.tensor(tokens, device=self.device)[:, None]
        if self.family == "gpt":
            cache, lengths = batch
            logits = self.prepared(ids, cache, lengths)  # writes the new keys and values into the cache
            return (cache, lengths + 1), logits[:, -1]
        logits, state = self.prepared(ids, batch)
        return state, logits[:, -1]

    def warmup(self, max_batch_size: int) -> None:
        state, _ = self.prefill([0] * 8)
        batch = self.join(None, [state] * min(max_batch_size, 4))
        self.step(batch, [0] * min(max_batch_size, 4))
