"""Logging as text or one JSON object per line (SERVE_LOG_FORMAT). Every line logged while a request is
served carries its ID (``[id]`` in text, ``request_id`` in JSON); an access-log line carries its fields."""

from __future__ import annotations

import logging
import sys

import orjson

from service.request_context import REQUEST_ID


class RequestIdFilter(logging.Filter):
    """Stamps each record with the ID of the request being served in its context ("" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # before any traceback
        line = super().formatMessage(record)
        if access := getattr(record, "access", None):
            return line + " " + " ".join(f"{key}={'-' if value is None else value}" for key, value in access.items())
        if request_id := getattr(record, "request_id", ""):
            return f"{line} [request {request_id}]"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if request_id := getattr(record, "request_id", ""):
            entry["request_id"] = request_id
        if access := getattr(record, "access", None):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
