"""Correct under load: a real server process, many concurrent clients, every answer checked.

Run with ``make test-load``. Speed is not asserted here (that is ``make bench``); what is asserted is
that batching happens, answers never cross between requests, and overload gives 503/504, never a
500 or a hang.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, free_port, requires_data
from tests.promtext import samples
from tests.promtext import value as metric
from training.data import load_image_split

pytestmark = [pytest.mark.load,
              requires_data("mnist")]


class ServerProcess:
    def __init__(self, **settings: str) -> None:
        self.port = free_port()
        env = {**os.environ, "SERVE_PORT": str(self.port), "SERVE_MODELS": "mnist-cnn", "SERVE_DEVICE": "cpu",
               "SERVE_WEIGHTS_DIR": str(REPO_ROOT / "weights"), "SERVE_LOG_LEVEL": "warning",
               **{f"SERVE_{key.upper()}": value for key, value in settings.items()}}
        self.process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, "server exited"
            time.sleep(0.1)
        self.stop()
        raise AssertionError("server not ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def digits() -> list[tuple[bytes, int]]:
    split = load_image_split("mnist", "test")
    out = []
    for image, label in zip(split.images[:400], split.labels[:400], strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image, "L").save(buffer, format="PNG")
        out.append((buffer.getvalue(), int(label)))
    return out


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    settings = getattr(request, "param", {})
    process = ServerProcess(**settings)
    yield process
    process.stop()


async def fire(base: str, bodies: list[bytes], concurrency: int, timeout_s: float = 60) -> list[httpx.Response]:
    """Send every body once, ``concurrency`` at a time; return the responses in the bodies' order."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout_s) as client:
        async def one(body: bytes) -> httpx.Response:
            async with semaphore:
                return await client.post("/v1/models/mnist-cnn/predict?top_k=10", content=body,
                                         headers={"content-type": "image/png"})

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def test_answers_under_concurrency_match_one_by_one_and_batches_form(server: ServerProcess,
                                                                      digits: list[tuple[bytes, int]]) -> None:
    bodies = [body for body, _ in digits]
    sequential = asyncio.run(fire(server.base, bodies, concurrency=1))
    before = httpx.get(f"{server.base}/metrics").text
    concurrent = asyncio.run(fire(server.base, bodies * 3, concurrency=64))
    after = httpx.get(f"{server.base}/metrics").text
    assert all(r.status_code == 200 for r in sequential + concurrent)
    for index, response in enumerate(concurrent):
        alone = sequential[index % len(bodies)].json()["predictions"][0]
        together = response.json()["predictions"][0]
        assert together["index"] == alone["index"]
        assert np.allclose([e["score"] for e in together["top_k"]], [e["score"] for e in alone["top_k"]], atol=1e-4)
    labels = np.array([label for _, label in digits])
    predicted = np.array([r.json()["predictions"][0]["index"] for r in concurrent[: len(bodies)]])
    assert (predicted == labels).mean() >= 0.98
    inputs = metric(after, "serve_batch_size_sum") - metric(before, "serve_batch_size_sum")
    assert inputs == len(concurrent)  # every input forwarded exactly once
    batches = metric(after, "serve_batch_size_count") - metric(before, "serve_batch_size_count")
    singles = metric(after, "serve_batch_size_bucket", le="1.0") - metric(before, "serve_batch_size_bucket", le="1.0")
    assert singles < batches, "no batch held more than one input"


def run_wrk(url: str, body_path: Path, connections: int, seconds: int) -> str:
    script = body_path.with_suffix(".lua")
    script.write_text(f'local f = io.open("{body_path}", "rb"); wrk.body = f:read("*all"); f:close()\n'
                      'wrk.method = "POST"; wrk.headers["Content-Type"] = "image/png"\n')
    result = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency",
                             "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 30)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test-load installs it)")
def test_wrk_load_has_no_errors_and_forms_batches(server: ServerProcess, digits: list[tuple[bytes, int]],
                                                  tmp_path: Path) -> None:
    body_path = tmp_path / "digit.png"
    body_path.write_bytes(digits[0][0])
    before = httpx.get(f"{server.base}/metrics").text
    report = run_wrk(f"{server.base}/v1/models/mnist-cnn/predict", body_path, connections=32, seconds=5)
    after = httpx.get(f"{server.base}/metrics").text
    assert "Non-2xx" not in report and "Socket errors" not in report, report
    requests = int(re.search(r"(\d+) requests in", report).group(1))  # type: ignore[union-attr]
    inputs = metric(after, "serve_batch_size_sum") - metric(before, "serve_batch_size_sum")
    batches = metric(after, "serve_batch_size_count") - metric(before, "serve_batch_size_count")
    assert requests > 100 and inputs >= requests
    assert inputs / batches > 2, f"mean batch size {inputs / batches:.2f} under 32 connections"


@pytest.mark.parametrize("server", [{"max_queue": "4", "max_batch_size": "2"}], indirect=True)
def test_overload_gives_503_with_retry_after_and_nothing_else(server: ServerProcess,
                                                              digits: list[tuple[bytes, int]]) -> None:
    bodies = [body for body, _ in digits] * 2
    started = time.monotonic()
    responses = asyncio.run(fire(server.base, bodies, concurrency=128))
    assert time.monotonic() - started < 60
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0 and statuses[200] > 0, statuses
    assert all(r.headers.get("retry-after", "").isdigit() for r in responses if r.status_code == 503)
    assert httpx.post(f"{server.base}/v1/models/mnist-cnn/predict", content=bodies[0],
                      headers={"content-type": "image/png"}).status_code == 200  # recovers


@pytest.mark.parametrize("server", [{"timeout_ms": "30", "max_batch_size": "4"}], indirect=True)
def test_deadlines_under_load_give_504_and_nothing_else(server: ServerProcess,
                                                        digits: list[tuple[bytes, int]]) -> None:
    responses = asyncio.run(fire(server.base, [body for body, _ in digits] * 2, concurrency=128))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 504}, statuses
    assert statuses[504] > 0, statuses
    text = httpx.get(f"{server.base}/metrics").text
    assert sum(samples(text, "serve_requests_total", status="500")) == 0  # no series: none


def test_the_readme_command_serves_on_the_default_port_layout(digits: list[tuple[bytes, int]]) -> None:
    """``python -m service`` with only SERVE_PORT set answers a real digit with its label."""
    process = ServerProcess()
    try:
        body, label = digits[0]
        answer = httpx.post(f"{process.base}/v1/models/mnist-cnn/predict", content=body,
                            headers={"content-type": "image/png"}).json()
        assert answer["predictions"][0]["label"] == str(label)
    finally:
        process.stop()

