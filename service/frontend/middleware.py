"""Pure ASGI middleware: arrival time, request ID (``X-Request-ID``, kept or made), body size limit,
request metrics (by route template), the access log (``SERVE_ACCESS_LOG``), and the refusal of a request
for a full or unready model before any routing, body or decoding."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.errors import ServeError, error_response
from service.frontend.catalog import ServedModel
from service.frontend.direct import serve_direct
from service.frontend.predict import ARRIVAL_KEY
from service.metrics import Metrics
from service.request_context import ACCESS, ARRIVAL, PRIORITY, REQUEST_ID, AccessRecord, accepted_request_id

access_log = logging.getLogger("service.access")


class ServeMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, access_log: bool = False,
                 refusal_delay_s: float = 0.0) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self.refusal_delay_s = refusal_delay_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL_KEY] = arrived = time.monotonic()
        declared, presented_id, priority = _headers_of_interest(scope)
        request_id = accepted_request_id(presented_id)
        traced = tracing.active()
        record = AccessRecord(scope["method"]) if self.access_log or traced else None
        tokens = REQUEST_ID.set(request_id), ACCESS.set(record), ARRIVAL.set(arrived), PRIORITY.set(priority or 0)
        id_header = (b"x-request-id", request_id.encode())
        try:
            if traced:
                with tracing.request_span(scope["headers"], scope["method"]) as span:
                    await self._serve(scope, receive, send, declared, id_header, record)
                    describe_span(span, record, request_id)
            else:
                await self._serve(scope, receive, send, declared, id_header, record)
        finally:
            REQUEST_ID.reset(tokens[0])
            ACCESS.reset(tokens[1])
            ARRIVAL.reset(tokens[2])
            PRIORITY.reset(tokens[3])

    async def _serve(self, scope: Scope, receive: Receive, send: Send, declared: int | None,
                     id_header: tuple[bytes, bytes], record: AccessRecord | None) -> None:
        started = scope[ARRIVAL_KEY]
        requested = requested_model(scope)
        if requested is not None and (refusal := fast_refusal(scope, requested)):
            if self.refusal_delay_s:
                # A closed-loop client comes back the moment it is refused: a refusal a few milliseconds later is
                # fewer refusals per second for the event loop, which then moves the admitted requests sooner.
                await asyncio.sleep(self.refusal_delay_s)
            await send({"type": "http.response.start", "status": 503, "headers": [*REFUSAL_HEADERS, id_header]})
            await send({"type": "http.response.body", "body": refusal})
            self.metrics.count_refusal(scope["path_params"]["name"])  # counted, not timed: it took microseconds
            if record is not None:
                record.bytes_out = len(refusal)
                self._log_access(scope, record, 503, started, FAST_ROUTE, requested.served)
            return
        status = {"code": 500}
        limit = self.max_body_bytes
        if declared is not None and declared > limit:
            response = error_response(413, f"body of {declared} bytes exceeds the limit of {limit}", "too_large",
                                      headers={"Connection": "close", "X-Request-ID": id_header[1].decode()})
            await response(scope, receive, send)
            self._record(scope, 413, 0.0)
            if record is not None:
                self._log_access(scope, record, 413, started, None, None)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body with no Content-Length: the handlers answer 413
                    raise ServeError(413, f"body exceeds the limit of {limit} bytes", "too_large")
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            elif record is not None and message["type"] == "http.response.body":
                record.bytes_out += len(message.get("body", b""))
            await send(message)

        direct = requested if requested is not None and requested.direct else None
        try:
            if direct is not None:  # the native predict route, without the framework's routing
                await serve_direct(direct.served, scope, limited_receive, recording_send, direct.direct or "native")
            else:
                await self.app(scope, limited_receive, recording_send)
        finally:
            template = direct.template if direct is not None else None
            self._record(scope, status["code"], time.monotonic() - started, template)
            if record is not None:
                record.bytes_in = received
                self._log_access(scope, record, status["code"], started, template,
                                 requested.served if requested is not None else None)

    def _record(self, scope: Scope, status: int, seconds: float, template: str | None = None) -> None:
        template = template or _template(scope)
        model = str(scope.get("path_params", {}).get("name", ""))
        catalog = getattr(getattr(scope.get("app"), "state", None), "catalog", None)
        if model and (catalog is None or model not in catalog.models):
            model = ""  # a name the client made up is no label: the series would grow without bound
        self.metrics.requests.labels(model, template, str(status)).inc()
        self.metrics.frontend_requests.labels(self.metrics.frontend).inc()
        self.metrics.request_seconds.labels(model, template, str(status)).observe(seconds)

    def _log_access(self, scope: Scope, record: AccessRecord, status: int, started: float, template: str | None,
                    served: ServedModel | None) -> None:
        """Complete the request's record (for its span too) and, with SERVE_ACCESS_LOG, write its line."""
        record.route = template or _template(scope)
        record.status = status
        record.total_ms = round((time.monotonic() - started) * 1000, 3)
        if not record.model and served is not None:  # refused or failed before it reached the engine
            record.model, record.version = served.name, served.version
        if self.access_log:
            access_log.info("%s %s %d", record.method, record.route, status, extra={"access": record.as_dict()})


