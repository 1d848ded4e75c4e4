"""Readiness across worker processes (``SERVE_WORKERS`` > 1).

The workers share one port, so a probe reaches one of them at random: the server is ready only when
every worker is. Each worker keeps a heartbeat file (named by its pid) in a directory they share while
its own models are ready, and removes it when they are not; the readiness probe counts the fresh ones.
A worker that crashed or hangs stops refreshing its file and stops counting within ``FRESH_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

BEAT_S = 1.0
FRESH_S = 3.0


class WorkerPeers:
    def __init__(self, directory: Path, expected: int) -> None:
        self.directory = directory
        self.expected = expected
        self._mine = directory / str(os.getpid())

    async def beat(self, is_ready: Callable[[], bool]) -> None:
        """Run for the life of the worker: keep this worker's file fresh while it is ready."""
        try:
            while True:
                if is_ready():
                    self._mine.write_text(str(time.time()))
                else:
                    self._mine.unlink(missing_ok=True)
                await asyncio.sleep(BEAT_S)
        finally:
            self._mine.unlink(missing_ok=True)

    def ready_count(self) -> int:
        now, count = time.time(), 0
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):  # a worker may remove its file while we look
                if now - path.stat().st_mtime < FRESH_S:
                    count += 1
        return count

    @property
    def all_ready(self) -> bool:
        return self.ready_count() >= self.expected
