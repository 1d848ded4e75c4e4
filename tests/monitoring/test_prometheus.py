"""A real Prometheus (Debian's) scraping a running ``python -m service`` with the repository's scrape
configuration (deploy/monitoring/prometheus.yml, its target pointed at the server): the scrape succeeds, the
server's metrics are queryable, and every PromQL expression of the Grafana dashboard
(deploy/monitoring/grafana/dashboards/serve.json) returns data. ``make test-monitoring``; CI runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, make_artifact, make_lm_artifact
from tests.service.test_processes import Server

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
pytestmark = pytest.mark.monitoring


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "serve.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def query(base: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def traffic(base: str, png: bytes, stop: threading.Event) -> None:
    """Predictions, generations and a few errors, until told to stop: every panel gets something to show."""
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            client.post(f"{base}/v1/models/tiny-cnn/predict", content=png, headers={"content-type": "image/png"})
            client.post(f"{base}/v1/models/tiny-gpt/generate", json={"prompt": "ab", "max_tokens": 8})
            client.post(f"{base}/v1/models/tiny-cnn/predict", content=b"not an image",
                        headers={"content-type": "image/png"})  # 400
            client.get(f"{base}/v1/models/no-such-model")  # 404
            time.sleep(0.05)


def start_prometheus(binary: str, server_port: int, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Prometheus with the repository's configuration, scraping the server on ``server_port`` every second;
    the process and its port."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{server_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    flags = [f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"]
    process = subprocess.Popen([binary, *flags], stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / "prometheus.log").open("wb"))
    return process, port


def test_prometheus_scrapes_the_server_and_every_dashboard_query_has_data(tmp_path: Path, digit_png: bytes) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: `make test-monitoring` installs Debian's (apt-get install prometheus)")
    weights = tmp_path / "weights"
    make_artifact(weights, "tiny-cnn", 1, "cnn")
    make_lm_artifact(weights, "tiny-gpt")
    server = Server(weights, "--workers", "2")
    prometheus, port = start_prometheus(binary, server.port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    try:
        server.wait_ready()
        sender = threading.Thread(target=traffic, args=(server.base, digit_png, stop))
        sender.start()
        deadline = time.monotonic() + 60
        missing = dashboard_queries()
        while missing:  # rates need two scrapes inside their window: wait for them, bounded
            assert time.monotonic() < deadline, f"no data for: {missing}"
            time.sleep(1)
            try:
                missing = [(title, expr) for title, expr in missing
                           if not query(base, expr.replace("$__rate_interval", "15s"))]
            except httpx.HTTPError:
                continue  # Prometheus still starting
        targets = httpx.get(f"{base}/api/v1/targets").json()["data"]["activeTargets"]
        requests = query(base, "sum by (status) (serve_requests_total)")
        frontends = query(base, "serve_frontend_requests_total")
        memory = query(base, "serve_process_resident_memory_bytes")
    finally:
        stop.set()
        prometheus.terminate()
        prometheus.wait(timeout=30)
        server.stop()
    assert [target["health"] for target in targets] == ["up"]
    statuses = {series["metric"]["status"] for series in requests}
    assert {"200", "400", "404"} <= statuses
    assert {series["metric"]["frontend"] for series in frontends} == {"0", "1"}
    assert {series["metric"]["process"] for series in memory} == {"engine", "frontend-0", "frontend-1"}
    print(f"\nprometheus: target {targets[0]['scrapeUrl']} {targets[0]['health']}, "
          f"{len(dashboard_queries())} dashboard queries with data, statuses {sorted(statuses)}")
