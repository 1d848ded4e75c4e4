"""HTTP-agnostic dynamic batcher: one bounded queue and one batching task per model version.

A request's inputs become items, each with its own future and its arrival-based deadline. A batch
closes when it holds ``max_batch_size`` items, when ``max_delay_s`` has passed since its first item,
or at once when the model is idle (no forward running) and no other input is announced (being
decoded by another request), so a lone request never waits. One closed
batch may wait for the running one (a pipeline of depth one keeps the device fed). Items whose
future is already done (the client went away, or its deadline passed) are dropped before the
forward. The forward runs in the device's executor, off the event loop. A forward that raises
fails only its own batch; an executor that can no longer run anything kills the batcher, which
then fails every waiting item and reports not alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass
from typing import Any, Protocol

from service.engine.scheduler import Objective, Scheduler, on_device
from service.outcomes import BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull, WorkerFatal

log = logging.getLogger("service.engine.batcher")
__all__ = ["BatchConfig", "BatchFailed", "Batcher", "DeadlineExceeded", "ModelUnavailable", "QueueFull", "WorkerFatal",
           "is_fatal"]


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_delay_s: float = 0.002
    max_queue: int = 512  # items (inputs), not requests

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1 or self.max_delay_s < 0:
            raise ValueError(f"invalid batching config {self}")


HANDOVER_S = 0.001  # a batch closes this long before the running forward should end: its hand-over is ready


class BatchObserver(Protocol):
    def batch_done(self, size: int, seconds: float, sources: int = 1) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def dropped(self, reason: str, count: int) -> None: ...
    def device_time(self, seconds: float) -> None: ...
    def objective(self, total: int, missed: int) -> None: ...


class _NullObserver:
    def device_time(self, seconds: float) -> None:
        pass

    def objective(self, total: int, missed: int) -> None:
        pass

    def batch_done(self, size: int, seconds: float, sources: int = 1) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass

    def dropped(self, reason: str, count: int) -> None:
        pass


class Announcement:
    """Inputs that a request will submit once decoded. While some are announced, an idle model waits
    (up to ``max_delay_s``) for them instead of running a batch of one: batching under load without
    adding latency to a request that is truly alone."""

    def __init__(self, batcher: Batcher, count: int) -> None:
        self._batcher = batcher
        self._count = count
        batcher._incoming += count

    def release(self) -> None:
        if self._count:
            self._batcher._incoming -= self._count
            self._count = 0
            self._batcher._changed.set()

    def __enter__(self) -> Announcement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(eq=False)
class _Item:
    payload: Any
    future: asyncio.Future[Any]
    deadline: float
    enqueued: float
    source: bytes = b""  # the front-end that sent it
    arrival: float = 0.0  # time.monotonic() when its request reached the server
    due: float = 0.0  # arrival + the model's latency objective (scaled by its priority)
    level: int = 1  # its priority level: 1 is taken first
    forward_started: float = 0.0  # time.monotonic() when its forward began
    forward_s: float = 0.0
    forward_batch: int = 0  # inputs in that forward


@dataclass
class Timing:
    """Where a request's time went in the batcher: the longest wait of its inputs, the longest forward."""

    queue_s: float = 0.0
    forward_s: float = 0.0
    forward_started: float = 0.0  # time.monotonic() when the last of its inputs' forwards began
    batch_size: int = 0  # the largest forward its inputs were in


def is_fatal(exc: BaseException) -> bool:
    if isinstance(exc, BrokenExecutor | WorkerFatal):
        return True
    # CUDA errors are sticky: after one, every later kernel launch on that context fails too.
    return isinstance(exc, RuntimeError) and "CUDA error" in str(exc)


