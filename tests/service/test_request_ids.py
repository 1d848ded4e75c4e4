"""Request IDs and the access log: every response carries ``X-Request-ID`` (the client's own if well formed),
every log line about a request carries it, the engine's too, and ``SERVE_ACCESS_LOG`` writes one line per
request with its figures. API keys appear in no log line."""

from __future__ import annotations

import json
import logging
import re

import pytest
from fastapi.testclient import TestClient

from service.logging_setup import JsonFormatter, RequestIdFilter, TextFormatter

PNG = {"content-type": "image/png"}


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())  # as configure_logging does for the server's own handler
    return caplog


def test_every_response_carries_a_new_request_id(client: TestClient, digit_png: bytes) -> None:
    responses = [client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers=PNG),
                 client.get("/v1/models/tiny-cnn"), client.get("/v2/health/live"),
                 client.get("/v1/models/nope"), client.get("/no/such/route")]
    ids = [response.headers["x-request-id"] for response in responses]
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
    assert len(set(ids)) == len(ids)


def test_a_well_formed_client_id_is_kept_and_any_other_replaced(client: TestClient, digit_png: bytes) -> None:
    for kept in ("abc-123", "0d7e4c1e-5b9a-4f6e-9d0b-2f9b8e7c6a5d", "trace:span/1"):
        response = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={**PNG, "x-request-id": kept})
        assert response.status_code == 200 and response.headers["x-request-id"] == kept
    for replaced in ("has space", "x" * 129, "quote\"d", ""):
        response = client.get("/v2/health/live", headers={"x-request-id": replaced})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_a_body_refused_for_its_size_carries_the_id_too(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_body_bytes=1024)
    response = client.post("/v1/models/tiny-cnn/predict", content=b"x" * 2048,
                           headers={**PNG, "x-request-id": "big-one"})
    assert response.status_code == 413 and response.headers["x-request-id"] == "big-one"


def test_the_access_log_has_one_line_per_request_with_its_figures(make_client, digit_png: bytes,  # type: ignore[no-untyped-def]
                                                                  captured: pytest.LogCaptureFixture) -> None:
    client = make_client(access_log=True, api_keys=["s3cret-key"])
    files = [("file", (f"{i}.png", digit_png, "image/png")) for i in range(3)]
    answered = client.post("/v1/models/tiny-cnn/predict", files=files,
                           headers={"authorization": "Bearer s3cret-key", "x-request-id": "access-1"})
    assert answered.status_code == 200
    refused = client.post("/v1/models/tiny-cnn/versions/1/predict", content=digit_png,
                          headers={**PNG, "x-api-key": "wrong-key-4567", "x-request-id": "access-2"})
    assert refused.status_code == 401
    lines = {record.access["request_id"]: record for record in captured.records if hasattr(record, "access")}
    assert set(lines) >= {"access-1", "access-2"}
    first = lines["access-1"].access
    assert first["method"] == "POST" and first["route"] == "/v1/models/{name}/predict"
    assert (first["model"], first["version"], first["status"], first["inputs"]) == ("tiny-cnn", 2, 200, 3)
    assert first["forward_ms"] > 0 and first["queue_ms"] >= 0 and first["total_ms"] >= first["forward_ms"]
    assert first["bytes_out"] == len(answered.content) and first["bytes_in"] > 3 * len(digit_png)
    second = lines["access-2"].access
    assert (second["route"], second["model"], second["version"], second["status"], second["inputs"]) == (
        "/v1/models/{name}/versions/{version}/predict", "tiny-cnn", 1, 401, 0)
    assert second["forward_ms"] is None and second["bytes_in"] == 0  # refused before its body was read
    as_json = json.loads(JsonFormatter().format(lines["access-1"]))
    assert as_json["request_id"] == "access-1" and as_json["inputs"] == 3 and as_json["logger"] == "service.access"
    assert "request_id=access-1 method=POST" in TextFormatter().format(lines["access-1"])
    for record in captured.records:  # no key, right or wrong, in any line of either format
        for formatted in (TextFormatter().format(record), JsonFormatter().format(record)):
            assert "s3cret-key" not in formatted and "wrong-key-4567" not in formatted


def test_no_access_log_unless_asked(client: TestClient, digit_png: bytes, captured: pytest.LogCaptureFixture) -> None:
    assert client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers=PNG).status_code == 200
    assert not [record for record in captured.records if record.name == "service.access"]


def test_the_engines_log_lines_about_a_request_carry_its_id(make_client, digit_png: bytes,  # type: ignore[no-untyped-def]
                                                           captured: pytest.LogCaptureFixture) -> None:
    client = make_client(models=["tiny-cnn"])
    batcher = client.app.state.engine.registry.get("tiny-cnn", 2).scheduler

    def broken_forward(payloads: list[object]) -> list[object]:
        raise ValueError("a forward that fails on purpose")

    batcher._run_batch = broken_forward
    response = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={**PNG, "x-request-id": "eng-7"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "eng-7"
    engine_lines = [record for record in captured.records if record.name == "service.engine"]
    assert engine_lines and all(record.request_id == "eng-7" for record in engine_lines)
    assert "[request eng-7]" in TextFormatter().format(engine_lines[0])
