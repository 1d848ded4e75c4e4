"""The generation loop survives a failing step: only that step's generations fail, the next ones run."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

import models
from service.engine.generation_loop import GenerationLoop
from service.outcomes import BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull
from service.runtimes import DecodeLimits
from service.runtimes.language_model import Finished, GenerationRequest, LanguageModelRuntime, Piece, Sampling
from tests.conftest import make_lm_artifact


def language_model(tmp_path: Path, name: str) -> LanguageModelRuntime:
    module, manifest = models.load(make_lm_artifact(tmp_path, name))
    runtime = LanguageModelRuntime(manifest, DecodeLimits(10_000))
    runtime.attach(module, torch.device("cpu"), torch.float32)
    return runtime


@pytest.fixture
def runtime(tmp_path: Path) -> LanguageModelRuntime:
    return language_model(tmp_path, "tiny-gpt")


async def outcome(loop: GenerationLoop, generation_request: GenerationRequest) -> Any:
    """How one generation ended: its Finished, or the exception that ended it."""
    return (await events_of(loop, generation_request))[-1]


def test_a_failing_step_fails_only_its_generations(runtime: LanguageModelRuntime,
                                                   caplog: pytest.LogCaptureFixture) -> None:
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
            five = ask(runtime, "ab", 5, temperature=0.0)
            first = await asyncio.gather(outcome(loop, five), outcome(loop, five))
            later = await outcome(loop, five)
            alive = loop.alive
            await loop.stop()
            return list(first), later, alive

    first, later, alive = asyncio.run(scenario())
    assert all(isinstance(result, BatchFailed) for result in first)  # the step's generations fail
    assert str(first[0]) == "a decoding step failed: RuntimeError('a kernel failed')"
    assert isinstance(first[0].__cause__, RuntimeError) and first[0] is not first[1]
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        "model tiny-gpt/1: a decoding step of 2 generations failed: RuntimeError('a kernel failed')"]
    assert alive and isinstance(later, Finished) and later.tokens == 5  # the loop and the model survive


# -- the loop's promises, on both language-model families ----------------------------------------------------
FAMILIES = ["tiny-gpt", "tiny-char-lstm"]


class Recorder:
    """The loop's figures (service.metrics.SchedulerMetrics), kept for the assertions."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int]] = []  # (running, waiting, prompt tokens) per step
        self.first_tokens = 0
        self.done: list[int] = []
        self.waits: list[float] = []
        self.sizes: list[int] = []
        self.ttfts: list[float] = []

    def batch_done(self, size: int, seconds: float, sources: int = 1) -> None:
        self.sizes.append(size)

    def generation_step(self, running: int, waiting: int, prompt_tokens: int) -> None:
        self.steps.append((running, waiting, prompt_tokens))

    def first_token(self, seconds: float) -> None:
        assert 0 <= seconds < 60
        self.first_tokens += 1
        self.ttfts.append(seconds)

    def generation_done(self, tokens: int, seconds_after_first: float) -> None:
        assert 0 <= seconds_after_first < 60
        self.done.append(tokens)

    def device_time(self, seconds: float) -> None:
        self.device_seconds = getattr(self, "device_seconds", 0.0) + seconds

    def objective(self, total: int, missed: int) -> None:
        self.tokens_measured = getattr(self, "tokens_measured", 0) + total

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(params=FAMILIES)
def lm(request: pytest.FixtureRequest, tmp_path: Path) -> LanguageModelRuntime:
    return language_model(tmp_path, request.param)


def ask(runtime: LanguageModelRuntime, prompt: str, tokens: int, *, seed: int | None = 1, temperature: float = 1.0,
        stop: tuple[str, ...] = (), deadline_s: float = 30) -> GenerationRequest:
    return GenerationRequest(runtime.encode_prompt(prompt), tokens, Sampling(temperature), seed, stop,
                             time.monotonic() + deadline_s)


async def events_of(loop: GenerationLoop, generation_request: GenerationRequest) -> list[Any]:
    """Every event of one generation (the pieces, then Finished), or the exception that ended it."""
    seen: list[Any] = []
    try:
        async for event in loop.submit(generation_request).events():
            seen.append(event)
    except Exception as exc:
        seen.append(exc)
    return seen


