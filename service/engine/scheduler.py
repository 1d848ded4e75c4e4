"""What every scheduler (batcher, generation loop, denoising loop) shares: one asyncio task per model
version that knows whether it is alive and, when it is not, why, and fails whatever waits on it instead
of leaving it hanging."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from service.engine.device import Device
from service.outcomes import ModelUnavailable

log = logging.getLogger("service.engine.scheduler")


@dataclass(frozen=True)
class Objective:
    """A model's latency objective: how long its requests may take (a batcher's and a denoiser's, from arrival
    to result; a language model's, per token), and its priority levels (1 the highest; ``default`` for requests
    that name none). A request's work is due by its arrival + the objective scaled by its level over the
    default: at level 1 of default 2, in half the time, so the device takes it ahead of others."""

    seconds: float = 0.1
    levels: int = 1
    default: int = 1

    def __post_init__(self) -> None:
        if self.seconds <= 0 or not 1 <= self.default <= self.levels:
            raise ValueError(f"invalid latency objective {self}")

    def level(self, priority: int) -> int:
        """A request's priority (0: the default) as a level within the model's."""
        return self.default if priority <= 0 else min(priority, self.levels)

    def due(self, arrival: float, priority: int = 0) -> float:
        return arrival + self.seconds * self.level(priority) / self.default


def on_device(executor: Executor, fn: Callable[..., Any], *args: Any, deadline: float, model: str,
              account: Callable[[float], None] | None = None) -> asyncio.Future[Any]:
    """Run ``fn(*args)`` on the device, due by ``deadline``: through the device scheduler, which weighs it against
    every other model's work; on a plain executor (a unit test's) in its order."""
    if isinstance(executor, Device):
        return executor.run(fn, *args, deadline=deadline, model=model, account=account)
    return asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def pieces_on_device(executor: Executor, fn: Callable[..., Any], pieces: list[tuple[Any, ...]], *,
                           deadline: float, model: str, account: Callable[[float], None] | None = None) -> list[Any]:
    """Run ``fn(*args)`` for each of ``pieces`` in order, their results in order; the first exception raised
    (after every piece ran: a piece after a failed one must see the failure and do nothing)."""
    if isinstance(executor, Device):
        futures = [asyncio.wrap_future(future) for future in executor.submit_pieces(
            fn, pieces, deadline=deadline, model=model, account=account)]
    else:
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(executor, fn, *args) for args in pieces]
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class Scheduler:
    kind = "scheduler"

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._dead_reason: str | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def _fail_pending(self, error: BaseException, extra: list[Any] | None = None) -> None:
        """Fail everything queued or running (and ``extra``) with ``error``."""
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.kind}:{self.name}")
            self._task.add_done_callback(self._on_exit)

    async def stop(self) -> None:
        if self._dead_reason is None:  # said first: the task's exit must not read as a crash or a stop of its own
            self._dead_reason = "the model is shutting down"
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._die(self._dead_reason)

    def fail(self, reason: str) -> None:
        """Die now with ``reason`` (the engine is hung): fail what waits, report not alive."""
        self._die(reason)

    @property
    def alive(self) -> bool:
        return self._task is not None and self._dead_reason is None

    @property
    def dead_reason(self) -> str | None:
        return self._dead_reason

    def _die(self, reason: str, extra: list[Any] | None = None) -> None:
        if self._dead_reason is None:
            self._dead_reason = reason
        self._fail_pending(ModelUnavailable(self._dead_reason), extra)
        if self._task is not None and not self._task.done() and asyncio.current_task() is not self._task:
            self._task.cancel()

    def _on_exit(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("model %s: the %s task crashed", self.name, self.kind, exc_info=task.exception())
            self._die(f"the {self.kind} task crashed: {task.exception()!r}")
        elif self._dead_reason is None:
            self._die(f"the {self.kind} task stopped")
