"""HTTP-agnostic continuous batching for diffusion sampling: one denoising loop per diffusion model.

A request (n images, a seed, a number of steps) waits in a bounded queue, joins the running batch
between two denoising steps, advances one DDIM update per step together with every other running
request (each at its own timestep), and leaves as soon as its own schedule ends. Between steps, a
request whose deadline has passed is dropped with ``DeadlineExceeded`` and one whose client went away
is dropped silently, so neither holds the device for the rest of its steps. All torch work runs in
the device's inference thread, one call per step.
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
from service.engine.scheduler import Scheduler
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


class DenoisingLoop(Scheduler):
    kind = "denoiser"

    def __init__(self, name: str, runtime: DiffusionRuntime, executor: Executor, max_active_rows: int,
                 max_queue: int, observer: SchedulerMetrics | None = None) -> None:
        super().__init__(name)
        self.runtime = runtime
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
    async def submit(self, request: SampleRequest, deadline: float, arrival: float | None = None) -> Samples:
        """Sample ``request``; cancelling the awaiting task drops it before its next step. ``arrival``: when its
        request reached the server (``time.monotonic()``)."""
        if not self.alive:
            raise ModelUnavailable(self._dead_reason or "the model is not started")
        if self.depth + request.n > self.max_queue:
            raise QueueFull(retry_after_s=1)
        job = _Job(request, asyncio.get_running_loop().create_future(), deadline, arrival=arrival or time.monotonic())
        self._waiting.append(job)
        self._wakeup.set()
        try:
            return await job.future
        finally:
            self._wakeup.set()  # a cancelled job frees its rows at the next step

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_leavers()
            if not self._active and not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._admit()
            jobs, rows = list(self._active), sum(job.request.n for job in self._active)
            started = time.perf_counter()
            try:
                finished = await loop.run_in_executor(self._executor, self._step, jobs)
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
            for job, images in finished:
                self._active.remove(job)
                if not job.future.done():
                    job.future.set_result(Samples(job.request.seed, images, [None] * job.request.n))
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

    def _step(self, jobs: list[_Job]) -> list[tuple[_Job, np.ndarray]]:
        """Worker thread: start the joiners, then one update of every row; returns the jobs now done."""
        runtime = self.runtime
        for job in jobs:
            if job.x is None:
                job.x, job.schedule = runtime.noise(job.request), runtime.schedule(job.request)
        t, t_next = [], []
        for job in jobs:
            schedule = job.schedule
            now, then = schedule[job.position], schedule[job.position + 1] if job.position + 1 < len(schedule) else -1
            t += [now] * job.request.n
            t_next += [then] * job.request.n
        x = runtime.step(torch.cat([job.x for job in jobs if job.x is not None]), t, t_next)
        finished = []
        for job, rows in zip(jobs, x.split([job.request.n for job in jobs]), strict=True):
            job.x, job.position = rows, job.position + 1
            if job.position == len(job.schedule):
                finished.append((job, runtime.pixels(rows)))
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