class Batcher(Scheduler):
    """Collects items from many requests into batches for ``run_batch(payloads) -> results``."""

    kind = "batcher"

    def __init__(self, name: str, run_batch: Callable[[list[Any]], Sequence[Any]], config: BatchConfig,
                 executor: Executor, observer: BatchObserver | None = None,
                 objective: Objective | None = None) -> None:
        super().__init__(name)
        self.config = config
        self.objective = objective or Objective()
        self._run_batch = run_batch
        self._executor = executor
        self._observer = observer or _NullObserver()
        self._queue: deque[_Item] = deque()
        self._changed = asyncio.Event()  # an item arrived or the forward finished
        self._running: asyncio.Future[Any] | None = None
        self._closed: list[_Item] = []  # a batch waiting for the running forward to finish
        self._forwarding: list[_Item] = []  # the batch of the running forward
        self._incoming = 0  # announced inputs still being decoded
        self._batch_seconds_ema = 0.0
        self._device_free_at = 0.0  # time.monotonic() when the forwards handed over should be done (estimated)

    @property
    def depth(self) -> int:
        return sum(1 for item in self._queue if not item.future.done())

    # -- the client side ---------------------------------------------------------------------
    def announce(self, count: int) -> Announcement:
        """Say that ``count`` inputs are on their way (decoding); ``submit`` or ``release`` ends it."""
        return Announcement(self, count)

    async def submit(self, payloads: Sequence[Any], deadline: float, announcement: Announcement | None = None,
                     source: bytes = b"", timing: Timing | None = None, arrival: float | None = None,
                     priority: int = 0) -> list[Any]:
        """Queue the payloads; return their results in order. ``deadline`` is ``time.monotonic()`` based, as is
        ``arrival`` (when the request reached the server; default now). A ``priority`` level (1 the highest, 0
        the model's default) above the default takes them ahead of the queue.

        Raises QueueFull at once when they don't fit, DeadlineExceeded when the deadline passes,
        ModelUnavailable when the batcher is dead, BatchFailed when their forward raised.
        Cancelling the caller (the client went away) drops its items before their forward. ``timing``, if
        given, gets where the time went.
        """
        if not self.alive:
            raise ModelUnavailable(self._dead_reason or "the model is not started")
        if self._waiting() + len(payloads) > self.config.max_queue:
            self._purge()
            if self._waiting() + len(payloads) > self.config.max_queue:
                self._observer.dropped("queue_full", len(payloads))
                raise QueueFull(self._retry_after())
        now = time.monotonic()
        if deadline <= now:
            self._observer.dropped("deadline", len(payloads))
            raise DeadlineExceeded()
        loop = asyncio.get_running_loop()
        arrival = now if arrival is None else arrival
        level, due = self.objective.level(priority), self.objective.due(arrival, priority)
        items = [_Item(payload, loop.create_future(), deadline, now, source, arrival=arrival, due=due, level=level)
                 for payload in payloads]
        self._enqueue(items, level)
        if announcement is not None:
            announcement.release()
        self._observer.queue_depth(len(self._queue))
        self._changed.set()
        futures = [item.future for item in items]
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - now)):
                # (one input, the usual request: no gathering future and callbacks for it)
                results = [await futures[0]] if len(futures) == 1 else list(await asyncio.gather(*futures))
            if timing is not None:
                timing.queue_s = max(item.forward_started - item.enqueued for item in items)
                timing.forward_s = max(item.forward_s for item in items)
                timing.forward_started = max(item.forward_started for item in items)
                timing.batch_size = max(item.forward_batch for item in items)
            return results
        except TimeoutError:
            raise DeadlineExceeded() from None
        finally:
            for future in futures:
                if not future.done():  # cancelled or timed out: mark the rest so the loop skips them
                    future.cancel()

    def _enqueue(self, items: list[_Item], level: int) -> None:
        """Behind every queued input of the same or a higher level (a lower number), ahead of the rest."""
        queue = self._queue
        if not queue or queue[-1].level <= level:
            queue.extend(items)  # the usual case: one level in the queue
            return
        at = len(queue)
        while at > 0 and queue[at - 1].level > level:
            at -= 1
        for offset, item in enumerate(items):
            queue.insert(at + offset, item)

    def _waiting(self) -> int:
        """Inputs not yet forwarded: the queue and the closed batch (cancelled ones until purged)."""
        return len(self._queue) + len(self._closed)

    def _retry_after(self) -> int:
        batches_ahead = self._waiting() / self.config.max_batch_size
        return max(1, math.ceil(batches_ahead * self._batch_seconds_ema))

    # -- the batching side -------------------------------------------------------------------
    def _purge(self) -> None:
        """Drop items whose future is done: their client went away or their deadline passed."""
        if not self._queue:
            return
        now = time.monotonic()
        live: deque[_Item] = deque()
        expired = cancelled = 0
        for item in self._queue:
            if not item.future.done() and item.deadline > now:
                live.append(item)
            elif item.deadline <= now:
                expired += 1
                if not item.future.done():
                    item.future.set_exception(DeadlineExceeded())
            else:
                cancelled += 1
        self._queue = live
        if expired:
            self._observer.dropped("deadline", expired)
        if cancelled:
            self._observer.dropped("cancelled", cancelled)
        if expired or cancelled:
            self._observer.queue_depth(len(self._queue))  # or the gauge shows a backlog that is gone

    def _idle(self) -> bool:
        return self._running is None or self._running.done()

    async def _next_batch(self) -> list[_Item]:
        while True:
            self._changed.clear()
            self._purge()
            if self._queue:
                first = self._queue[0]
                now = time.monotonic()
                closes_at = first.enqueued + self.config.max_delay_s
                if not self._idle():
                    # The device is busy: this batch cannot start before the running forward ends, so it grows
                    # until just before then instead of closing small after max_delay (mnist-cnn at 64
                    # connections on 2 cores: mean batch 16 -> 19, 665-670 -> 694-699 req/s).
                    closes_at = max(closes_at, self._device_free_at - HANDOVER_S)
                remaining = closes_at - now
                full = len(self._queue) >= self.config.max_batch_size
                alone = self._idle() and self._incoming <= 0  # nothing running, nothing on its way
                if full or alone or remaining <= 0:
                    count = min(len(self._queue), self.config.max_batch_size)
                    batch = [self._queue.popleft() for _ in range(count)]
                    self._observer.queue_depth(len(self._queue))
                    return batch
                # wait for more items, for the forward to finish, or for the batch's delay to pass
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            else:
                await self._changed.wait()

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            self._purge_batch(batch)
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            try:
                forward = on_device(self._executor, self._timed_forward, live, deadline=min(i.due for i in live),
                                    model=self.name, account=self._observer.device_time)
            except RuntimeError as exc:  # the executor was shut down: nothing can run any more
                self._die(f"inference thread is gone: {exc}", live)
                return
            forward.add_done_callback(functools.partial(self._deliver, items=live))
            self._device_free_at = max(time.monotonic(), self._device_free_at) + self._batch_seconds_ema
            running = self._running
            if running is not None and not running.done():
                # Pipeline depth one: this batch waits in the executor's queue, and the inference thread starts
                # it the moment the running forward ends, without a round through this loop (which is busy
                # answering that forward's requests then: 8% of the thread's time went idle at 64
                # connections). The next batch closes once the running forward is done.
                self._closed = live
                await asyncio.wait([running])
                self._closed = []
            self._running, self._forwarding = forward, live

    def _purge_batch(self, batch: list[_Item]) -> None:
        """Between closing and running, deadlines may pass and clients may leave: drop those too."""
        now = time.monotonic()
        expired = [item for item in batch if not item.future.done() and item.deadline <= now]
        for item in expired:
            item.future.set_exception(DeadlineExceeded())
        cancelled = sum(1 for item in batch if item.future.cancelled())
        if expired:
            self._observer.dropped("deadline", len(expired))
        if cancelled:
            self._observer.dropped("cancelled", cancelled)

    def _timed_forward(self, items: list[_Item]) -> tuple[list[_Item], Sequence[Any], float]:
        """Runs in the inference thread. The device may have been busy with another model's forward since the
        batch was handed over, so clients that left meanwhile are skipped here, at the last moment."""
        now = time.monotonic()
        live = [item for item in items if not item.future.done() and item.deadline > now]
        if len(live) < len(items):
            self._observer.dropped("cancelled", len(items) - len(live))
        if not live:
            return live, [], 0.0
        started = time.perf_counter()
        results = self._run_batch([item.payload for item in live])
        if len(results) != len(live):
            raise RuntimeError(f"forward returned {len(results)} results for {len(live)} inputs")
        seconds = time.perf_counter() - started
        for item in live:
            item.forward_started, item.forward_s, item.forward_batch = now, seconds, len(live)
        return live, results, seconds

    def _deliver(self, forward: asyncio.Future[Any], *, items: list[_Item]) -> None:
        self._changed.set()
        exc = forward.exception() if not forward.cancelled() else asyncio.CancelledError()
        if exc is not None:
            if is_fatal(exc):
                log.error("model %s: inference thread died: %r", self.name, exc)
                self._die(f"inference thread died: {exc}", items)
                return
            log.warning("model %s: forward of a batch of %d failed: %r", self.name, len(items), exc)
            for item in items:
                if not item.future.done():
                    failure = BatchFailed(str(exc))
                    failure.__cause__ = exc
                    item.future.set_exception(failure)
            return
        items, results, seconds = forward.result()
        if not items:
            return
        self._batch_seconds_ema = seconds if not self._batch_seconds_ema else (
            0.8 * self._batch_seconds_ema + 0.2 * seconds)
        self._observer.batch_done(len(items), seconds, len({item.source for item in items}))
        now = time.monotonic()
        self._observer.objective(len(items), sum(1 for item in items if now - item.arrival > self.objective.seconds))
        for item, result in zip(items, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _fail_pending(self, error: BaseException, extra: list[Any] | None = None) -> None:
        for item in [*(extra or []), *self._forwarding, *self._closed, *self._queue]:
            if not item.future.done():
                item.future.set_exception(error)
        self._queue.clear()
        self._closed = []
        self._observer.queue_depth(0)
