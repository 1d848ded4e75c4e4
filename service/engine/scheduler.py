"""What every scheduler (batcher, generation loop, denoising loop) shares: one asyncio task per model
version that knows whether it is alive and, when it is not, why, and fails whatever waits on it instead
of leaving it hanging."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.outcomes import ModelUnavailable

log = logging.getLogger("service.engine.scheduler")


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
