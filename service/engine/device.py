"""The device scheduler: the one place that decides what a device runs next, across every model on it.

Every model's scheduler (batcher, generation loop, denoising loop) hands its work here as short calls, each
tagged with its model and the deadline its requests' latency objectives give it (a batch: its oldest input's
arrival + the model's objective, shortened for a higher priority; a decoding step: now + the time allowed per
token; a denoising piece: its request's arrival + the model's objective). The device runs the work with the
least slack first: its deadline minus what this model's calls of that kind have cost so far, measured here as
they run (earliest-deadline-first, with each call's measured cost). A model's calls never run two at once; the
pieces of one long call share a deadline and run in the order handed over.

Long work is handed over cut into pieces (a denoising step as one piece per forward), so a classifier's batch
waits for at most one piece, not a whole step. With two lanes (the default), a second thread runs other models'
short calls while the first runs a long one: then the classifier does not wait for the piece either. Why this
policy, and the measurements that chose it, are in the README ("One device, many models").

Every tagged call runs under the watchdog (timed per model and kind of call). The device's threads are its
inference threads; ``submit`` (the ``Executor`` interface) hands over untagged work, due now.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from service.engine.watchdog import Watchdog

log = logging.getLogger("service.engine.device")
COST_WEIGHT = 0.2  # of the newest duration in a kind of call's measured cost
MAX_PENDING = 4096  # calls waiting: each scheduler hands over at most a step's pieces at once; far more is a bug
SHORT_S = 0.010  # a second lane takes only calls that have cost at most this (a classifier's batch, not a piece)


@dataclass(order=True)
class _Work:
    latest_start: float  # deadline - measured cost: the least slack runs first
    order: int  # ties, and one model's calls among themselves: in the order handed over
    deadline: float = field(compare=False)
    model: str = field(compare=False)
    kind: str = field(compare=False)
    fn: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    future: Future[Any] = field(compare=False)
    account: Callable[[float], None] | None = field(compare=False, default=None)
    started: float = field(compare=False, default=0.0)  # time.monotonic() when a lane took it


class Device(Executor):
    """A device's inference threads (its lanes) and the queue of calls they choose from."""

    def __init__(self, name: str, watchdog: Watchdog | None = None, lanes: int = 1, cuda: Any = None) -> None:
        """``lanes``: 1, one call at a time; 2, a second thread that runs short calls (measured at most SHORT_S)
        of other models while the first runs a long one: one measured long, or one that has run past SHORT_S
        this time (a decoding step that refills its rows' context), so a short call waits at most SHORT_S
        (Triton's instance groups, for the light models).
        ``cuda``: the torch CUDA device, where the device is one: the second lane's kernels go on a stream of
        its own, so they run beside the first lane's instead of queueing behind them on the default stream."""
        self.name = name
        self._cuda = cuda
        self.watchdog = watchdog
        self._ready = threading.Condition()
        self._waiting: list[_Work] = []  # a heap
        self._order = itertools.count()
        self._costs: dict[tuple[str, str], float] = {}  # (model, kind) -> seconds, a moving average
        self._closed = False
        self._running: dict[int, _Work] = {}  # lane -> the call it runs
        self._threads = [threading.Thread(target=self._serve, args=(lane,), name=f"infer-{name}-{lane}", daemon=True)
                         for lane in range(lanes)]
        for thread in self._threads:
            thread.start()

    # -- handing work over -------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """``Executor.submit``: an untagged call, due now (a model's first warm call, a test's)."""
        call = (lambda: fn(*args, **kwargs)) if kwargs else fn
        owner = getattr(fn, "__self__", None)
        model = getattr(owner, "name", "")
        return self.submit_at(call, *(() if kwargs else args), deadline=time.monotonic(),
                              model=model if isinstance(model, str) else "", kind=getattr(fn, "__name__", "call"),
                              watched=isinstance(model, str) and bool(model))

    def submit_at(self, fn: Callable[..., Any], *args: Any, deadline: float, model: str, kind: str | None = None,
                  account: Callable[[float], None] | None = None, watched: bool = True) -> Future[Any]:
        """Hand over ``fn(*args)`` for ``model``, due by ``deadline`` (``time.monotonic()``); ``account`` gets the
        seconds it held the device."""
        [future] = self._push(fn, [args], deadline, model, kind, account, watched)
        return future

    def submit_pieces(self, fn: Callable[..., Any], pieces: list[tuple[Any, ...]], *, deadline: float, model: str,
                      account: Callable[[float], None] | None = None) -> list[Future[Any]]:
        """``fn(*args)`` for each ``args`` of ``pieces``: one long piece of work cut up. They share one deadline
        and slack, so they run in this order; other models' more urgent calls run between them."""
        return self._push(fn, pieces, deadline, model, None, account, True)

    def _push(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], deadline: float, model: str,
              kind: str | None, account: Callable[[float], None] | None, watched: bool) -> list[Future[Any]]:
        """Queue ``fn(*args)`` for each of ``calls``, all with one deadline and slack (read once, so they keep
        their order)."""
        kind = kind or str(getattr(fn, "__name__", "call"))
        futures: list[Future[Any]] = [Future() for _ in calls]
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if len(self._waiting) + len(calls) > MAX_PENDING:
                raise RuntimeError(f"the device {self.name} has {MAX_PENDING} calls waiting")
            latest_start = deadline - self._costs.get((model, kind), 0.0)
            run = self._watched(model, kind, fn) if watched and model and self.watchdog is not None else fn
            for args, future in zip(calls, futures, strict=True):
                heapq.heappush(self._waiting, _Work(latest_start, next(self._order), deadline, model, kind, run,
                                                    args, future, account))
            self._ready.notify_all()
        return futures

    def run(self, fn: Callable[..., Any], *args: Any, deadline: float, model: str,
            account: Callable[[float], None] | None = None) -> asyncio.Future[Any]:
        """``submit_at`` for the event loop: an awaitable of the call's result."""
        return asyncio.wrap_future(self.submit_at(fn, *args, deadline=deadline, model=model, account=account))

    def _watched(self, model: str, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        watchdog = self.watchdog
        assert watchdog is not None
        return lambda *args: watchdog.run(f"{model} {kind}", fn, *args)

    def cost_s(self, model: str, kind: str) -> float | None:
        """What a ``kind`` call of ``model`` has cost, on average lately (None before its first)."""
        return self._costs.get((model, kind))

    @property
    def depth(self) -> int:
        return len(self._waiting)

    # -- the inference threads ---------------------------------------------------------------------
    def _next(self, lane: int) -> _Work | None:
        """The waiting call with the least slack that this lane may take: one whose model has no call running
        (a model's calls never overlap), and on a second lane only a short one while the first lane is busy;
        None once shut down and empty."""
        with self._ready:
            while True:
                work = self._eligible(lane)
                if work is not None:
                    self._waiting.remove(work)
                    heapq.heapify(self._waiting)
                    work.started = time.monotonic()
                    self._running[lane] = work
                    return work
                if self._closed and (lane > 0 or not self._waiting):
                    return None
                first = self._running.get(0)
                if lane > 0 and first is not None and self._waiting:
                    # the first lane's call may outrun SHORT_S (a step that refills, a big prefill): look again then
                    self._ready.wait(max(0.001, first.started + SHORT_S - time.monotonic()))
                else:
                    self._ready.wait()

    def _eligible(self, lane: int) -> _Work | None:
        if not self._waiting:
            return None
        busy = {work.model for work in self._running.values()}
        if lane == 0:
            if not busy:
                return self._waiting[0]  # the heap's least slack
            return min((w for w in self._waiting if w.model not in busy), default=None)
        first = self._running.get(0)
        if first is None or (self._is_short(first) and time.monotonic() - first.started < SHORT_S):
            return None  # the first lane is free, or busy only briefly: waiting for it costs little
        return min((w for w in self._waiting if w.model not in busy and self._is_short(w)), default=None)

    def _is_short(self, work: _Work) -> bool:
        """Measured to take at most SHORT_S (a call never measured is not)."""
        return self._costs.get((work.model, work.kind), SHORT_S + 1) <= SHORT_S

    def _serve(self, lane: int) -> None:
        if lane > 0 and self._cuda is not None:
            import torch

            torch.cuda.set_stream(torch.cuda.Stream(self._cuda))  # this thread's current stream from now on
        while (work := self._next(lane)) is not None:
            if not work.future.set_running_or_notify_cancel():
                continue
            started = time.perf_counter()
            try:
                result = work.fn(*work.args)
            except BaseException as exc:
                work.future.set_exception(exc)
            else:
                work.future.set_result(result)
            finally:
                seconds = time.perf_counter() - started
                key = (work.model, work.kind)
                with self._ready:
                    del self._running[lane]
                    cost = self._costs.get(key)
                    self._costs[key] = seconds if cost is None else (1 - COST_WEIGHT) * cost + COST_WEIGHT * seconds
                    self._ready.notify_all()  # a model's next call, or the second lane's, may run now
                if work.account is not None:
                    try:
                        work.account(seconds)
                    except Exception:  # a metric must never end an inference thread
                        log.exception("accounting %.3f s of %s's device time failed", seconds, work.model)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._closed = True
            if cancel_futures:
                for work in self._waiting:
                    work.future.cancel()
                self._waiting.clear()
            self._ready.notify_all()
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()
