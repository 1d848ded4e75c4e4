"""The one error shape, ``{"error": ..., "type": ...}``, and the handlers that enforce it everywhere."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.responses import JSONResponse

log = logging.getLogger("service.errors")

_TYPES = {400: "invalid_input", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "too_large", 415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited",
          503: "unavailable", 504: "deadline_exceeded"}


class ServeError(Exception):
    """An error meant for the client: its status, a sentence for a person, a machine code."""

    def __init__(self, status: int, message: str, type_: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or _TYPES.get(status, "error")
        self.headers = dict(headers or {})


class InputError(ServeError):
    """One input of a request is bad; the message names its index."""

    def __init__(self, index: int | None, message: str, status: int = 400, type_: str | None = None) -> None:
        prefix = f"inputs[{index}]: " if index is not None else ""
        super().__init__(status, prefix + message, type_)
        self.index = index


def not_found(what: str) -> ServeError:
    return ServeError(404, what)


def error_response(status: int, message: str, type_: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "type": type_}, status_code=status, headers=dict(headers or {}))


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


OPENAI_PATHS = frozenset({"/v1/embeddings", "/v1/completions", "/v1/chat/completions"})
_OPENAI_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
                 503: "server_error", 504: "timeout", 500: "server_error"}


def _respond(request: Request, status: int, message: str, type_: str,
             headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Our error shape, or OpenAI's on the OpenAI-compatible routes (its clients parse that one)."""
    if request.url.path in OPENAI_PATHS:
        kind = _OPENAI_TYPES.get(status, "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": type_}}
        return JSONResponse(body, status_code=status, headers=dict(headers or {}))
    return error_response(status, message, type_, headers)


def exception_response(request: Request, exc: Exception) -> JSONResponse:
    """Any exception as the response the client gets: the one mapping behind every handler below, and
    behind the predict route served without routing (service/frontend/direct.py)."""
    if isinstance(exc, ServeError):
        return _respond(request, exc.status, exc.message, exc.type, exc.headers)
    if isinstance(exc, StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route"
        return _respond(request, exc.status_code, message, _TYPES.get(exc.status_code, "error"),
                        getattr(exc, "headers", None))
    if isinstance(exc, RequestValidationError):
        return _respond(request, 422, _describe_validation(list(exc.errors())), "validation_error")
    if isinstance(exc, ClientDisconnect):
        # The client left while its body was being read: nobody is there to answer, nothing to log loudly.
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return _respond(request, 499, "client closed the request", "client_closed")
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(request, 500, "internal error; this is a bug, see the server log", "internal")


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return exception_response(request, exc)

    for kind in (ServeError, StarletteHTTPException, RequestValidationError, ClientDisconnect, Exception):
        app.add_exception_handler(kind, handle)
