"""Pure ASGI middleware: arrival time, body size limit, request metrics (by route template), and the
refusal of a request for a full or unready model before any routing, body or decoding."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServeError, error_response
from service.frontend.catalog import ServedModel
from service.frontend.direct import serve_direct
from service.frontend.predict import ARRIVAL_KEY
from service.metrics import Metrics


class ServeMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL_KEY] = started = time.monotonic()
        requested = requested_model(scope)
        if requested is not None and (refusal := fast_refusal(scope, requested)):
            await send({"type": "http.response.start", "status": 503, "headers": REFUSAL_HEADERS})
            await send({"type": "http.response.body", "body": refusal})
            self.metrics.count_refusal(scope["path_params"]["name"])  # counted, not timed: it took microseconds
            return
        status = {"code": 500}
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._reject_too_large(scope, receive, send, declared)
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
            await send(message)

        direct = requested if requested is not None and requested.native_predict else None
        try:
            if direct is not None:  # the native predict route, without the framework's routing
                await serve_direct(direct.served, scope, limited_receive, recording_send)
            else:
                await self.app(scope, limited_receive, recording_send)
        finally:
            self._record(scope, status["code"], time.monotonic() - started,
                         direct.template if direct is not None else None)

    async def _reject_too_large(self, scope: Scope, receive: Receive, send: Send, declared: int) -> None:
        response = error_response(413, f"body of {declared} bytes exceeds the limit of {self.max_body_bytes}",
                                  "too_large", headers={"Connection": "close"})
        await response(scope, receive, send)
        self._record(scope, 413, 0.0)

    def _record(self, scope: Scope, status: int, seconds: float, template: str | None = None) -> None:
        route = scope.get("route")
        template = template or getattr(route, "path", None) or "unmatched"
        model = str(scope.get("path_params", {}).get("name", ""))
        self.metrics.requests.labels(model, template, str(status)).inc()
        self.metrics.frontend_requests.labels(self.metrics.frontend).inc()
        self.metrics.request_seconds.labels(model, template, str(status)).observe(seconds)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# The inference routes that name their model in the path: native, KServe V1, V2, generate, samples.
INFERENCE_PATH = re.compile(r"^/v[12]/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/]+))?"
                            r"(?:/predict|:predict|/infer|/generate|/samples)$")
FAST_ROUTE = "refused before routing"  # the route label of these refusals in serve_requests_total
REFUSAL_HEADERS = [(b"content-type", b"application/json"), (b"retry-after", b"1")]


@dataclass(frozen=True)
class RequestedModel:
    """The served model an inference request names in its path, looked up once for the middleware."""

    served: ServedModel
    native_predict: bool  # POST /v1/models/{name}[/versions/{version}]/predict
    versioned: bool  # the path names a version

    @property
    def template(self) -> str:
        """The native predict route's path template, for the request metrics."""
        return "/v1/models/{name}/versions/{version}/predict" if self.versioned else "/v1/models/{name}/predict"


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
    return RequestedModel(served, path.startswith("/v1/") and path.endswith("/predict"), match["version"] is not None)


def fast_refusal(scope: Scope, requested: RequestedModel) -> bytes | None:
    """A 503 for an inference request whose model is full or not ready, decided from the path alone: under a
    flood, refusals cost what a health probe costs, and the event loop stays free for admitted work. Whatever
    this cannot decide (a missing API key) goes on to the routes, which answer it."""
    settings = getattr(scope["app"].state, "settings", None)
    if settings is None or settings.api_keys:  # keys: the routes check them first
        return None
    served = requested.served
    if not served.ready:
        return orjson.dumps({"error": f"model {served.name} v{served.version} is not ready ({served.status})",
                             "type": "unavailable"})
    if served.admission.full:
        return served.admission.refusal  # the same bytes every time: nothing to render under a flood
    return None
