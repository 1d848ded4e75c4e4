"""Admission before work (as TEI grants a queue permit before it tokenizes): a request takes its inputs'
places in its model's queue before its body is decoded, and a full model is refused at once.

Each front-end counts the inputs it has admitted and not yet answered, per model version, against its
share of the model's capacity (``max_queue`` waiting beyond the running batch; the shares of all
front-ends add up to it exactly). The check costs
a comparison, so a refusal is as cheap as a health probe, and since a model's inputs waiting in the
engine are never more than those in flight, the engine's own bounded queue (the hard limit behind it)
never has to refuse an input that was already read and decoded.
"""

from __future__ import annotations

import orjson

from service.errors import ServeError
from service.serving import ServingConfig


class Admission:
    def __init__(self, config: ServingConfig, frontend: int = 0, frontends: int = 1, name: str = "") -> None:
        self.limit = share(config.capacity, frontend, frontends)
        self.in_flight = 0
        self.refusal = orjson.dumps({"error": self._message(name), "type": "queue_full"})

    @property
    def full(self) -> bool:
        """Not even one more input fits."""
        return self.in_flight >= self.limit

    def check(self, name: str) -> None:
        """Refuse before reading the body when not even one input fits."""
        if self.full:
            raise self._full(name)

    def take(self, name: str, count: int) -> Permit:
        if self.in_flight + count > self.limit:
            raise self._full(name)
        self.in_flight += count
        return Permit(self, count)

    def _full(self, name: str) -> ServeError:
        return ServeError(503, self._message(name), "queue_full", headers={"Retry-After": "1"})

    def _message(self, name: str) -> str:
        return f"model {name} is at capacity ({self.limit} inputs in flight here); retry later"


class Permit:
    """Places held in the queue until the answer is in (or the request failed); release is idempotent."""

    def __init__(self, admission: Admission, count: int) -> None:
        self._admission = admission
        self._count = count

    def release(self) -> None:
        self._admission.in_flight -= self._count
        self._count = 0

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def share(total: int, index: int, count: int) -> int:
    """Front-end ``index``'s part of ``total`` places: the parts of ``count`` front-ends add up to ``total``
    (at least one place each)."""
    return max(1, total // count + (1 if index < total % count else 0))
