"""HTTP-agnostic continuous batching for diffusion sampling: one denoising loop per diffusion model.

A request (n images, a seed, a number of steps) waits in a bounded queue, joins the running batch
between two denoising steps, advances one DDIM update per step together with every other running
request (each at its own timestep), and leaves as soon as its own schedule ends. Between steps, a
request whose deadline has passed is dropped with ``DeadlineExceeded`` and one whose client went away
is dropped silently, so neither holds the device for the rest of its steps. All torch work runs in
the device's inference thread. A step is handed to the device cut into pieces, one per forward of the runtime's
``rows_per_forward`` rows (the very forwards an uncut step runs, so no row's arithmetic changes): another model's
more urgent work runs between two pieces instead of waiting for the whole step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch

from service.engine.batcher import BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull, is_fatal
from service.engine.scheduler import Objective, Scheduler, pieces_on_device
from service.metrics import SchedulerMetrics
from service.runtimes.image_generator import DiffusionRuntime, SampleRequest, Samples

log = logging.getLogger("service.engine.denoising_loop")


@dataclass(eq=False)
class _Job:
    request: SampleRequest
    future: asyncio.Future[Samples]
    deadline: float  # time.monotonic()
    schedule: list[int] = field(default_factory=list)  # filled in the inference thread when the job joins
    position: int = 0  # how many of its updates are done
    x: torch.Tensor | None = None  # [n, 1, 28, 28]: touched only by the inference thread
    arrival: float = 0.0  # time.monotonic() when its request reached the server
    due: float = 0.0  # arrival + the model's latency objective (scaled by its priority)


@dataclass(eq=False)
class _StepState:
    """One step over every active row, as its pieces build it in the inference thread."""

    jobs: list[_Job]
    x: torch.Tensor | None = None  # every row, joined: [R, 1, 28, 28]
    t: list[int] = field(default_factory=list)
    t_next: list[int] = field(default_factory=list)
    done: list[torch.Tensor] = field(default_factory=list)  # the updated rows, piece by piece


class DenoisingLoop(Scheduler):
    kind = "denoiser"

    def __init__(self, name: str, runtime: DiffusionRuntime, executor: Executor, max_active_rows: int,
                 max_queue: int, observer: SchedulerMetrics | None = None, objective: Objective | None = None) -> None:
        super().__init__(name)
        self.runtime = runtime
        self.objective = objective or Objective(30.0)
        self.max_active_rows = max_active_rows
        self.max_queue = max_queue  # images waiting
        self._executor = executor
        self._observer = observer
        self._waiting: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._wakeup = asyncio.Event()

    @property
    def depth(self) -> int:
        return sum(job.request.n for job in self._waiting)

    # -- the client side -------------------------------------------------------------------------
    async def submit(self, request: SampleRequest, deadline: float, arrival: float | None = None,
                     priority: int = 0) -> Samples:
        """Sample ``request``; cancelling the awaiting task drops it before its next step. ``arrival``: when its
        request reached the server (``time.monotonic()``)."""
        if not self.alive:
            raise ModelUnavailable(self._dead_reason or "the model is not started")
        if self.depth + request.n > self.max_queue:
            raise QueueFull(retry_after_s=1)
        arrival = arrival or time.monotonic()
        job = _Job(request, asyncio.get_running_loop().create_future(), deadline, arrival=arrival,
                   due=self.objective.due(arrival, priority))
        self._waiting.append(job)
        self._wakeup.set()
        try:
            return await job.future
        finally:
            self._wakeup.set()  # a cancelled job frees its rows at the next step

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._drop_leavers()
            if not self._active and not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._admit()
            jobs, rows = list(self._active), sum(job.request.n for job in self._active)
            started = time.perf_counter()
            state, chunk = _StepState(jobs), self.runtime.rows_per_forward
            pieces = [(state, low, min(low + chunk, rows)) for low in range(0, rows, chunk)]
            account = self._observer.device_time if self._observer is not None else None
            try:
                done = await pieces_on_device(self._executor, self._piece, pieces, deadline=min(j.due for j in jobs),
                                              model=self.name, account=account)
                finished = done[-1]
            except Exception as exc:
                if is_fatal(exc):
                    log.error("model %s: inference thread died: %r", self.name, exc)
                    self._die(f"inference thread died: {exc}")
                    return
                log.warning("model %s: a denoising step of %d rows failed: %r", self.name, rows, exc)
                self._fail(jobs, exc)
                continue
            if self._observer is not None:
                self._observer.batch_done(rows, time.perf_counter() - started)
                self._observer.denoising_step()
            now = time.monotonic()
            for job, images in finished:
                self._active.remove(job)
                if not job.future.done():
                    job.future.set_result(Samples(job.request.seed, images, [None] * job.request.n))
                    if self._observer is not None:
                        self._observer.objective(1, int(now - job.arrival > self.objective.seconds))
            await asyncio.sleep(0)  # let new requests and cancellations in between steps

    def _admit(self) -> None:
        """First come, first served, while the rows fit (a request larger than the limit runs alone)."""
        rows = sum(job.request.n for job in self._active)
        while self._waiting and (not self._active or rows + self._waiting[0].request.n <= self.max_active_rows):
            job = self._waiting.popleft()
            self._active.append(job)
            rows += job.request.n
            if self._observer is not None:
                self._observer.queue_wait(time.monotonic() - job.arrival)
        if self._observer is not None:
            self._observer.queue_depth(self.depth)

    def _drop_leavers(self) -> None:
        now = time.monotonic()
        for queue in (self._waiting, self._active):
            for job in [job for job in queue if job.future.done() or job.deadline <= now]:
                queue.remove(job)
                reason = "cancelled" if job.future.done() else "deadline"
                if not job.future.done():
                    job.future.set_exception(DeadlineExceeded())
                if self._observer is not None:
                    self._observer.dropped(reason, job.request.n)

    def _piece(self, state: _StepState, low: int, high: int) -> list[tuple[_Job, np.ndarray]]:
        """Inference thread: rows ``low:high`` of a step (the first piece starts the joiners and joins the rows;
        the last one hands each job its rows); returns the jobs now done (the last piece; else nothing)."""
        if low == 0:
            self._begin(state)
        assert state.x is not None and sum(len(rows) for rows in state.done) == low, "a step's pieces out of order"
        state.done.append(self.runtime.step(state.x[low:high], state.t[low:high], state.t_next[low:high]))
        return self._end(state) if high == len(state.x) else []

    def _begin(self, state: _StepState) -> None:
        runtime = self.runtime
        for job in state.jobs:
            if job.x is None:
                job.x, job.schedule = runtime.noise(job.request), runtime.schedule(job.request)
            schedule = job.schedule
            now, then = schedule[job.position], schedule[job.position + 1] if job.position + 1 < len(schedule) else -1
            state.t += [now] * job.request.n
            state.t_next += [then] * job.request.n
        state.x = torch.cat([job.x for job in state.jobs if job.x is not None])

    def _end(self, state: _StepState) -> list[tuple[_Job, np.ndarray]]:
        finished = []
        x = torch.cat(state.done)
        for job, rows in zip(state.jobs, x.split([job.request.n for job in state.jobs]), strict=True):
            job.x, job.position = rows, job.position + 1
            if job.position == len(job.schedule):
                finished.append((job, self.runtime.pixels(rows)))
        return finished

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        for job in jobs:
            if job in self._active:
                self._active.remove(job)
            if not job.future.done():
                failure = BatchFailed(str(exc))
                failure.__cause__ = exc
                job.future.set_exception(failure)

    def _fail_pending(self, error: BaseException, extra: list[object] | None = None) -> None:
        for job in [*self._active, *self._waiting]:
            if not job.future.done():
                job.future.set_exception(error)
        self._active, self._waiting = [], deque()