def run(runtime: LanguageModelRuntime, scenario: Any, max_active: int = 8, max_queue: int = 16) -> Any:
    async def main() -> Any:
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = GenerationLoop("tiny/1", runtime, executor, max_active, max_queue, Recorder())  # type: ignore[arg-type]
            loop.start()
            try:
                return await scenario(loop)
            finally:
                await loop.stop()

    return asyncio.run(main())


def text_of(events: list[Any]) -> str:
    return "".join(event.text for event in events if isinstance(event, Piece))


def test_generations_decoded_together_equal_their_solo_runs_event_for_event(lm: LanguageModelRuntime) -> None:
    """Different prompts, lengths, settings and seeds share the steps (and a GPT refills its 24-token context
    past its end): each gets the very events it gets alone, one piece per token, then its Finished."""
    asks = [ask(lm, "the ", 40, seed=1), ask(lm, "a", 7, seed=2, temperature=0.0), ask(lm, "Zz, ", 30, seed=None,
            temperature=0.0), ask(lm, "hello world", 1, seed=4), ask(lm, "x" * 20, 33, seed=5)]

    async def together(loop: GenerationLoop) -> list[list[Any]]:
        return list(await asyncio.gather(*(events_of(loop, a) for a in asks)))

    async def alone(loop: GenerationLoop) -> list[list[Any]]:
        return [await events_of(loop, a) for a in asks]

    batched, solo = run(lm, together), run(lm, alone)
    assert batched == solo
    for events, request_ in zip(batched, asks, strict=True):
        *pieces, end = events
        assert end == Finished("length", request_.max_tokens, len(request_.prompt_ids))
        assert len(pieces) == request_.max_tokens and all(len(piece.text) == 1 for piece in pieces)


def test_the_figures_count_every_generation_once(lm: LanguageModelRuntime) -> None:
    recorder: list[Recorder] = []
    asks = [ask(lm, "ab", 5), ask(lm, "cde", 9), ask(lm, "f", 3)]

    async def scenario(loop: GenerationLoop) -> list[list[Any]]:
        recorder.append(loop._observer)  # type: ignore[arg-type]
        return list(await asyncio.gather(*(events_of(loop, a) for a in asks)))

    run(lm, scenario)
    figures = recorder[0]
    assert sum(running for running, _, _ in figures.steps) == 5 + 9 + 3  # one token per running row per step
    assert sum(prompt for _, _, prompt in figures.steps) == 2 + 3 + 1  # each prompt prefilled once
    assert figures.first_tokens == 3 and sorted(figures.done) == [3, 5, 9] and len(figures.waits) == 3
    assert figures.steps[-1][0] in (0, 1) and max(running for running, _, _ in figures.steps) == 3


def test_rows_beyond_max_active_wait_and_then_run(lm: LanguageModelRuntime) -> None:
    recorder: list[Recorder] = []
    asks = [ask(lm, "ab", 6, seed=s) for s in range(4)]

    async def scenario(loop: GenerationLoop) -> list[list[Any]]:
        recorder.append(loop._observer)  # type: ignore[arg-type]
        return list(await asyncio.gather(*(events_of(loop, a) for a in asks)))

    together = run(lm, scenario, max_active=2)
    assert together == run(lm, lambda loop: asyncio.gather(*(events_of(loop, a) for a in asks)))  # same events
    steps = recorder[0].steps
    assert max(running for running, _, _ in steps) == 2 and max(waiting for _, waiting, _ in steps) >= 1
    assert all(events[-1] == Finished("length", 6, 2) for events in together)


def test_a_stop_string_ends_the_text_before_it_and_nothing_of_it_is_sent(lm: LanguageModelRuntime) -> None:
    base = text_of(run(lm, lambda loop: events_of(loop, ask(lm, "the ", 60, seed=5))))
    stop = base[20:23]
    cut = base.find(stop)
    figures: list[Recorder] = []

    async def stopping(loop: GenerationLoop) -> list[Any]:
        figures.append(loop._observer)  # type: ignore[arg-type]
        found = await events_of(loop, ask(lm, "the ", 60, seed=5, stop=("never here", stop)))
        await asyncio.sleep(0.05)  # time for many more steps, if it were still decoding
        return found

    *pieces, end = run(lm, stopping)
    assert text_of(pieces) == base[:cut] and end.reason == "stop"
    assert end.tokens == cut + len(stop) and end.tokens < 60  # the tokens that made the stop string
    assert sum(running for running, _, _ in figures[0].steps) <= end.tokens + 1  # at most one step more
    first = run(lm, lambda loop: events_of(loop, ask(lm, "the ", 60, seed=5, stop=(base[:2],))))
    assert first == [Finished("stop", 2, 4)]  # a stop string right at the start: no text at all
    # a stop string that starts but does not finish is sent in the end, and the length ends the text
    partial = base[30:32] + "\x00"  # its first two characters match, the third never comes
    held = run(lm, lambda loop: events_of(loop, ask(lm, "the ", 60, seed=5, stop=(partial,))))
    assert text_of(held) == base and held[-1] == Finished("length", 60, 4)


