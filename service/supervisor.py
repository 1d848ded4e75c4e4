"""The supervisor: one engine process per device and ``SERVE_WORKERS`` HTTP front-end processes.

It opens one listening socket per front-end on the one port (``SO_REUSEPORT``: the kernel spreads new
connections evenly over them) and keeps them, so a restarted front-end takes over its own socket and
the connections waiting on it. It gives the front-ends the engine's ZeroMQ address and a shared
Prometheus multiprocess directory, and restarts any child that dies. Restarts back off (0.25 s,
doubling up to 10 s) while a child keeps dying young, so a crash loop does not spin hot; a child
that lived 30 s starts from the shortest wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import multiprocess

from service.serving import ABORT_MARGIN_S, drain_deadlines_s, grace_s
from service.settings import Settings

log = logging.getLogger("service.supervisor")
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 10.0
HEALTHY_AFTER_S = 30.0
REPEAT_AFTER_S = 1.0  # a signal sooner than this after the first is the first delivered twice (a process group's)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    failures: int = 0  # deaths in a row, each within HEALTHY_AFTER_S of its start
    restarts: int = 0
    history: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, pass_fds=self.pass_fds)
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def reap(self) -> int | None:
        """The exit code if the child just ended (then it is scheduled to restart), else None."""
        if self.process is None or (code := self.process.poll()) is None:
            return None
        lived = time.monotonic() - self.started_at
        self.failures = 1 if lived >= HEALTHY_AFTER_S else self.failures + 1
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self.failures - 1))
        self.restart_at = time.monotonic() + delay
        log.error("%s (pid %d) exited with %d after %.1f s; restarting in %.2f s", self.name, self.process.pid,
                  code, lived, delay)
        return code


class Supervisor:
    def __init__(self, settings: Settings, overrides: dict[str, str]) -> None:
        self.settings = settings
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="serve-"))
        env = {**os.environ, **{f"SERVE_{name.upper()}": str(value) for name, value in overrides.items()}}
        env["SERVE_ENGINE_ADDRESS"] = f"ipc://{self.runtime_dir / 'engine-0.sock'}"
        env["SERVE_WORKERS"] = str(settings.workers)  # resolved here once: every child counts the same front-ends
        env.pop("SERVE_IN_PROCESS", None)
        if "PROMETHEUS_MULTIPROC_DIR" not in env:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.runtime_dir / "metrics")
            (self.runtime_dir / "metrics").mkdir()
        self.metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
        self.listeners = bind(settings.host, settings.port, settings.workers)
        python = [sys.executable, "-m"]
        self.engine = Child("engine cpu" if settings.device == "cpu" else f"engine {settings.device}",
                            [*python, "service.engine"], env)
        self.frontends = [Child(f"front-end {i}", [*python, "service.frontend", "--fd", str(listener.fileno())],
                                {**env, "SERVE_FRONTEND_INDEX": str(i)}, pass_fds=(listener.fileno(),))
                          for i, listener in enumerate(self.listeners)]
        self.stopping = False
        self.stop_signal: int = signal.SIGTERM
        self.stop_at = 0.0
        self.abort_requested = False

    @property
    def children(self) -> list[Child]:
        return [self.engine, *self.frontends]

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        host, port = self.listeners[0].getsockname()[:2]
        log.info("serving on http://%s:%d with %d front-ends and one engine", host, port, len(self.frontends))
        for child in self.children:
            child.start()
        try:
            while not self.stopping:
                self._tend()
                time.sleep(0.05)
        finally:
            self._shutdown()

    def _tend(self) -> None:
        now = time.monotonic()
        for child in self.children:
            pid = child.process.pid if child.process else None
            if child.reap() is not None:
                multiprocess.mark_process_dead(pid, self.metrics_dir)  # its live gauges no longer count
                child.process = None
            if child.process is None and now >= child.restart_at and not self.stopping:
                child.restarts += 1
                if child is self.engine:  # it counts itself in serve_engine_restarts_total
                    child.env["SERVE_ENGINE_RESTARTS"] = str(child.restarts)
                child.start()

    def _stop(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if not self.stopping:
            self.stopping, self.stop_signal, self.stop_at = True, signum, now
        elif now - self.stop_at >= REPEAT_AFTER_S:  # a second request to stop (not the first, delivered twice)
            self.abort_requested = True

    def _shutdown(self) -> None:
        """The drain: the front-ends get the signal (readiness false at once; they accept for SERVE_DRAIN_DELAY_S
        more, then close their sockets and finish their requests within the grace period), then the engine
        (which finished their work). A second signal is passed on: the front-ends fail what is left with 503s."""
        for listener in self.listeners:  # the front-ends hold their own descriptors: when they close them,
            listener.close()  # the port stops accepting
        settings = self.settings
        delay = 0.0 if self.stop_signal == signal.SIGINT else settings.drain_delay_s
        grace = grace_s(settings, drain_deadlines_s(settings))
        log.info("draining: %d front-ends accept for %.1f s more and finish their work within %.1f s",
                 len(self.frontends), delay, grace)
        started = time.monotonic()
        # a front-end fails what is left at delay + grace; the engine stops once they are gone
        for group, limit in ((self.frontends, delay + grace + ABORT_MARGIN_S + 5), ([self.engine], 15.0)):
            running = [child.process for child in group if child.process and child.process.poll() is None]
            for process in running:
                process.send_signal(self.stop_signal)
            passed_on, signalled = False, time.monotonic()
            while any(process.poll() is None for process in running) and time.monotonic() - signalled < limit:
                if self.abort_requested and not passed_on:
                    log.warning("a second signal: the front-ends fail what is left with 503")
                    for process in running:
                        with contextlib.suppress(ProcessLookupError):
                            process.send_signal(signal.SIGTERM)
                    passed_on = True
                time.sleep(0.05)
            for process in running:
                if process.poll() is None:
                    log.error("pid %d did not stop in time: killing it", process.pid)
                    process.kill()
                    process.wait()
        log.info("drained in %.1f s", time.monotonic() - started)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def bind(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port, one per front-end.

    With one shared socket, whichever front-end wakes first accepts a whole burst of new connections
    (asyncio accepts up to its backlog per wake-up), and keep-alive clients then stay on it: a benchmark
    start once left one front-end with all 64 connections and the other idle. With ``SO_REUSEPORT`` the
    kernel assigns each new connection to a socket by its address hash, so they spread evenly. The port
    is first bound alone, so a port that another server holds (even with ``SO_REUSEPORT``) fails here.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # EADDRINUSE if taken; port 0 picks a free one for every socket below
        port = probe.getsockname()[1]
    spread = hasattr(socket, "SO_REUSEPORT")
    listeners = []
    for _ in range(count if spread else 1):
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spread:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
        listener.listen(2048)
        listener.set_inheritable(True)
        listeners.append(listener)
    return listeners * (1 if spread else count)  # without SO_REUSEPORT: one socket shared by all
