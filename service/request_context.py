"""What a front-end and the engine know about the request being served: its ID (``X-Request-ID``), carried
into every log line about it, and, with ``SERVE_ACCESS_LOG``, the figures of its one access-log line.

Both live in context variables: the middleware sets them for the request's task, and the tasks it starts
(the disconnect watch, the engine call) inherit them. The engine sets the ID for the task that serves a
request from the ID the front-end sent with it.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
ACCESS: ContextVar[AccessRecord | None] = ContextVar("access", default=None)
ARRIVAL: ContextVar[float] = ContextVar("arrival", default=0.0)  # time.monotonic() when the request arrived
PRIORITY: ContextVar[int] = ContextVar("priority", default=0)  # its X-Priority header's level (0: the default)
KEY_DIGEST: ContextVar[str] = ContextVar("key_digest", default="")  # the request's API key's, with quotas on

# A client's own ID is kept if it is 1-128 of these characters: enough for UUIDs, ULIDs and trace IDs, and
# nothing that could break a log line (spaces, quotes, newlines) or a header.
WELL_FORMED_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


def new_request_id() -> str:
    return os.urandom(16).hex()


def accepted_request_id(presented: bytes | None) -> str:
    """The client's ``X-Request-ID`` if it is well formed, else a new one."""
    if presented and WELL_FORMED_ID.fullmatch(presented):
        return presented.decode("ascii")
    return new_request_id()


@dataclass
class AccessRecord:
    """One request's access-log line, filled in as it is served (the middleware, the handlers, the engine's
    reply) and written when its response ends."""

    method: str
    route: str = ""
    model: str = ""
    version: int | None = None
    status: int = 0
    inputs: int = 0
    queue_ms: float | None = None  # waiting in the engine's queue, for a batched model
    forward_ms: float | None = None  # the forward of the batch that held the request's inputs
    total_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": REQUEST_ID.get(), **self.__dict__}


def note_model(name: str, version: int, inputs: int) -> None:
    """Record the model a request ran on and how many inputs it sent (a no-op without an access log)."""
    record = ACCESS.get()
    if record is not None:
        record.model, record.version = name, version
        record.inputs += inputs


def note_engine_times(queue_s: float, forward_s: float) -> None:
    record = ACCESS.get()
    if record is not None and forward_s > 0:
        record.queue_ms, record.forward_ms = round(queue_s * 1000, 3), round(forward_s * 1000, 3)