def test_text_that_may_start_a_stop_string_is_held_back_until_decided(lm: LanguageModelRuntime) -> None:
    base = text_of(run(lm, lambda loop: events_of(loop, ask(lm, "the ", 40, seed=9))))
    stop = base[10:13] + "\x00"  # never completed: held while it might be, then sent
    events = run(lm, lambda loop: events_of(loop, ask(lm, "the ", 40, seed=9, stop=(stop,))))
    sent = ""
    for event in events[:-1]:
        sent += event.text
        assert not (sent.endswith(base[10:11]) and len(sent) == 11), "the stop's first character went out alone"
    assert sent == base
    lengths = [len(event.text) for event in events[:-1]]
    assert max(lengths) == 4  # the three held characters went out with the one that decided it
    assert min(lengths) == 1  # and no empty piece was sent while they were held


def test_a_cancelled_generation_leaves_and_the_others_are_unaffected(lm: LanguageModelRuntime) -> None:
    others = [ask(lm, "ab", 30, seed=s) for s in range(2)]

    async def scenario(loop: GenerationLoop) -> tuple[int, list[list[Any]]]:
        long_one = loop.submit(ask(lm, "zz", 5000))
        stream = long_one.events()
        for _ in range(3):
            await anext(stream)
        rest = asyncio.gather(*(events_of(loop, a) for a in others))
        long_one.cancel()
        results = await rest
        left_at = long_one._sequence.generated
        await asyncio.sleep(0.1)  # many steps' time: it must not be decoding any more
        assert long_one._sequence.generated == left_at and long_one._sequence not in loop._active
        return left_at, list(results)

    generated, together = run(lm, scenario)
    assert generated < 200  # it left the batch at once, not at 5000 tokens
    assert together == run(lm, lambda loop: asyncio.gather(*(events_of(loop, a) for a in others)))


def test_a_full_queue_refuses_and_an_expired_wait_fails_alone(lm: LanguageModelRuntime) -> None:
    async def scenario(loop: GenerationLoop) -> tuple[Any, list[Any], list[Any]]:
        running = asyncio.ensure_future(events_of(loop, ask(lm, "ab", 400)))
        await asyncio.sleep(0.05)  # it runs: the one row is taken
        expiring = asyncio.ensure_future(events_of(loop, ask(lm, "cd", 3, deadline_s=0.05)))
        await asyncio.sleep(0)
        try:
            loop.submit(ask(lm, "ef", 3))  # the queue holds one
            refused: Any = None
        except QueueFull as exc:
            refused = exc
        return refused, await expiring, await running

    refused, expired, finished = run(lm, scenario, max_active=1, max_queue=1)
    assert isinstance(refused, QueueFull) and refused.retry_after_s == 1
    assert len(expired) == 1 and isinstance(expired[0], DeadlineExceeded)  # no piece: it never ran
    assert finished[-1] == Finished("length", 400, 2)


def test_a_stopped_loop_fails_what_waits_and_refuses_what_comes(lm: LanguageModelRuntime) -> None:
    async def scenario() -> tuple[Any, list[Any], bool]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            loop = GenerationLoop("tiny/1", lm, executor, 1, 4, Recorder())  # type: ignore[arg-type]
            try:
                loop.submit(ask(lm, "ab", 3))
                before: Any = None
            except ModelUnavailable as exc:
                before = exc
            loop.start()
            pending = asyncio.ensure_future(events_of(loop, ask(lm, "ab", 100_000)))
            await asyncio.sleep(0.05)
            await loop.stop()
            return before, await pending, loop.alive

    before, pending, alive = asyncio.run(scenario())
    assert isinstance(before, ModelUnavailable) and str(before) == "the model is not started" and not alive
    assert isinstance(pending[-1], ModelUnavailable) and "shutting down" in str(pending[-1])


