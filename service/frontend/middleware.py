"""Pure ASGI middleware: arrival time, body size limit, request metrics (by route template)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServeError, error_response
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

        try:
            await self.app(scope, limited_receive, recording_send)
        finally:
            self._record(scope, status["code"], time.monotonic() - started)

    async def _reject_too_large(self, scope: Scope, receive: Receive, send: Send, declared: int) -> None:
        response = error_response(413, f"body of {declared} bytes exceeds the limit of {self.max_body_bytes}",
                                  "too_large", headers={"Connection": "close"})
        await response(scope, receive, send)
        self._record(scope, 413, 0.0)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
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

