"""HTTP-agnostic continuous batching for text generation: one decoding loop per language model.

Generations wait in a bounded queue, join the running batch after their own prefill, advance one
token per step together with every other running generation, and leave between steps when they
hit ``max_tokens``, a stop string, or their consumer goes away. All torch work (prefill, step,
sampling) runs in the device's inference thread, one call per step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch

from service.engine.batcher import BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull, is_fatal
from service.engine.scheduler import Objective, Scheduler, on_device
from service.metrics import SchedulerMetrics
from service.runtimes.language_model import Event, Finished, GenerationRequest, LanguageModelRuntime, Piece, sample

log = logging.getLogger("service.engine.generation_loop")


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    events: asyncio.Queue[Event | BaseException]
    generator: torch.Generator
    history: list[int]  # prompt + generated ids (GPT refills its context from the end of it)
    text: str = ""
    emitted: int = 0  # characters of ``text`` already sent (the rest may be the start of a stop string)
    generated: int = 0
    pending: int | None = None  # sampled, sent, not yet fed to the model
    cancelled: bool = False
    done: bool = False
    enqueued: float = field(default_factory=time.monotonic)  # its request's arrival at the server, if known
    first_token_at: float = 0.0
    last_token_at: float = 0.0  # (or its arrival): a token later than the objective after it misses it
    urgency: float = 1.0  # its level over the default: its steps are due in the objective times this


@dataclass(eq=False)
class _Step:
    """A step running in the worker: which running rows it keeps and which generations join."""

    future: asyncio.Future[list[int]]
    keep: list[int]
    joining: list[_Sequence]
    started: float


class Generation:
    """A handle on one running generation: iterate it for its events; ``cancel`` when its client leaves."""

    def __init__(self, sequence: _Sequence, loop: GenerationLoop) -> None:
        self._sequence = sequence
        self._loop = loop

    async def events(self) -> AsyncIterator[Event]:
        try:
            while True:
                event = await self._sequence.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self._sequence.done:
            self._sequence.cancelled = True
            self._loop.wake()


class GenerationLoop(Scheduler):
    kind = "decoder"

    def __init__(self, name: str, runtime: LanguageModelRuntime, executor: Executor, max_active: int,
                 max_queue: int, observer: SchedulerMetrics | None = None, objective: Objective | None = None) -> None:
        super().__init__(name)
        self.runtime = runtime
        self.objective = objective or Objective()
        self.max_active = max_active
        self.max_queue = max_queue
        self._executor = executor
        self._observer = observer
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._batch: Any = None
        self._wakeup = asyncio.Event()

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def wake(self) -> None:
        self._wakeup.set()

    # -- the client side -------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, arrival: float | None = None, priority: int = 0) -> Generation:
        """Queue a generation; ``arrival`` (``time.monotonic()``) is when its request reached the server; a
        ``priority`` level above the default (1 the highest, 0 the default) makes its steps due sooner."""
        if not self.alive:
            raise ModelUnavailable(self._dead_reason or "the model is not started")
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(retry_after_s=1)
        generator = torch.Generator()
        generator.manual_seed(request.seed if request.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        # One event per token plus the end: a bounded queue that can never block the loop.
        arrival = arrival or time.monotonic()
        sequence = _Sequence(request, asyncio.Queue(maxsize=request.max_tokens + 2), generator,
                             list(request.prompt_ids), enqueued=arrival, last_token_at=arrival,
                             urgency=self.objective.level(priority) / self.objective.default)
        self._waiting.append(sequence)
        self.wake()
        return Generation(sequence, self)

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        """Step after step. The next step starts in the worker as soon as the last one's tokens are known,
        and the loop turns those tokens into text and events while it runs: a generation that hits a stop
        string runs one step more than it needs (its token is dropped), and none waits for the hand-offs."""
        step: _Step | None = None
        while True:
            if step is None:
                self._expire_waiting()
                if not self._active and not self._waiting:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                step = self._launch()
            try:
                tokens = await step.future
            except Exception as exc:
                if is_fatal(exc) or (isinstance(exc, RuntimeError) and "shutdown" in str(exc)):
                    log.error("model %s: the device can run nothing more: %r", self.name, exc)
                    self._die(f"decoding failed: {exc}", step.joining)
                    return
                self._fail_step([self._active[i] for i in step.keep] + step.joining, exc)
                step = None
                continue
            self._active = [self._active[i] for i in step.keep] + step.joining
            if self._observer is not None:  # also after the last step, when nothing runs any more
                if self._active:
                    self._observer.batch_done(len(self._active), time.perf_counter() - step.started)
                self._observer.generation_step(len(self._active), len(self._waiting),
                                               sum(len(s.request.prompt_ids) for s in step.joining))
            self._count_objective()
            for sequence, token in zip(self._active, tokens, strict=True):
                self._feed(sequence, token)
            self._expire_waiting()
            running = any(not self._finished(s) for s in self._active)
            step = self._launch() if running or self._waiting else None
            for sequence, token in zip(self._active, tokens, strict=True):  # while the next step runs
                self._emit(sequence, token)
            await asyncio.sleep(0)  # let consumers and new requests run between steps

    def _launch(self) -> _Step:
        """Start the next step in the worker: the running rows that go on, and waiting ones that join."""
        keep = [i for i, s in enumerate(self._active) if not self._finished(s)]
        joining: list[_Sequence] = []
        while self._waiting and len(keep) + len(joining) < self.max_active:
            candidate = self._waiting.popleft()
            if not candidate.cancelled:
                joining.append(candidate)
        self._wakeup.clear()
        if self._observer is not None:
            now = time.monotonic()
            for sequence in joining:
                self._observer.queue_wait(now - sequence.enqueued)
        # What the worker needs, taken here on the loop's thread: a stop or a watchdog may clear _active while
        # the step runs, and the worker must not read it then.
        staying = [self._active[i] for i in keep]
        all_stay = len(keep) == len(self._active)
        # Due when the most urgent row's next token is: its last one + the objective (scaled by its priority).
        due = min((s.last_token_at + self.objective.seconds * s.urgency for s in [*staying, *joining]),
                  default=time.monotonic())  # (every row left and no joiner: a step that only drops rows)
        account = self._observer.device_time if self._observer is not None else None
        future = on_device(self._executor, self._iterate, keep, staying, all_stay, joining, deadline=due,
                           model=self.name, account=account)
        return _Step(future, keep, joining, time.perf_counter())

    def _count_objective(self) -> None:
        """After a step: each row's token against the objective (from the row's last token, or its arrival)."""
        now, missed = time.monotonic(), 0
        rows = [s for s in self._active if not s.done and not s.cancelled]
        for sequence in rows:
            missed += now - sequence.last_token_at > self.objective.seconds
            sequence.last_token_at = now
        if self._observer is not None and rows:
            self._observer.objective(len(rows), missed)

    @staticmethod
    def _finished(sequence: _Sequence) -> bool:
        """Needs no more steps: done, cancelled, or its last token is its ``max_tokens``-th."""
        return sequence.done or sequence.cancelled or sequence.generated >= sequence.request.max_tokens

    def _iterate(self, keep: list[int], staying: list[_Sequence], all_stay: bool,
                 joining: list[_Sequence]) -> list[int]:
        """Worker thread: drop leavers, step the running rows, prefill the joiners; one token per row."""
        with torch.inference_mode():  # the batch state is made of inference tensors: every update is in this mode
            return self._iterate_rows(keep, staying, all_stay, joining)

    def _iterate_rows(self, keep: list[int], staying: list[_Sequence], all_stay: bool,
                      joining: list[_Sequence]) -> list[int]:
        runtime = self.runtime
        if self._batch is not None and not all_stay:  # someone left: copy the rest
            self._batch = runtime.keep(self._batch, keep)
        tokens: list[int] = []
        if staying:
            full = runtime.full_rows(self._batch)  # GPT rows at the end of their context: refill from the end
            refills = runtime.prefill_many([runtime.refill_ids(staying[row].history) for row in full])
            for row, (state, _) in zip(full, refills, strict=True):
                self._batch = runtime.replace_row(self._batch, row, state)
            self._batch, logits = runtime.step(self._batch, [s.pending for s in staying])  # type: ignore[misc]
            tokens = sample(logits, [s.request.sampling for s in staying], [s.generator for s in staying])
        if joining:
            states, rows = zip(*runtime.prefill_many([s.request.prompt_ids for s in joining]), strict=True)
            tokens += sample(torch.stack(rows), [s.request.sampling for s in joining], [s.generator for s in joining])
            self._batch = runtime.join(self._batch, list(states))
        return tokens

    def _fail_step(self, sequences: list[_Sequence], exc: BaseException) -> None:
        """A step raised: its generations fail (their batch state is gone with it); the loop goes on."""
        log.warning("model %s: a decoding step of %d generations failed: %r", self.name, len(sequences), exc)
        self._batch, self._active = None, []
        for sequence in sequences:
            if not sequence.done:
                sequence.done = True
                failure = BatchFailed(f"a decoding step failed: {exc!r}")
                failure.__cause__ = exc
                sequence.events.put_nowait(failure)

    def _feed(self, sequence: _Sequence, token: int) -> None:
        """What the next step needs from a new token: it is fed to the model (and kept for refills)."""
        if sequence.cancelled:
            sequence.done = True
        if sequence.done:
            return  # finished by a stop string while this step ran: its token is dropped
        sequence.pending = token
        sequence.history.append(token)
        sequence.generated += 1

    def _emit(self, sequence: _Sequence, token: int) -> None:
        """A fed token's text and events: a piece (minus what may start a stop string), and the end."""
        if sequence.done:
            return  # cancelled, or finished by a stop string while this step ran
        if sequence.generated == 1:
            sequence.first_token_at = time.monotonic()
            if self._observer is not None:
                self._observer.first_token(sequence.first_token_at - sequence.enqueued)
        sequence.text += self.runtime.token_text(token)
        reason = None
        stops = [sequence.text.find(stop, max(0, sequence.emitted - len(stop))) for stop in sequence.request.stop]
        hits = [index for index in stops if index >= 0]
        if hits:
            sequence.text = sequence.text[: min(hits)]
            reason = "stop"
        elif sequence.generated >= sequence.request.max_tokens:
            reason = "length"
        safe = len(sequence.text) if reason else len(sequence.text) - self._held_back(sequence)
        if safe > sequence.emitted:
            sequence.events.put_nowait(Piece(sequence.text[sequence.emitted:safe]))
            sequence.emitted = safe
        if reason:
            sequence.done = True
            sequence.events.put_nowait(Finished(reason, sequence.generated, len(sequence.request.prompt_ids)))
            if self._observer is not None:
                self._observer.generation_done(sequence.generated, time.monotonic() - sequence.first_token_at)

    @staticmethod
    def _held_back(sequence: _Sequence) -> int:
        """Characters at the end that could begin a stop string: not sent until that is decided."""
        text = sequence.text
        return max((n for stop in sequence.request.stop for n in range(min(len(stop) - 1, len(text)), 0, -1)
                    if stop.startswith(text[-n:])), default=0)

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for sequence in [s for s in self._waiting if s.request.deadline <= now]:
            self._waiting.remove(sequence)
            sequence.done = True
            sequence.events.put_nowait(DeadlineExceeded())

    def _fail_pending(self, error: BaseException, extra: list[Any] | None = None) -> None:
        for sequence in [*self._active, *self._waiting, *(extra or [])]:
            if not sequence.done:
                sequence.done = True
                sequence.events.put_nowait(error)
        self._active, self._waiting = [], deque()
