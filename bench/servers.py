"""The servers under test: how to start each on a loopback port, wait until ready, and always stop it."""

from __future__ import annotations

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

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # all traffic stays on loopback
PREDICT_PATH = "/v1/models/mnist-cnn/predict"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]  # "{port}" is replaced by the port
    ready_path: str
    has_metrics: bool = False

    def command(self, port: int) -> list[str]:
        return [part.replace("{port}", str(port)) for part in self.argv]


def specs(weights: Path, torch_threads: int, max_batch_size: int, max_delay_ms: float,
          workers: int = 1) -> list[ServerSpec]:
    """Ours and the two baselines, with the same weights, torch threads, batching limits and processes."""
    py, common = sys.executable, ["--port", "{port}", "--weights", str(weights), "--torch-threads", str(torch_threads),
                                  "--workers", str(workers)]
    batching = ["--max-batch-size", str(max_batch_size), "--max-delay-ms", f"{max_delay_ms:g}"]
    ours = [py, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir", str(weights.parent.parent),
            "--models", weights.parent.name, "--device", "cpu", "--torch-threads", str(torch_threads),
            "--workers", str(workers), *batching, "--log-level", "warning"]
    return [
        ServerSpec("ours", ours, "/v2/health/ready", has_metrics=True),
        ServerSpec("naive", [py, "-m", "bench.baselines.naive_fastapi", "--host", HOST, *common], "/health"),
        ServerSpec("litserve", [py, "-m", "bench.baselines.litserve_server", "--host", HOST, *common, *batching],
                   "/health"),
    ]


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


def predict(base_url: str, png: bytes) -> dict[str, Any]:
    status, body = http(base_url + PREDICT_PATH, png)
    if status != 200:
        raise RuntimeError(f"{base_url}{PREDICT_PATH} answered {status}: {body[:300]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


@contextmanager
def running(spec: ServerSpec, log_path: Path, startup_timeout_s: float) -> Iterator[str]:
    """Start ``spec`` in its own process group, yield its base URL once ready; kill the whole group after."""
    port = free_port()
    # no SERVE_* from the caller (make exports some): the flags in argv are the exact settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")} | {"PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(spec.command(port), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base_url = f"http://{HOST}:{port}"
        _wait_ready(proc, base_url + spec.ready_path, startup_timeout_s, log_path)
        yield base_url
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before ready; log:\n{_tail(log_path)}")
        try:
            if http(url, timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
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
