"""The engine: loads every model once, runs every scheduler and forward, and serves the front-ends over
the transport. ``python -m service.engine`` runs it as a process of its own (the supervisor starts one
per device); ``InProcessEngine`` runs the same thing inside a front-end (development, unit tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import torch
import uvloop
import zmq
import zmq.asyncio

from service import tracing
from service.engine.registry import Registry
from service.engine.server import EngineServer
from service.engine.watchdog import Watchdog
from service.logging_setup import configure_logging
from service.metrics import Metrics
from service.serving import ABORT_MARGIN_S, grace_s
from service.settings import Settings

log = logging.getLogger("service.engine")
HUNG_EXIT_CODE = 75  # EX_TEMPFAIL: the watchdog found the inference thread hung


class InProcessEngine:
    def __init__(self, settings: Settings, metrics: Metrics, context: zmq.asyncio.Context, address: str,
                 exit_on_hang: bool = False) -> None:
        self.settings = settings
        self.metrics = metrics
        self.context = context
        self.address = address
        self.exit_on_hang = exit_on_hang  # an engine process exits (its supervisor restarts it)
        self._tasks: list[asyncio.Task[None]] = []
        self.watchdog: Watchdog | None = None

    async def start(self) -> None:
        torch.set_num_threads(self.settings.resolved_torch_threads())
        if self.settings.watchdog_floor_s > 0:
            self.watchdog = Watchdog(self.settings.watchdog_floor_s, self.settings.watchdog_multiple,
                                     self._on_hang)
            self.watchdog.start()
        self.registry = Registry(self.settings, self.metrics, self.watchdog)
        self._loop = asyncio.get_running_loop()
        self.socket: zmq.Socket[bytes] = zmq.Socket(self.context, zmq.ROUTER)  # read by a SocketPump
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.address)
        self.server = EngineServer(self.registry, self.socket)
        # Serve at once (status queries answer "loading"); load in the background.
        self._tasks = [asyncio.create_task(self.server.serve(), name="engine-serve"),
                       asyncio.create_task(self.registry.load_all(), name="engine-load"),
                       asyncio.create_task(self.server.announce_changes(), name="engine-announce")]
        if self.settings.model_control == "poll":
            self._tasks.append(asyncio.create_task(self.registry.poll(), name="engine-poll"))
        self._tasks[0].add_done_callback(_crash_on_exit)

    def yield_to_inference(self, nice: int) -> None:
        """Lower this thread's priority (the event loop's; threads it starts later inherit it), the device's
        inference threads having started at its priority with the registry: under load the forwards get the cores
        first. Measured on 2 cores,
        mnist-cnn at 64 connections, front-ends at nice 10 both times: the loop at nice 0 served 670-713 req/s,
        at nice 10 706-731."""
        if nice:
            os.nice(nice)

    def _on_hang(self, reason: str) -> None:
        """Called by the watchdog's thread."""
        if self.exit_on_hang:
            logging.shutdown()
            os._exit(HUNG_EXIT_CODE)
        self._loop.call_soon_threadsafe(self.registry.fail_all, f"the engine is hung: {reason}")

    async def drain(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, until no front-end is connected and no request is running: the engine
        outlives its front-ends' drain even when a signal reached every process at once (Ctrl-C, a process
        group's SIGTERM)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and (self.server.frontends_connected() or self.server.in_flight):  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # (a front-end's silence is no event: poll)
        if self.server.in_flight:
            log.error("drain: %d requests still running after %.1f s: stopping them", self.server.in_flight,
                      timeout_s)

    async def stop(self) -> None:
        self._tasks[0].remove_done_callback(_crash_on_exit)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.watchdog is not None:
            self.watchdog.stop()
        await self.registry.close()
        await self.server.finish()
        self.socket.close(linger=0)


def _crash_on_exit(task: asyncio.Task[None]) -> None:
    """The serving task never ends by itself: if it does, the engine is broken; die loudly so the supervisor
    restarts it, rather than linger deaf."""
    if not task.cancelled():
        log.critical("the engine's serving task ended: %r", task.exception())
        os._exit(70)


async def serve(settings: Settings) -> None:
    if settings.engine_address is None:
        raise SystemExit("SERVE_ENGINE_ADDRESS must be set for an engine process")
    context = zmq.asyncio.Context()
    metrics = Metrics()
    if settings.engine_restarts:  # a restarted engine: the counter's files outlive the engines before it
        metrics.engine_restarts.inc()
    engine = InProcessEngine(settings, metrics, context, settings.engine_address, exit_on_hang=True)
    await engine.start()
    engine.yield_to_inference(settings.nice)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(_stop_when_orphaned(stop))
    log.info("engine %d serving on %s", os.getpid(), settings.engine_address)
    await stop.wait()
    watcher.cancel()
    deadlines = [served.config.timeout_s for served in engine.registry.all() if served.config is not None]
    await engine.drain(settings.drain_delay_s + grace_s(settings, deadlines) + ABORT_MARGIN_S)
    await engine.stop()
    engine.metrics.process_exit()
    context.term()


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """An engine whose supervisor died (even by SIGKILL) stops too, instead of holding the device."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 (no event exists for a parent's death: poll)
        await asyncio.sleep(0.5)
    log.error("the supervisor is gone: stopping")
    stop.set()


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    tracing.setup("engine")
    # uvloop, as the front-ends' uvicorn runs: its event loop's own cost per message is a fraction of asyncio's
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))
