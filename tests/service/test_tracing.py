"""OpenTelemetry tracing of ``python -m service`` against a real OTLP/HTTP receiver started here: a request
sent with a ``traceparent`` comes back as spans of the caller's trace, from the front-end (the request, its
decoding) and from the engine process (its work, the queue wait and the forward), parented across the process
boundary. Without OTEL_* variables nothing is traced."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service import tracing
from tests.conftest import free_port, make_artifact, make_lm_artifact
from tests.service.test_processes import Server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
DEFAULT_OTLP_PORT = 4318  # OTLP/HTTP's default: where an exporter with no endpoint set sends


class Receiver:
    """An OTLP/HTTP trace receiver: every span it is sent, with its process's resource attributes."""

    def __init__(self, port: int | None = None) -> None:
        self.spans: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append({
                                "name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "process": resource["serve.process"].string_value,
                                "attributes": {a.key: a.value for a in span.attributes}})
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = port or free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [span for span in self.spans if span["trace_id"] == trace_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()


@pytest.mark.system  # real processes: make test-system
def test_a_request_is_traced_across_the_engine_boundary(tmp_path: Path, receiver: Receiver,
                                                        digit_png: bytes) -> None:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    make_lm_artifact(tmp_path, "tiny-gpt")
    server = Server(tmp_path, "--workers", "2", env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}", "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "serve-under-test"})
    try:
        server.wait_ready()
        traceparent = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
        answered = httpx.post(f"{server.base}/v1/models/tiny-cnn/predict", content=digit_png,
                              headers={"content-type": "image/png", "traceparent": traceparent})
        assert answered.status_code == 200
        generation_trace = "0af7651916cd43dd8448eb211c80319c"
        generated = httpx.post(f"{server.base}/v1/models/tiny-gpt/generate", json={"prompt": "ab", "max_tokens": 3},
                               headers={"traceparent": f"00-{generation_trace}-b7ad6b7169203331-01"})
        assert generated.status_code == 200
        deadline = time.monotonic() + 15
        while len(receiver.of_trace(TRACE_ID)) < 5 or not any(
                span["name"] == "generate" for span in receiver.of_trace(generation_trace)):
            assert time.monotonic() < deadline, f"spans so far: {receiver.spans}"
            time.sleep(0.1)
    finally:
        server.stop()
    spans = {span["name"]: span for span in receiver.of_trace(TRACE_ID)}
    request = spans["POST /v1/models/{name}/predict"]
    assert request["parent"] == CALLER_SPAN and request["process"] == "frontend"  # the caller's trace, honoured
    assert request["attributes"]["http.response.status_code"].int_value == 200
    assert request["attributes"]["serve.model"].string_value == "tiny-cnn"
    assert request["attributes"]["serve.request_id"].string_value == answered.headers["x-request-id"]
    assert spans["decode"]["parent"] == request["span_id"]
    engine = spans["engine tiny-cnn"]
    assert engine["process"] == "engine" and engine["parent"] == request["span_id"]  # across the boundary
    assert engine["attributes"]["serve.outcome"].string_value == "ok"
    assert spans["queue"]["parent"] == engine["span_id"] and spans["forward"]["parent"] == engine["span_id"]
    assert spans["forward"]["attributes"]["serve.batch_size"].int_value == 1
    generation = {span["name"]: span for span in receiver.of_trace(generation_trace)}
    assert generation["generate"]["attributes"]["serve.tokens"].int_value == 3
    assert generation["generate"]["process"] == "engine"


def test_tracing_is_requested_only_by_otel_variables() -> None:
    assert not tracing.requested({})
    assert not tracing.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x/v1/traces"})
    assert tracing.requested({"OTEL_TRACES_EXPORTER": "otlp"})


@pytest.mark.system  # real processes: make test-system
def test_without_otel_variables_no_span_is_sent(tmp_path: Path, digit_png: bytes,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver listens where OTLP exporters send by default (localhost:4318); a server started without
    OTEL_* variables serves a traced request and a generation, shuts down (which would flush any batched
    span), and the receiver has heard nothing."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    try:
        receiver = Receiver(port=DEFAULT_OTLP_PORT)
    except OSError as exc:
        pytest.fail(f"port {DEFAULT_OTLP_PORT}, OTLP's default, is taken here ({exc}): free it to run this test")
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    make_lm_artifact(tmp_path, "tiny-gpt")
    server = Server(tmp_path, env={"OTEL_BSP_SCHEDULE_DELAY": "100"})  # not a variable that turns tracing on
    try:
        server.wait_ready()
        answered = httpx.post(f"{server.base}/v1/models/tiny-cnn/predict", content=digit_png,
                              headers={"content-type": "image/png", "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})
        assert answered.status_code == 200
        assert httpx.post(f"{server.base}/v1/models/tiny-gpt/generate",
                          json={"prompt": "ab", "max_tokens": 3}).status_code == 200
        time.sleep(0.5)  # five batch delays
    finally:
        server.stop()
        receiver.server.shutdown()
    assert receiver.spans == []
