"""The servers under test: how to start each on a loopback port, wait until ready, and always stop it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # all traffic stays on loopback
PREDICT_PATH = "/v1/models/mnist-cnn/predict"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]  # "{port}" is replaced by the port
    ready_path: str
    has_metrics: bool = False
    processes: str = ""  # what it runs with, in words, for the report

    def command(self, port: int) -> list[str]:
        return [part.replace("{port}", str(port)) for part in self.argv]


def ours_batching(max_batch_size: int | None, max_delay_ms: float | None) -> tuple[int, float]:
    """Our batching for the run: what was asked, else the server's own defaults."""
    from service.settings import REPO_ROOT, Settings

    defaults = Settings(weights_dir=REPO_ROOT / "weights")
    return (max_batch_size or defaults.max_batch_size,
            max_delay_ms if max_delay_ms is not None else defaults.max_delay_ms)


def specs(weights: Path, torch_threads: int, ours_batching: tuple[int, float],
          litserve_batching: tuple[int, float], workers: int | None = None) -> list[ServerSpec]:
    """Ours and the two baselines, with the same weights and torch threads; the batchings are each server's
    (max batch size, max delay or batch timeout in ms).

    ``workers`` None leaves each server at its own default process count (ours: SERVE_WORKERS front-ends;
    naive: one uvicorn process; LitServe: workers_per_device=1); a number is passed to all three.
    """
    py, common = sys.executable, ["--port", "{port}", "--weights", str(weights), "--torch-threads", str(torch_threads)]
    flag = [] if workers is None else ["--workers", str(workers)]
    batching = ["--max-batch-size", str(ours_batching[0]), "--max-delay-ms", f"{ours_batching[1]:g}"]
    lit_batching = ["--max-batch-size", str(litserve_batching[0]), "--max-delay-ms", f"{litserve_batching[1]:g}"]
    ours = [py, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir", str(weights.parent.parent),
            "--models", weights.parent.name, "--device", "cpu", "--torch-threads", str(torch_threads),
            *flag, *batching, "--log-level", "warning"]
    front_ends = f"{default_workers()} front-ends (its default)" if workers is None else f"{workers} front-ends"
    n = 1 if workers is None else workers
    return [
        ServerSpec("ours", ours, "/v2/health/ready", has_metrics=True,
                   processes=f"supervisor, one engine, {front_ends}"),
        ServerSpec("naive", [py, "-m", "bench.baselines.naive_fastapi", "--host", HOST, *common, *flag], "/health",
                   processes=f"{n} uvicorn worker(s)" + (" (its default)" if workers is None else "")),
        ServerSpec("litserve", [py, "-m", "bench.baselines.litserve_server", "--host", HOST, *common, *flag,
                                *lit_batching], "/health",
                   processes=f"workers_per_device={n}" + (" (its default)" if workers is None else "")),
    ]


def default_workers() -> int:
    """Our SERVE_WORKERS default on this machine (the servers start without SERVE_* in their environment)."""
    from service.settings import REPO_ROOT, Settings

    return Settings(weights_dir=REPO_ROOT / "weights").workers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    headers = {"content-type": "image/png"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def client(base_url: str, timeout_s: float, keepalive: bool = True) -> httpx.Client:
    """One connection at a time (kept alive or not), with TCP_NODELAY as curl, Go and browsers set it (httpx does
    not, and writes a POST's body apart from its headers), so the client's own Nagle delay is not measured."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1 if keepalive else 0)
    transport = httpx.HTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)


def predict(base_url: str, png: bytes) -> dict[str, Any]:
    status, body = http(base_url + PREDICT_PATH, png)
    if status != 200:
        raise RuntimeError(f"{base_url}{PREDICT_PATH} answered {status}: {body[:300]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


async def classify_digits(base: str, bodies: list[bytes], stop: asyncio.Event,
                          record: list[tuple[float, float, int]], pause_s: float = 0.0) -> None:
    """One closed-loop client posting MNIST PNGs to mnist-cnn until ``stop``, a ``pause_s`` pause between
    requests: (sent at, seconds, status) of each into ``record`` (``time.monotonic()``)."""
    async with httpx.AsyncClient(timeout=60) as http:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            response = await http.post(f"{base}/v1/models/mnist-cnn/predict", content=bodies[i % len(bodies)],
                                       headers={"content-type": "image/png"})
            record.append((started, time.monotonic() - started, response.status_code))
            i += 1
            if pause_s:
                await asyncio.sleep(pause_s)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of one metric's samples in Prometheus text (``/metrics``) whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass(frozen=True)
class Server:
    base_url: str
    pid: int  # the started process, leader of its process group


@contextmanager
def started(spec: ServerSpec, log_path: Path, startup_timeout_s: float, cwd: Path = REPO_ROOT) -> Iterator[Server]:
    """Start ``spec`` in its own process group (from ``cwd``: another checkout, for a baseline), yield it once
    ready; kill the whole group after."""
    port = free_port()
    # no SERVE_* from the caller (make exports some): the flags in argv are the exact settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")} | {"PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(spec.command(port), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base_url = f"http://{HOST}:{port}"
        _wait_ready(proc, base_url + spec.ready_path, startup_timeout_s, log_path)
        yield Server(base_url, proc.pid)
    finally:
        _stop(proc)


@contextmanager
def running(spec: ServerSpec, log_path: Path, startup_timeout_s: float) -> Iterator[str]:
    """As ``started``, yielding only the base URL."""
    with started(spec, log_path, startup_timeout_s) as server:
        yield server.base_url


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log_path: Path,
                in_a_row: int = 5) -> None:
    """Until ``in_a_row`` probes in a row, each on a new connection, answer 200: each of our front-ends answers
    for itself, and one may still be connecting to the engine when another is ready."""
    deadline, ready = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before ready; log:\n{_tail(log_path)}")
        try:
            ready = ready + 1 if http(url, timeout=2.0)[0] == 200 else 0
        except OSError:
            ready = 0
        if ready >= in_a_row:
            return
        time.sleep(0.2 if ready == 0 else 0.05)
    raise RuntimeError(f"server not ready at {url} after {timeout_s:g} s; log:\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (it leads it), then SIGKILL whatever is left of it after 10 s."""
    _signal_group(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    _signal_group(proc.pid, signal.SIGKILL)  # a hung leader, or workers that outlived it
    proc.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
