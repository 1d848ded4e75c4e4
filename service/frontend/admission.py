"""Admission before work (as TEI grants a queue permit before it tokenizes): a request takes its inputs'
places in its model's queue before its body is decoded, and a full model is refused at once.

Each front-end counts the inputs it has admitted and not yet answered, per model version, against the
model's ``max_queue``. The check costs a comparison, so a refusal is as cheap as a health probe; the
engine's own bounded queue stays the hard limit behind it.
"""

from __future__ import annotations

from service.errors import ServeError
from service.serving import ServingConfig


class Admission:
    def __init__(self, config: ServingConfig) -> None:
        self.limit = config.max_queue
        self.in_flight = 0

    def check(self, name: str) -> None:
        """Refuse before reading the body when not even one input fits."""
        if self.in_flight >= self.limit:
            raise self._full(name)

    def take(self, name: str, count: int) -> Permit:
        if self.in_flight + count > self.limit:
            raise self._full(name)
        self.in_flight += count
        return Permit(self, count)

    def _full(self, name: str) -> ServeError:
        return ServeError(503, f"model {name} is at capacity ({self.limit} inputs queued); retry later",
                          "queue_full", headers={"Retry-After": "1"})


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
