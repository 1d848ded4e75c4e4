"""How a request can end short of a result: the engine's schedulers raise these, the transport carries
them, and the front-ends turn them into HTTP errors (503 with Retry-After, 504, 500)."""

from __future__ import annotations


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class ModelUnavailable(Exception):
    """The model cannot run now: not loaded, its scheduler died, or its engine is restarting."""


class OverBudget(Exception):
    """The model needs more memory than the engine's whole budget (SERVE_MEMORY_BUDGET_MB): 507."""


class BatchFailed(Exception):
    """The forward (or loop step) this input was in raised; ``__cause__`` holds the original."""


class WorkerFatal(Exception):
    """Raised by a forward when its device can run nothing more (the scheduler is dead)."""


class QuotaExceeded(Exception):
    """The request's API key is over its requests-per-second or concurrency limit (429)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ControlFailed(Exception):
    """A load or unload of the model repository API failed: ``kind`` is not_found or load_failed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
