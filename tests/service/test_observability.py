"""Metrics, docs and the OpenAPI document, the client-gone path through a real server, readiness."""

from __future__ import annotations

import re
import socket
import time

import httpx
from fastapi.testclient import TestClient

from tests.conftest import LiveServer
from tests.promtext import samples
from tests.promtext import value as metric


def test_prometheus_metrics(client: TestClient, digit_png: bytes) -> None:
    for _ in range(3):
        client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={"content-type": "image/png"})
    client.post("/v1/models/tiny-cnn/predict", json={"inputs": []})
    text = client.get("/metrics").text
    route = "/v1/models/{name}/predict"
    assert metric(text, "serve_requests_total", model="tiny-cnn", route=route, status="200") == 3
    assert metric(text, "serve_requests_total", model="tiny-cnn", route=route, status="422") == 1
    assert metric(text, "serve_request_duration_seconds_count", model="tiny-cnn", route=route, status="200") == 3
    assert metric(text, "serve_batch_size_count", model="tiny-cnn", version="2") == 3
    assert metric(text, "serve_inference_duration_seconds_count", model="tiny-cnn", version="2") == 3
    assert metric(text, "serve_model_loaded", model="tiny-cnn", version="1") == 1
    assert 'serve_queue_depth{model="tiny-cnn",version="2"}' in text


def test_docs_are_served_offline(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "swagger-ui-bundle.js" in html
    external = [url for url in re.findall(r'(?:src|href)="([^"]+)"', html) if url.startswith("http")]
    assert external == []
    assert client.get("/static-docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static-docs/swagger-ui.css").status_code == 200


def test_openapi_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/v1/models", "/v1/models/{name}", "/v1/models/{name}/predict",
                 "/v1/models/{name}/versions/{version}/predict", "/v1/models/{name}:predict",
                 "/v2", "/v2/models/{name}", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
                 "/v2/models/{name}/ready", "/v2/health/live", "/v2/health/ready", "/metrics"]:
        assert path in paths, path
    assert "image/png" in paths["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]


def test_a_client_that_leaves_is_dropped_before_the_forward(live_server: LiveServer, digit_png: bytes) -> None:
    registry = live_server.app.state.engine.registry
    base = f"http://{live_server.url}"
    before = httpx.get(f"{base}/metrics").text
    busy = registry.executor.submit(time.sleep, 1.0)  # the device is busy with another forward
    request = (f"POST /v1/models/tiny-cnn/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
               f"Content-Length: {len(digit_png)}\r\n\r\n").encode() + digit_png
    with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
        sock.sendall(request)
        time.sleep(0.3)  # queued behind the busy worker
    busy.result()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = httpx.get(f"{base}/metrics").text
        if sum(samples(after, "serve_dropped_inputs_total", model="tiny-cnn", reason="cancelled")) >= 1:
            break
        time.sleep(0.05)
    assert metric(after, "serve_dropped_inputs_total", model="tiny-cnn", reason="cancelled") == 1
    forwards = metric(after, "serve_batch_size_count", model="tiny-cnn", version="2")
    assert forwards == metric(before, "serve_batch_size_count", model="tiny-cnn", version="2")  # never forwarded
    response = httpx.post(f"{base}/v1/models/tiny-cnn/predict", content=digit_png,
                          headers={"content-type": "image/png"})
    assert response.status_code == 200  # the model is fine afterwards


def test_a_dead_worker_turns_readiness_off(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client()
    client.app.state.engine.registry.executor.shutdown(wait=True)  # the inference thread is gone
    response = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={"content-type": "image/png"})
    assert response.status_code == 503 and response.json()["error"]
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and "tiny-cnn/2" in ready.json()["error"]
    assert client.get("/v2/models/tiny-cnn/ready").status_code == 503
    text = client.get("/metrics").text
    assert metric(text, "serve_model_loaded", model="tiny-cnn", version="2") == 0


def test_a_broken_artifact_fails_its_model_not_the_server(make_client, weights_dir) -> None:  # type: ignore[no-untyped-def]
    (weights_dir / "tiny-resnet" / "1" / "model.safetensors").write_bytes(b"tampered")
    from service.frontend.main import create_app
    from service.settings import Settings

    app = create_app(Settings(weights_dir=weights_dir, device="cpu", torch_threads=1))
    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while client.get("/v1/models/tiny-resnet").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/v2/health/ready").status_code == 503
        detail = client.get("/v1/models/tiny-resnet").json()
        assert detail["ready"] is False and "sha256" in detail["status"]
        assert client.get("/v1/models/tiny-cnn").json()["ready"] is True


def test_playground_page_is_self_contained(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    external = [url for url in re.findall(r'(?:src|href)="([^"]+)"', response.text) if "//" in url]
    assert external == [] and "/v1/models" in response.text
