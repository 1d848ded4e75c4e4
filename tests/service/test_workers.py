"""``SERVE_WORKERS``: several server processes share the port, and /metrics sums over all of them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.conftest import free_port, make_artifact, make_lm_artifact

REPO = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_two_workers_answer_on_one_port_and_metrics_add_up(tmp_path: Path, digit_png: bytes) -> None:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    make_lm_artifact(tmp_path, "tiny-gpt")  # slower to warm up: the second worker is often still loading
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVE_", "PROMETHEUS_"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "--workers", "2", "--port", str(port), "--weights-dir", str(tmp_path),
         "--device", "cpu", "--log-level", "warning"], cwd=REPO, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ready means every worker is: no waiting for the second one
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        workers = [pid for pid in children(server.pid) if "multiprocessing.resource_tracker" not in
                   Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, workers

        def post(_: int) -> int:
            response = httpx.post(f"{base}/v1/models/tiny-cnn/predict", content=digit_png,
                                  headers={"content-type": "image/png"}, timeout=30)
            return response.status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(40)))
        assert statuses == [200] * 40
        time.sleep(0.5)  # both workers' health probes above must not count: only predictions are summed
        text = httpx.get(f"{base}/metrics", timeout=5).text
        counted = sum(float(value) for value in re.findall(
            r'serve_requests_total\{model="tiny-cnn",route="[^"]*predict",status="200"\} (\S+)', text))
        assert counted == 40, text[:2000]
        assert re.search(r'serve_model_loaded\{model="tiny-cnn",version="1"\} 1\.0', text)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_readiness_waits_for_every_worker_and_forgets_a_silent_one(tmp_path: Path) -> None:
    make_artifact(tmp_path / "weights", "tiny-cnn", 1, "cnn")
    peers = tmp_path / "ready"
    peers.mkdir()
    settings = Settings(weights_dir=tmp_path / "weights", device="cpu", torch_threads=1, peers_dir=peers, workers=2)
    with TestClient(create_app(settings)) as client:  # this process is one of two workers
        deadline = time.monotonic() + 20
        while not list(peers.iterdir()) and time.monotonic() < deadline:  # its own heartbeat, once loaded
            time.sleep(0.05)
        response = client.get("/v2/health/ready")
        assert response.status_code == 503 and "1 of 2 workers are ready" in response.json()["error"]
        other = peers / "99999"
        other.write_text("")  # the other worker's heartbeat
        assert client.get("/v2/health/ready").status_code == 200
        os.utime(other, (time.time() - 10, time.time() - 10))  # it stopped beating (crashed or hung)
        assert client.get("/v2/health/ready").status_code == 503
    assert list(peers.iterdir()) == [other]  # a worker that stops removes its own heartbeat
