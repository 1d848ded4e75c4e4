"""The device scheduler: what the one inference thread runs next, across models (service/engine/device.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from service.engine.batcher import BatchConfig, Batcher
from service.engine.denoising_loop import DenoisingLoop
from service.engine.device import Device
from service.engine.scheduler import Objective
from service.engine.watchdog import Watchdog
from service.runtimes import DecodeLimits, DiffusionRuntime
from service.runtimes.image_generator import SampleRequest
from tests.conftest import make_diffusion_artifact
from tests.service.test_batcher import Observer


@pytest.fixture
def device() -> Device:
    device = Device("test")
    yield device
    device.shutdown(wait=True, cancel_futures=True)


def hold(device: Device, seconds: float) -> tuple[threading.Event, Future[None]]:
    """Keep the device busy until the event is set (at most ``seconds``); returns once the call runs."""
    release, started = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(seconds)

    future = device.submit_at(blocker, deadline=0.0, model="blocker")
    assert started.wait(5)
    return release, future


def test_the_call_with_the_earliest_deadline_runs_first(device: Device) -> None:
    order: list[str] = []
    release, _ = hold(device, 5)
    now = time.monotonic()
    futures = [device.submit_at(order.append, name, deadline=now + due, model=name)
               for name, due in (("late", 3.0), ("early", 1.0), ("middle", 2.0))]
    release.set()
    for future in futures:
        future.result(timeout=5)
    assert order == ["early", "middle", "late"]  # not the order they were handed over


def test_a_call_known_to_be_long_starts_earlier_than_its_deadline_alone_says(device: Device) -> None:
    """Least slack first: the deadline minus what this model's calls of this kind have cost, measured."""
    device.submit_at(time.sleep, 0.2, deadline=0.0, model="slow", kind="forward").result(timeout=5)
    assert device.cost_s("slow", "forward") == pytest.approx(0.2, abs=0.1)
    order: list[str] = []

    def slow_forward(name: str) -> None:
        order.append(name)

    release, _ = hold(device, 5)
    now = time.monotonic()
    quick = device.submit_at(order.append, "quick", deadline=now + 1.0, model="quick")
    slow = device.submit_at(slow_forward, "slow", deadline=now + 1.1, model="slow", kind="forward")
    release.set()
    quick.result(timeout=5), slow.result(timeout=5)
    assert order == ["slow", "quick"]  # due later, but it must start first to end in time


def test_more_urgent_work_runs_between_the_pieces_of_a_long_one(device: Device) -> None:
    order: list[str] = []
    first_piece_runs = threading.Event()

    def piece(index: int) -> int:
        order.append(f"piece {index}")
        if index == 0:
            first_piece_runs.set()
            time.sleep(0.2)
        return index

    futures = device.submit_pieces(piece, [(0,), (1,), (2,)], deadline=time.monotonic() + 30, model="diffusion")
    assert first_piece_runs.wait(5)
    urgent = device.submit_at(order.append, "classifier", deadline=time.monotonic() + 0.1, model="classifier")
    assert [future.result(timeout=5) for future in futures] == [0, 1, 2]
    urgent.result(timeout=5)
    assert order == ["piece 0", "classifier", "piece 1", "piece 2"]


def test_each_call_is_accounted_to_its_model(device: Device) -> None:
    held: list[float] = []
    device.submit_at(time.sleep, 0.1, deadline=0.0, model="m", account=held.append).result(timeout=5)
    assert len(held) == 1 and 0.09 <= held[0] < 1.0


def test_after_shutdown_nothing_is_taken_and_what_waited_is_cancelled() -> None:
    device = Device("test")
    release, running = hold(device, 5)
    waiting = device.submit_at(int, deadline=1.0, model="m")
    device.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled()
    with pytest.raises(RuntimeError, match="shutdown"):
        device.submit_at(int, deadline=1.0, model="m")
    release.set()
    running.result(timeout=5)  # the running call finishes


def test_a_schedulers_call_runs_under_the_watchdog() -> None:
    hung: list[str] = []
    watchdog = Watchdog(floor_s=0.2, multiple=10, on_hang=hung.append)
    watchdog.start()
    device = Device("test", watchdog)
    try:
        device.submit_at(time.sleep, 0.5, deadline=0.0, model="tiny/1", kind="_timed_forward").result(timeout=5)
        assert hung and hung[0].startswith("tiny/1 _timed_forward has run")
    finally:
        watchdog.stop()
        device.shutdown()


@pytest.fixture
def diffusion(tmp_path: Path) -> DiffusionRuntime:
    module, manifest = models.load(make_diffusion_artifact(tmp_path))
    runtime = DiffusionRuntime(manifest, DecodeLimits(10_000))
    runtime.attach(module, torch.device("cpu"), torch.float32)
    runtime.warmup(4)  # four rows per forward: a step over 16 rows is four pieces
    return runtime


