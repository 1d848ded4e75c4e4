"""The watchdog of an engine's inference thread: a forward, or a step of a generation or denoising loop, that
runs far past its usual time is a hung engine (a deadlocked kernel, a stuck device, a runtime that loops).

Every call a scheduler hands to the inference thread is timed under its own key (the scheduler's model and
the method: ``mnist-cnn/1 _timed_forward``), with a moving average of its past durations. A call that has
run longer than ``multiple`` times its average, and at least ``floor_s``, trips the watchdog: in an engine
process it exits (status 75), the front-ends see its socket close and fail the requests waiting on it with
503 at once, and the supervisor starts a new engine; in a development server (the engine inside the HTTP
process, nobody to restart it) every model is marked dead, so requests get 503s and readiness turns false.
A thread watches, not the event loop: the loop may be the thing that is stuck.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("service.engine.watchdog")
CHECK_EVERY_S = 0.05
EMA_WEIGHT = 0.2  # of the newest duration


class Watchdog:
    def __init__(self, floor_s: float, multiple: float, on_hang: Callable[[str], None]) -> None:
        self.floor_s = floor_s
        self.multiple = multiple
        self.on_hang = on_hang
        self._averages: dict[str, float] = {}
        self._running: dict[int, tuple[str, float, float]] = {}  # inference thread -> key, started, allowed s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="engine-watchdog", daemon=True)
        self.tripped: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def allowed_s(self, key: str) -> float:
        average = self._averages.get(key)
        return self.floor_s if average is None else max(self.floor_s, self.multiple * average)

    def run(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` (in the inference thread) under watch."""
        started, thread = time.monotonic(), threading.get_ident()
        self._running[thread] = (key, started, self.allowed_s(key))
        try:
            return fn(*args, **kwargs)
        finally:
            del self._running[thread]
            seconds = time.monotonic() - started
            average = self._averages.get(key)
            self._averages[key] = seconds if average is None else (1 - EMA_WEIGHT) * average + EMA_WEIGHT * seconds

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_EVERY_S):
            for key, started, allowed in list(self._running.values()):  # (a device may run two calls at once)
                self._check(key, started, allowed)

    def _check(self, key: str, started: float, allowed: float) -> None:
        ran = time.monotonic() - started
        if self.tripped or ran <= allowed:
            return
        average = self._averages.get(key)
        usual = f"usually {average * 1000:.1f} ms" if average is not None else "its first run"
        self.tripped = (f"{key} has run {ran:.1f} s ({usual}; the limit is {allowed:.1f} s): "
                        "the inference thread is hung")
        log.critical("watchdog: %s", self.tripped)
        self.on_hang(self.tripped)