def test_a_generation_joining_running_ones_gets_its_solo_events(lm: LanguageModelRuntime) -> None:
    """Joiners are prefilled in the same step that advances the running rows: each row keeps its own token."""
    late = [ask(lm, "late ", 12, seed=7), ask(lm, "later", 9, seed=8, temperature=0.0)]

    async def scenario(loop: GenerationLoop) -> list[list[Any]]:
        running = loop.submit(ask(lm, "first", 60, seed=6)).events()
        for _ in range(5):
            await anext(running)  # it is decoding
        joined = await asyncio.gather(*(events_of(loop, a) for a in late))
        await running.aclose()
        return list(joined)

    assert run(lm, scenario) == [run(lm, lambda loop, a=a: events_of(loop, a)) for a in late]


def test_the_wait_and_the_first_token_count_from_the_requests_arrival(lm: LanguageModelRuntime) -> None:
    figures: list[Recorder] = []

    async def scenario(loop: GenerationLoop) -> None:
        figures.append(loop._observer)  # type: ignore[arg-type]
        arrived = time.monotonic() - 1.0  # it reached the server a second ago (the front-end, the transport)
        async for _ in loop.submit(ask(lm, "ab", 3), arrival=arrived).events():
            pass

    run(lm, scenario)
    assert 1.0 <= figures[0].waits[0] < 2.0 and 1.0 <= figures[0].ttfts[0] < 2.0


def test_steps_run_on_the_devices_thread(lm: LanguageModelRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    threads, real_step = set(), lm.step

    def recorded(batch: Any, tokens: list[int]) -> Any:
        threads.add(threading.current_thread().name.split("_")[0])
        return real_step(batch, tokens)

    monkeypatch.setattr(lm, "step", recorded)

    async def scenario() -> list[Any]:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="the-device") as executor:
            loop = GenerationLoop("tiny/1", lm, executor, 4, 4, Recorder())  # type: ignore[arg-type]
            loop.start()
            try:
                return await events_of(loop, ask(lm, "ab", 4))
            finally:
                await loop.stop()

    assert asyncio.run(scenario())[-1] == Finished("length", 4, 2) and threads == {"the-device"}


def test_unseeded_generations_draw_their_own_seeds(lm: LanguageModelRuntime) -> None:
    async def scenario(loop: GenerationLoop) -> list[str]:
        found = await asyncio.gather(*(events_of(loop, ask(lm, "ab", 16, seed=None)) for _ in range(40)))
        return [text_of(events) for events in found]

    texts = run(lm, scenario, max_active=40, max_queue=40)
    assert len(set(texts)) == 40  # 16 tokens drawn at temperature 1 from 2**62 seeds: no two alike


def test_a_dead_device_fails_every_generation_and_the_model(lm: LanguageModelRuntime, caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that finds the device gone (WorkerFatal) ends the loop: the running generations and the ones that
    were joining fail with the reason, and the model reports not alive."""
    from service.outcomes import WorkerFatal

    real_prefill, late = lm.prefill_many, lm.encode_prompt("cd")

    def dying(prompts: list[list[int]]) -> Any:  # the device dies in the step that prefills the late joiner
        if late in prompts:
            raise WorkerFatal("the device is gone")
        return real_prefill(prompts)

    monkeypatch.setattr(lm, "prefill_many", dying)

    async def scenario(loop: GenerationLoop) -> tuple[list[list[Any]], bool]:
        running = loop.submit(ask(lm, "ab", 50)).events()
        first_events = [await anext(running), await anext(running)]  # it is decoding
        joining = asyncio.ensure_future(events_of(loop, ask(lm, "cd", 50)))
        rest: list[Any] = []
        try:
            async for event in running:
                rest.append(event)
        except Exception as exc:
            rest.append(exc)
        return [first_events + rest, await joining], loop.alive

    (first, second), alive = run(lm, scenario)
    for events in (first, second):
        assert isinstance(events[-1], ModelUnavailable)
        assert str(events[-1]) == "decoding failed: the device is gone"
        assert not any(isinstance(event, Finished) for event in events)
    assert not alive
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "model tiny/1: the device can run nothing more: WorkerFatal('the device is gone')"]
