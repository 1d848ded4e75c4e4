"""The denoising loop: requests batched together between steps, the same bytes as alone, deadlines,
cancellation, bounded queue, failures."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from service.engine.batcher import BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull
from service.engine.denoising_loop import DenoisingLoop
from service.runtimes import DecodeLimits, DiffusionRuntime
from service.runtimes.image_generator import SampleRequest, Samples
from tests.conftest import make_diffusion_artifact
from tests.service.test_batcher import Observer


@pytest.fixture
def runtime(tmp_path: Path) -> DiffusionRuntime:
    module, manifest = models.load(make_diffusion_artifact(tmp_path))
    runtime = DiffusionRuntime(manifest, DecodeLimits(10_000))
    runtime.attach(module, torch.device("cpu"), torch.float32)
    runtime.warmup(8)  # eight rows per forward
    return runtime


async def sample_all(runtime: DiffusionRuntime, requests: list[SampleRequest], observer: Observer,
                     max_active_rows: int = 16, max_queue: int = 64, one_by_one: bool = False) -> list[Any]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        loop = DenoisingLoop("tiny", runtime, executor, max_active_rows, max_queue, observer)
        loop.start()
        deadline = time.monotonic() + 30
        try:
            if one_by_one:
                return [await loop.submit(r, deadline) for r in requests]
            return await asyncio.gather(*(loop.submit(r, deadline) for r in requests), return_exceptions=True)
        finally:
            await loop.stop()


def test_concurrent_requests_share_steps_and_give_the_bytes_of_solo_runs(runtime: DiffusionRuntime) -> None:
    requests = [SampleRequest(3, 1, None, 4), SampleRequest(5, 2, None, 7), SampleRequest(2, 3, None, 2),
                SampleRequest(4, 4, None, None)]
    observer = Observer()
    together = asyncio.run(sample_all(runtime, requests, observer))
    alone = asyncio.run(sample_all(runtime, requests, Observer(), one_by_one=True))
    for batched, solo, request in zip(together, alone, requests, strict=True):
        assert isinstance(batched, Samples) and batched.images.shape == (request.n, 28, 28)
        assert np.array_equal(batched.images, solo.images)  # bit for bit, whatever shared its steps
    assert max(observer.sizes) == 14  # all four requests advanced in one step
    assert len(observer.sizes) == 7  # the longest schedule; shorter ones left early


def test_rows_beyond_the_limit_wait_and_a_larger_request_runs_alone(runtime: DiffusionRuntime) -> None:
    observer = Observer()
    requests = [SampleRequest(6, 1, None, 3), SampleRequest(6, 2, None, 3), SampleRequest(20, 3, None, 2)]
    results = asyncio.run(sample_all(runtime, requests, observer, max_active_rows=10))
    assert all(isinstance(r, Samples) for r in results)
    assert observer.sizes == [6, 6, 6, 6, 6, 6, 20, 20]


def test_an_expired_request_leaves_between_steps_and_the_others_finish(runtime: DiffusionRuntime) -> None:
    async def scenario() -> list[Any]:
        observer = Observer()
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = DenoisingLoop("tiny", runtime, executor, 64, 64, observer)
            loop.start()
            slow = loop.submit(SampleRequest(2, 1, None, 1000), time.monotonic() + 0.3)
            quick = loop.submit(SampleRequest(2, 2, None, 3), time.monotonic() + 30)
            results = await asyncio.gather(slow, quick, return_exceptions=True)
            await loop.stop()
        return [*results, observer]

    slow, quick, observer = asyncio.run(scenario())
    assert isinstance(slow, DeadlineExceeded) and isinstance(quick, Samples)
    assert observer.dropped_counts == {"deadline": 2}
    assert len(observer.sizes) < 1000  # it did not hold the device for its whole schedule


def test_a_cancelled_request_is_dropped_before_its_next_step(runtime: DiffusionRuntime) -> None:
    async def scenario() -> Observer:
        observer = Observer()
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = DenoisingLoop("tiny", runtime, executor, 64, 64, observer)
            loop.start()
            task = asyncio.ensure_future(loop.submit(SampleRequest(2, 1, None, 1000), time.monotonic() + 30))
            await asyncio.sleep(0.1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            steps_at_cancel = len(observer.sizes)
            await asyncio.sleep(0.1)
            assert len(observer.sizes) <= steps_at_cancel + 1
            await loop.stop()
        return observer

    observer = asyncio.run(scenario())
    assert observer.dropped_counts == {"cancelled": 2}


def test_a_full_queue_refuses_at_once(runtime: DiffusionRuntime) -> None:
    """Refused before any denoising step has run, not after waiting for room; what fits is sampled."""
    observer = Observer()

    async def scenario() -> list[tuple[Any, int]]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = DenoisingLoop("tiny", runtime, executor, 8, 10, observer)
            loop.start()

            async def one(request: SampleRequest) -> tuple[Any, int]:
                try:
                    result: Any = await loop.submit(request, time.monotonic() + 30)
                except QueueFull as refused:
                    result = refused
                return result, len(observer.sizes)  # the steps run when its answer came

            try:
                return await asyncio.gather(*(one(SampleRequest(8, seed, None, 50)) for seed in range(4)))
            finally:
                await loop.stop()

    outcomes = asyncio.run(scenario())
    assert [type(result) for result, _ in outcomes] == [Samples, QueueFull, QueueFull, QueueFull]  # 8 of 10 rows
    assert [steps for result, steps in outcomes if isinstance(result, QueueFull)] == [0, 0, 0]
    assert outcomes[0][1] == 50


def test_a_failing_step_fails_its_requests_and_the_loop_goes_on(runtime: DiffusionRuntime,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = runtime.step
    calls = {"n": 0}

    def flaky(x: torch.Tensor, t: list[int], t_next: list[int]) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("boom")
        return real_step(x, t, t_next)

    monkeypatch.setattr(runtime, "step", flaky)

    async def scenario() -> list[Any]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = DenoisingLoop("tiny", runtime, executor, 64, 64, Observer())
            loop.start()
            first = await asyncio.gather(loop.submit(SampleRequest(1, 1, None, 3), time.monotonic() + 30),
                                         return_exceptions=True)
            second = await loop.submit(SampleRequest(1, 2, None, 3), time.monotonic() + 30)
            await loop.stop()
            after_stop = await asyncio.gather(loop.submit(SampleRequest(1, 3, None, 3), time.monotonic() + 30),
                                              return_exceptions=True)
        return [*first, second, *after_stop]

    failed, succeeded, refused = asyncio.run(scenario())
    assert isinstance(failed, BatchFailed) and isinstance(succeeded, Samples)
    assert isinstance(refused, ModelUnavailable)
