"""A front-end's graceful drain: uvicorn's server, with its signal handling replaced.

On SIGTERM (an orchestrator stopping the pod or container):

1. readiness turns false at once (``/v2/health/ready`` answers 503 "draining"), and
2. requests are still accepted and served for ``SERVE_DRAIN_DELAY_S``, while load balancers notice;
3. then the listening socket closes (new connections are refused) and idle keep-alive connections close;
4. everything in flight (streams included) finishes, within the grace period (``SERVE_DRAIN_GRACE_S``,
   by default the longest model deadline plus 5 s), and the process exits with status 0.

A second signal (at least a second after the first: a signal sent to the whole process group reaches a
front-end twice, from the sender and from the supervisor) or the end of the grace period fails what is
still waiting on the engine with 503s, ends the streams with an error event, and exits as cleanly.
SIGINT (Ctrl-C at a terminal, where no load balancer listens) skips the accepting delay.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.serving import ABORT_MARGIN_S, grace_s
from service.settings import Settings

log = logging.getLogger("service.frontend.drain")
REPEAT_AFTER_S = 1.0  # a signal sooner than this after the first is the same request, delivered twice


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings) -> None:
        super().__init__(config)
        self.app = app
        self.delay_s = settings.drain_delay_s
        self.settings = settings
        self.drain_started: float | None = None
        self.abort_requested = False
        self._watcher: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs as a signal handler: it only records what was asked; the event loop acts on it (``on_tick``)."""
        now = time.monotonic()
        if self.drain_started is None:
            self.drain_started = now
            if sig == signal.SIGINT:
                self.delay_s = 0.0
        elif now - self.drain_started >= REPEAT_AFTER_S:
            if self.abort_requested:  # a third: stop waiting for anything
                self.force_exit = True
            self.abort_requested = True

    async def on_tick(self, counter: int) -> bool:
        stop = await super().on_tick(counter)
        if self.drain_started is None:
            return stop
        if self._watcher is None:
            self._start_drain()
        return stop or time.monotonic() >= self.drain_started + self.delay_s or self.abort_requested

    def _start_drain(self) -> None:
        catalog = getattr(self.app.state, "catalog", None)
        grace = grace_s(self.settings, [served.config.timeout_s for served in catalog.all()] if catalog else [])
        self.config.timeout_graceful_shutdown = int(self.delay_s + grace + ABORT_MARGIN_S) + 1
        self.app.state.draining = True
        log.info("draining: not ready; accepting for %.1f s more, then finishing the work in flight within "
                    "%.1f s", self.delay_s, grace)
        self._watcher = asyncio.get_running_loop().create_task(self._abort_at(grace), name="drain-grace")

    async def _abort_at(self, grace: float) -> None:
        """At the end of the grace period, or on a second signal: fail what is still waiting with 503s."""
        assert self.drain_started is not None
        end = self.drain_started + self.delay_s + grace
        while time.monotonic() < end and not self.abort_requested:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # (a signal handler sets the flag: it may not touch the event loop)
        engine = getattr(getattr(self.app.state, "catalog", None), "engine", None)
        if engine is not None:
            cause = "a second signal" if self.abort_requested else f"the grace period of {grace:g} s ended"
            log.error("drain: %s; failing %d requests in flight with 503", cause, engine.in_flight)
            engine.refuse_all("the server is shutting down")
