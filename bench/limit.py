"""The in-process limit: how many images per second mnist-cnn's forward alone does, eager and prepared
(as the engine prepares it), at the server's batch size and torch threads. The service's req/s at a
concurrency, divided by it, says how much of the model's own speed the HTTP path keeps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

import models
from service.engine.prepare import prepare_image_forward


def images_per_second(forward: object, batch: torch.Tensor, seconds: float) -> float:
    with torch.no_grad():
        for _ in range(5):
            forward(batch)  # type: ignore[operator]
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            forward(batch)  # type: ignore[operator]
            done += len(batch)
    return done / (time.perf_counter() - started)


def measure(weights: Path, torch_threads: int, batch_size: int, seconds: float = 3.0) -> dict[str, float | str]:
    """img/s of the eager and the prepared forward on [batch_size, 1, 28, 28]."""
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        module, _ = models.load(weights)
        prepared = prepare_image_forward(module, (1, 28, 28), torch.device("cpu"), torch.float32, batch_size,
                                         "limit")
        batch = torch.rand(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        return {"batch_size": batch_size, "eager_img_s": images_per_second(module, batch, seconds),
                "prepared_img_s": images_per_second(prepared, batch, seconds), "prepared_kind": prepared.kind}
    finally:
        torch.set_num_threads(threads)


def decoding_tokens_per_second(weights: Path, torch_threads: int, rows: int, tokens: int, max_batch_size: int,
                               seconds: float = 2.0) -> float:
    """Tokens/s of a language model's own decoding, ``rows`` sequences of ``tokens`` tokens at once.

    The runtime is built, attached and prepared as the engine does, and does the model's share of what
    the service does for the same generations: one batched prefill of the prompts, then one step per
    token with the key/value cache, and (a GPT past its context) the same batched refill from the end of
    each row. Not included: sampling, detokenizing, stop strings and every hand-off, which is the
    serving overhead this limit exposes.
    """
    from service.serving import build_runtime
    from service.settings import Settings

    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        module, manifest = models.load(weights)
        runtime = build_runtime(manifest, weights, Settings())
        runtime.attach(module, torch.device("cpu"), torch.float32)
        runtime.prepare_forward(max_batch_size)  # as the service's engine prepares it, whatever the rows
        prompt = runtime.encode_prompt("ROMEO:\n")
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            done += _generate(runtime, prompt, rows, tokens)
        return done / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()  # as the engine's loop runs it
def _generate(runtime: Any, prompt: list[int], rows: int, tokens: int) -> int:
    """The model's work for ``rows`` sequences of ``tokens`` tokens: the number of tokens."""
    histories = [list(prompt) for _ in range(rows)]
    batch = runtime.join(None, [state for state, _ in runtime.prefill_many(histories)])
    for _ in range(tokens - 1):
        full = runtime.full_rows(batch)
        refills = runtime.prefill_many([runtime.refill_ids(histories[row]) for row in full])
        for row, (state, _) in zip(full, refills, strict=True):
            batch = runtime.replace_row(batch, row, state)
        batch, _ = runtime.step(batch, [0] * rows)
        for history in histories:
            history.append(0)
    return rows * tokens
