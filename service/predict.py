"""The request-level glue between routers and batchers: decode off the event loop, submit with the
request's deadline, watch for the client leaving, and turn batcher outcomes into HTTP errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.batcher import Announcement, BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull
from service.errors import ServeError
from service.registry import ServedModel
from service.runtimes.image_generator import SampleRequest, Samples

T = TypeVar("T")

ARRIVAL_KEY = "serve.arrival"


def arrival_time(request: Request) -> float:
    """When the request arrived (``time.monotonic()``), as stamped by the outermost middleware."""
    return float(request.scope.get(ARRIVAL_KEY, time.monotonic()))


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (its queued inputs are dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ServeError(499, "client closed the request", "client_closed")
    finally:
        watcher.cancel()


def require_ready(served: ServedModel) -> None:
    if not served.ready:
        raise ServeError(503, f"model {served.name} v{served.version} is not ready ({served.status})",
                         headers={"Retry-After": "5"})


INLINE_DECODE_BYTES = 32 * 1024  # below this, decoding costs less than the hop to a worker thread


def _size(raw: Any) -> int:
    return len(raw) if isinstance(raw, bytes | str) else getattr(raw, "nbytes", INLINE_DECODE_BYTES)


async def decode_all(decode: Callable[[Any, int], Any], raw_inputs: Sequence[Any]) -> list[Any]:
    """Decode and validate every input; the first bad one fails the request (400).

    Small inputs (a 28x28 PNG, a sentence) decode in microseconds, faster than a thread hop, so they
    decode right here; larger ones go to a worker thread so the event loop never stalls on them.
    """
    def run() -> list[Any]:
        return [decode(raw, index) for index, raw in enumerate(raw_inputs)]

    if sum(_size(raw) for raw in raw_inputs) < INLINE_DECODE_BYTES:
        return run()
    return await run_in_threadpool(run)


async def decode_and_infer(request: Request, served: ServedModel, decode: Callable[[Any, int], Any],
                           raw_inputs: Sequence[Any], timeout_s: float) -> list[Any]:
    """Decode and validate every input off the event loop, then queue them on the model's batcher.

    The inputs are announced to the batcher while they decode, so that an idle model waits a little
    for them rather than running a batch of one just before they arrive.
    """
    require_ready(served)
    assert served.batcher is not None
    with served.batcher.announce(len(raw_inputs)) as announcement:
        payloads = await decode_all(decode, raw_inputs)
        return await infer(request, served, payloads, timeout_s, announcement)


async def infer(request: Request, served: ServedModel, payloads: list[Any], timeout_s: float,
                announcement: Announcement | None = None) -> list[Any]:
    """Queue decoded payloads on the model's batcher (readiness checked by the caller) and return
    their results in order."""
    assert served.batcher is not None
    deadline = arrival_time(request) + timeout_s
    with worker_errors(served, timeout_s, served.batcher.config.max_queue):
        return await until_disconnect(request, served.batcher.submit(payloads, deadline, announcement))


async def denoise(request: Request, served: ServedModel, sample: SampleRequest, timeout_s: float) -> Samples:
    """Sample on the model's denoising loop, dropped between steps if the client leaves or time runs out."""
    require_ready(served)
    assert served.denoiser is not None
    deadline = arrival_time(request) + timeout_s
    with worker_errors(served, timeout_s, served.denoiser.max_queue):
        return await until_disconnect(request, served.denoiser.submit(sample, deadline))


@contextlib.contextmanager
def worker_errors(served: ServedModel, timeout_s: float, max_queue: int) -> Iterator[None]:
    """A worker's outcomes as HTTP errors of the one error shape."""
    try:
        yield
    except QueueFull as exc:
        raise ServeError(503, f"model {served.name} is at capacity ({max_queue} inputs queued); retry later",
                         "queue_full", headers={"Retry-After": str(exc.retry_after_s)}) from None
    except DeadlineExceeded:
        raise ServeError(504, f"the request's deadline of {timeout_s * 1000:.0f} ms passed before its "
                         "inference finished") from None
    except ModelUnavailable as exc:
        raise ServeError(503, f"model {served.name} is not available: {exc}",
                         headers={"Retry-After": "5"}) from None
    except BatchFailed as exc:
        raise ServeError(500, f"inference failed: {exc}", "inference_failed") from None