def describe_span(span: Any, record: AccessRecord | None, request_id: str) -> None:
    """The request's span, named and labelled once it is answered."""
    if record is None:
        return
    span.update_name(f"{record.method} {record.route}")
    span.set_attributes({"http.request.method": record.method, "http.route": record.route,
                         "http.response.status_code": record.status, "serve.request_id": request_id,
                         "serve.model": record.model, "serve.version": record.version or 0,
                         "serve.inputs": record.inputs})
    if record.status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"HTTP {record.status}"))


def _template(scope: Scope) -> str:
    """The matched route's path template (not the path: it would make a label per model and input)."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


def _headers_of_interest(scope: Scope) -> tuple[int | None, bytes | None, int | None]:
    """Content-Length (None if absent or not a number), X-Request-ID and X-Priority (-1 if not a whole number
    >= 0: the inference routes answer it 400, where they check the level against the model's), in one pass over
    the headers."""
    length = request_id = priority = None
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif key == b"x-request-id":
            request_id = value
        elif key == b"x-priority":
            priority = int(value) if value.isdigit() and len(value) < 4 else -1
    return length, request_id, priority


# The inference routes that name their model in the path: native, KServe V1, V2, generate, samples.
INFERENCE_PATH = re.compile(r"^/v[12]/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/]+))?"
                            r"(?:/predict|:predict|/infer|/generate|/samples)$")
FAST_ROUTE = "refused before routing"  # the route label of these refusals in serve_requests_total
REFUSAL_HEADERS = [(b"content-type", b"application/json"), (b"retry-after", b"1")]


@dataclass(frozen=True)
class RequestedModel:
    """The served model an inference request names in its path, looked up once for the middleware."""

    served: ServedModel
    direct: str | None  # served without routing: "native" (POST /v1/models/{name}[/versions/{v}]/predict) or
    # "v2" (POST /v2/models/{name}[/versions/{v}]/infer)
    versioned: bool  # the path names a version

    @property
    def template(self) -> str:
        """The route's path template, for the request metrics."""
        prefix, verb = ("/v1", "/predict") if self.direct == "native" else ("/v2", "/infer")
        return f"{prefix}/models/{{name}}" + ("/versions/{version}" if self.versioned else "") + verb


def requested_model(scope: Scope) -> RequestedModel | None:
    """The model of an inference route's request, or None: another route, or an unknown model or version (the
    routes answer those with their 404)."""
    path = scope["path"]
    match = INFERENCE_PATH.match(path)
    if match is None or scope["method"] != ("GET" if path.endswith("/samples") else "POST"):
        return None
    catalog = getattr(getattr(scope.get("app"), "state", None), "catalog", None)
    if catalog is None:
        return None
    try:
        served = catalog.get(match["name"], match["version"])
    except ServeError:
        return None
    scope["path_params"] = {"name": served.name}
    direct = "native" if path.startswith("/v1/") and path.endswith("/predict") else (
        "v2" if path.startswith("/v2/") and path.endswith("/infer") else None)
    return RequestedModel(served, direct, match["version"] is not None)


def fast_refusal(scope: Scope, requested: RequestedModel) -> bytes | None:
    """A 503 for an inference request whose model is full or not ready, decided from the path alone: under a
    flood, refusals cost what a health probe costs, and the event loop stays free for admitted work. Whatever
    this cannot decide (a missing API key) goes on to the routes, which answer it."""
    settings = getattr(scope["app"].state, "settings", None)
    if settings is None or settings.api_keys:  # keys: the routes check them first
        return None
    served = requested.served
    if not served.takes_requests:
        return orjson.dumps({"error": f"model {served.name} v{served.version} is not ready ({served.status})",
                             "type": "unavailable"})
    if served.admission.full:
        return served.admission.refusal  # the same bytes every time: nothing to render under a flood
    return None