def test_a_classifier_waits_for_one_denoising_piece_not_a_whole_step(device: Device,
                                                                     diffusion: DiffusionRuntime) -> None:
    """The device's log of calls: while a diffusion model samples 16 rows (four forwards a step), a classifier's
    batches run between the pieces of a step; and the samples are the bytes of an uncut run."""
    calls: list[tuple[str, float, float]] = []
    step = diffusion.step

    def logged_step(x: torch.Tensor, t: list[int], t_next: list[int]) -> torch.Tensor:
        started = time.monotonic()
        out = step(x, t, t_next)
        time.sleep(0.02)  # a forward as long as a real model's: the tiny one's takes about a millisecond
        calls.append(("piece", started, time.monotonic()))
        return out

    def classify(payloads: list[int]) -> list[int]:
        started = time.monotonic()
        calls.append(("classifier", started, time.monotonic()))
        return payloads

    async def scenario() -> tuple[np.ndarray, list[float]]:
        diffusion.step = logged_step  # type: ignore[method-assign]
        denoiser = DenoisingLoop("ddpm/1", diffusion, device, 64, 64, Observer(), Objective(30.0))
        classifier = Batcher("cnn/1", classify, BatchConfig(8, 0.001, 64), device, Observer(), Objective(0.1))
        denoiser.start(), classifier.start()
        sampling = asyncio.create_task(denoiser.submit(SampleRequest(16, 7, None, 6), time.monotonic() + 60))
        waits = []
        while not sampling.done():
            sent = time.monotonic()
            await classifier.submit([1], time.monotonic() + 10)
            waits.append(time.monotonic() - sent)
            await asyncio.sleep(0.003)
        samples = (await sampling).images
        await denoiser.stop(), await classifier.stop()
        return samples, waits

    samples, waits = asyncio.run(scenario())
    pieces = [(start, end) for kind, start, end in calls if kind == "piece"]
    assert len(pieces) == 6 * 4
    gaps = [(pieces[i][1], pieces[i + 1][0]) for i in range(len(pieces) - 1) if i % 4 != 3]  # inside a step
    between = [start for kind, start, _ in calls if kind == "classifier" and any(a <= start < b for a, b in gaps)]
    assert between, "no classifier batch ran inside a step, between two of its pieces"
    longest_piece = max(end - start for start, end in pieces)
    assert len(waits) > 6 and sorted(waits)[-2] < 2 * longest_piece  # (a whole step: 4 pieces)
    diffusion.step = step  # type: ignore[method-assign]
    # uncut, on the same thread (its torch thread count decides the order of a convolution's sums)
    alone = device.submit(diffusion.forward, [SampleRequest(16, 7, None, 6)]).result(timeout=30)[0].images
    assert np.array_equal(samples, alone)


def test_a_second_lane_runs_short_calls_of_other_models_beside_a_long_one() -> None:
    device = Device("test", lanes=2)
    try:
        for model in ("light", "heavy"):  # their costs, measured
            device.submit_at(time.sleep, 0.001 if model == "light" else 0.05, deadline=0.0, model=model,
                             kind="forward").result(timeout=5)
        release, long_call = hold(device, 5)  # lane 0 is busy with a long call of "blocker"
        now = time.monotonic()
        short = device.submit_at(time.sleep, 0.001, deadline=now + 1, model="light", kind="forward")
        short.result(timeout=2)  # done while the long call still runs: on the second lane
        assert not long_call.done()
        heavy = device.submit_at(time.sleep, 0.05, deadline=now + 1, model="heavy", kind="forward")
        same_model = device.submit_at(int, deadline=now, model="blocker", kind="forward")
        time.sleep(0.2)
        assert not heavy.done() and not same_model.done()  # not short; and a model's calls never overlap
        release.set()
        heavy.result(timeout=5), same_model.result(timeout=5)
    finally:
        device.shutdown()


def test_a_usually_short_call_that_runs_long_gets_the_second_lane_beside_it() -> None:
    """A decoding step is short, but one that refills its rows' context is not: the second lane takes the
    short work waiting behind it once it has run past SHORT_S."""
    from service.engine.device import SHORT_S

    device = Device("test", lanes=2)
    try:
        for model in ("light", "decoder"):
            device.submit_at(time.sleep, 0.001, deadline=0.0, model=model, kind="step").result(timeout=5)
        release, started = threading.Event(), threading.Event()

        def long_step() -> None:  # the decoder's usual kind of call, this time long
            started.set()
            release.wait(5)

        running = device.submit_at(long_step, deadline=0.0, model="decoder", kind="step")
        assert started.wait(5)
        sent = time.monotonic()
        short = device.submit_at(time.sleep, 0.001, deadline=sent + 1, model="light", kind="step")
        short.result(timeout=2)
        assert time.monotonic() - sent < SHORT_S + 0.2 and not running.done()  # beside it, not after it
        release.set()
        running.result(timeout=5)
    finally:
        device.shutdown()
