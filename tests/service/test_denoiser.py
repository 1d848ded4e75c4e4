"""The denoising loop: requests batched together between steps, the same bytes as alone, deadlines,
cancellation, bounded queue, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from service.engine.batcher import BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull, WorkerFatal
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
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    real_step = runtime.step
    calls = {"n": 0}

    def flaky(x: torch.Tensor, t: list[int], t_next: list[int]) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("boom")
        return real_step(x, t, t_next)

    monkeypatch.setattr(runtime, "step", flaky)

    observer = Observer()

    async def scenario() -> list[Any]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = DenoisingLoop("tiny", runtime, executor, 64, 64, observer)
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
    assert str(failed) == "boom" and isinstance(failed.__cause__, ValueError)  # the step's own error, chained
    assert observer.dropped_counts == {}  # a failed request left the batch as failed, not as cancelled
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "model tiny: a denoising step of 1 rows failed: ValueError('boom')"]
    assert isinstance(refused, ModelUnavailable)


def reference_samples(runtime: DiffusionRuntime, request: SampleRequest) -> np.ndarray:
    """DDIM written out here, step by step, from the runtime's noise, schedule and single update."""
    with torch.no_grad():
        x, schedule = runtime.noise(request), runtime.schedule(request)
        for i, t in enumerate(schedule):
            t_next = schedule[i + 1] if i + 1 < len(schedule) else -1  # -1: to the clean image
            x = runtime.step(x, [t] * request.n, [t_next] * request.n)
        return runtime.pixels(x)


def test_the_loop_samples_what_ddim_written_out_gives(runtime: DiffusionRuntime) -> None:
    requests = [SampleRequest(2, 11, None, 5), SampleRequest(3, 12, None, 2)]
    results = asyncio.run(sample_all(runtime, requests, Observer()))
    for result, request in zip(results, requests, strict=True):
        assert result.seed == request.seed and result.labels == [None] * request.n
        # rows batched with other requests' rows round differently in the last bits (1.8e-5 seen): close, not equal
        reference = reference_samples(runtime, request)
        assert np.abs(result.images - reference).max() < 1e-4


def test_rows_are_admitted_while_they_fit_exactly(runtime: DiffusionRuntime) -> None:
    observer = Observer()
    requests = [SampleRequest(5, 1, None, 2), SampleRequest(3, 2, None, 2), SampleRequest(3, 3, None, 2)]
    asyncio.run(sample_all(runtime, requests, observer, max_active_rows=8))
    assert observer.sizes == [8, 8, 3, 3]  # 5 + 3 fill the 8 rows; the third waits for room
    assert len(observer.waits) == 3 and all(0 <= wait < 5 for wait in observer.waits)
    assert observer.depths[0] in (0, 3) and observer.depths[-1] == 0


def test_the_queue_takes_exactly_max_queue_rows(runtime: DiffusionRuntime) -> None:
    requests = [SampleRequest(8, 1, None, 2), SampleRequest(2, 2, None, 2), SampleRequest(1, 3, None, 2)]
    results = asyncio.run(sample_all(runtime, requests, Observer(), max_active_rows=8, max_queue=10))
    assert isinstance(results[0], Samples) and isinstance(results[1], Samples)  # 8 + 2 = 10 rows: they fit
    assert isinstance(results[2], QueueFull) and results[2].retry_after_s == 1


def test_steps_run_on_the_devices_thread_and_are_timed(runtime: DiffusionRuntime,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    threads, real_step = set(), runtime.step

    def recorded(x: torch.Tensor, t: list[int], t_next: list[int]) -> torch.Tensor:
        threads.add(threading.current_thread().name)
        return real_step(x, t, t_next)

    monkeypatch.setattr(runtime, "step", recorded)
    observer = Observer()
    seconds: list[float] = []
    observer.batch_done = lambda size, took, sources=1: seconds.append(took)  # type: ignore[method-assign]

    async def scenario() -> Any:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="the-device") as executor:
            loop = DenoisingLoop("tiny", runtime, executor, 8, 8, observer)
            loop.start()
            try:
                return await loop.submit(SampleRequest(2, 1, None, 3), time.monotonic() + 30)
            finally:
                await loop.stop()

    assert isinstance(asyncio.run(scenario()), Samples)
    assert {name.split("_")[0] for name in threads} == {"the-device"}
    assert len(seconds) == 3 and all(0 < took < 5 for took in seconds)


def test_a_dead_device_fails_the_model_and_says_so(runtime: DiffusionRuntime, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def dead(x: torch.Tensor, t: list[int], t_next: list[int]) -> torch.Tensor:
        raise WorkerFatal("the device is gone")

    monkeypatch.setattr(runtime, "step", dead)

    async def scenario() -> tuple[list[Any], bool]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = DenoisingLoop("tiny", runtime, executor, 8, 8, Observer())
            loop.start()
            results = await asyncio.gather(loop.submit(SampleRequest(1, 1, None, 3), time.monotonic() + 30),
                                           return_exceptions=True)
            alive = loop.alive
            await loop.stop()
            return results, alive

    [result], alive = asyncio.run(scenario())
    assert isinstance(result, ModelUnavailable) and str(result) == "inference thread died: the device is gone"
    assert not alive
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "model tiny: inference thread died: WorkerFatal('the device is gone')"]


def test_unstarted_and_stopped_loops_say_why(runtime: DiffusionRuntime) -> None:
    async def scenario() -> tuple[str, str]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = DenoisingLoop("tiny", runtime, executor, 8, 8, Observer())
            unstarted = await asyncio.gather(loop.submit(SampleRequest(1, 1, None, 2), time.monotonic() + 30),
                                             return_exceptions=True)
            loop.start()
            waiting = asyncio.ensure_future(loop.submit(SampleRequest(1, 1, None, 1000), time.monotonic() + 30))
            await asyncio.sleep(0.05)
            await loop.stop()
            stopped = await asyncio.gather(waiting, return_exceptions=True)
            return str(unstarted[0]), str(stopped[0])

    assert asyncio.run(scenario()) == ("the model is not started", "the model is shutting down")
