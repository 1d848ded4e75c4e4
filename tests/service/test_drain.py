"""Graceful drain of ``python -m service`` on SIGTERM, as Kubernetes and ``docker stop`` send it (to the
supervisor only): readiness false at once, requests still accepted for SERVE_DRAIN_DELAY_S, then the port
closes, everything in flight finishes (streams included) and the server exits 0. A second SIGTERM, or the
end of the grace period, ends what is left with 503s and still exits 0."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_artifact, make_lm_artifact
from tests.service.test_processes import Server

pytestmark = pytest.mark.system  # real processes: make test-system
PNG = {"content-type": "image/png"}
# Long enough to be running well past the port closing (2 s after SIGTERM) even on a fast machine: tiny-gpt
# makes 400 tokens for five rows in under 0.5 s here, so a short one can finish before the signal.
LONG = 6_000


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    make_lm_artifact(tmp_path, "tiny-gpt")
    return tmp_path


def generate(base: str, max_tokens: int, outcomes: list[tuple[int, int | None, str]]) -> None:
    response = httpx.post(f"{base}/v1/models/tiny-gpt/generate", json={"prompt": "ab", "max_tokens": max_tokens,
                                                                      "seed": 1}, timeout=60)
    outcomes.append((response.status_code, response.json().get("tokens"), response.headers["x-request-id"]))


def stream(base: str, max_tokens: int, events: list[dict[str, object]]) -> None:
    with httpx.stream("POST", f"{base}/v1/models/tiny-gpt/generate", json={
            "prompt": "ab", "max_tokens": max_tokens, "seed": 2, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))


def ready_status(base: str) -> int:
    return httpx.get(f"{base}/v2/health/ready", timeout=2).status_code


def test_sigterm_finishes_everything_in_flight_and_exits_0(weights: Path, tmp_path: Path,
                                                           digit_png: bytes) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        server = Server(weights, "--workers", "2", "--drain-delay-s", "1.5", "--max-new-tokens", "100000",
                        "--log-level", "info", "--log-format", "json", "--access-log", "true", stderr=log_file)
        try:
            server.wait_ready()
            outcomes: list[tuple[int, int | None, str]] = []
            events: list[dict[str, object]] = []
            work = [threading.Thread(target=generate, args=(server.base, LONG, outcomes)) for _ in range(4)]
            work.append(threading.Thread(target=stream, args=(server.base, LONG, events)))
            for thread in work:
                thread.start()
            time.sleep(0.5)  # all five running on the engine
            in_flight = len(work) - len(outcomes) - (1 if any("finish_reason" in e for e in events) else 0)
            signalled = time.monotonic()
            os.kill(server.process.pid, signal.SIGTERM)  # the supervisor alone, as an orchestrator does
            deadline = time.monotonic() + 1.0
            while ready_status(server.base) != 503:
                assert time.monotonic() < deadline, "readiness still true a second after SIGTERM"
            assert httpx.get(f"{server.base}/v2/health/live", timeout=2).status_code == 200
            late = httpx.post(f"{server.base}/v1/models/tiny-cnn/predict", content=digit_png, headers=PNG, timeout=5)
            assert late.status_code == 200  # within the delay, still served
            time.sleep(max(0.0, signalled + 2.0 - time.monotonic()))
            with pytest.raises(httpx.ConnectError):  # after the delay: the port is closed
                httpx.get(f"{server.base}/v2/health/live", timeout=2)
            for thread in work:
                thread.join(timeout=60)
            exit_code = server.process.wait(timeout=30)
            took = time.monotonic() - signalled
        finally:
            if server.process.poll() is None:
                server.stop()
    assert in_flight == 5
    assert sorted(outcome[:2] for outcome in outcomes) == [(200, LONG)] * 4  # none lost, none cut short
    assert events[-1]["finish_reason"] == "length" and events[-1]["tokens"] == LONG
    assert exit_code == 0
    print(f"\ndrain: {in_flight} in flight at SIGTERM, {len(outcomes) + 1} completed, 0 lost, exit {exit_code} "
          f"after {took:.1f} s")
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = {line["request_id"]: line for line in lines if line["logger"] == "service.access"}
    for _, _, request_id in outcomes:  # one access line per request, under the ID its response carried
        assert access[request_id]["status"] == 200 and access[request_id]["model"] == "tiny-gpt"
    assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]


@pytest.mark.parametrize("ending", ["second SIGTERM", "grace period"])
def test_a_second_sigterm_or_the_end_of_the_grace_period_ends_the_rest_with_503(weights: Path, ending: str) -> None:
    grace = ["--drain-grace-s", "1"] if ending == "grace period" else []
    server = Server(weights, "--workers", "2", "--drain-delay-s", "0.5", "--max-new-tokens", "100000", *grace)
    try:
        server.wait_ready()
        outcomes: list[tuple[int, int | None, str]] = []
        events: list[dict[str, object]] = []
        work = [threading.Thread(target=generate, args=(server.base, 100_000, outcomes)) for _ in range(3)]
        work.append(threading.Thread(target=stream, args=(server.base, 100_000, events)))
        for thread in work:
            thread.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        if ending == "second SIGTERM":
            time.sleep(1.5)
            os.kill(server.process.pid, signal.SIGTERM)
        for thread in work:
            thread.join(timeout=30)
        exit_code = server.process.wait(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if server.process.poll() is None:
            server.stop()
    assert [status for status, _, _ in outcomes] == [503] * 3
    assert events and events[-1].get("type") == "unavailable"  # the stream ends with an error event
    assert exit_code == 0 and took < 10
