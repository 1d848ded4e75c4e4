"""The generation loop survives a failing step: only that step's generations fail, the next ones run."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

import models
from service.engine.generation_loop import GenerationLoop
from service.outcomes import BatchFailed
from service.runtimes import DecodeLimits
from service.runtimes.language_model import Finished, GenerationRequest, LanguageModelRuntime, Sampling
from tests.conftest import make_lm_artifact


@pytest.fixture
def runtime(tmp_path: Path) -> LanguageModelRuntime:
    module, manifest = models.load(make_lm_artifact(tmp_path, "tiny-gpt"))
    runtime = LanguageModelRuntime(manifest, DecodeLimits(10_000))
    runtime.attach(module, torch.device("cpu"), torch.float32)
    return runtime


def request(runtime: LanguageModelRuntime, tokens: int) -> GenerationRequest:
    return GenerationRequest(runtime.encode_prompt("ab"), tokens, Sampling(0.0), 1, (), time.monotonic() + 30)


async def outcome(loop: GenerationLoop, generation_request: GenerationRequest) -> Any:
    try:
        async for event in loop.submit(generation_request).events():
            if isinstance(event, Finished):
                return event
    except BatchFailed as exc:
        return exc
    return None


def test_a_failing_step_fails_only_its_generations(runtime: LanguageModelRuntime) -> None:
    original, calls = runtime.step, []

    def flaky_step(batch: Any, tokens: list[int]) -> Any:
        calls.append(len(tokens))
        if len(calls) == 1:
            raise RuntimeError("a kernel failed")
        return original(batch, tokens)

    runtime.step = flaky_step  # type: ignore[method-assign]

    async def scenario() -> tuple[list[Any], Any, bool]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = GenerationLoop("tiny-gpt/1", runtime, executor, max_active=4, max_queue=8)
            loop.start()
            first = await asyncio.gather(outcome(loop, request(runtime, 5)), outcome(loop, request(runtime, 5)))
            later = await outcome(loop, request(runtime, 5))
            alive = loop.alive
            await loop.stop()
            return list(first), later, alive

    first, later, alive = asyncio.run(scenario())
    assert all(isinstance(result, BatchFailed) for result in first)  # the step's generations fail
    assert alive and isinstance(later, Finished) and later.tokens == 5  # the loop and the model survive
