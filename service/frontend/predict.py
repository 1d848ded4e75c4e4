"""The request-level glue between routers and the engine: admit, decode off the event loop when that is
costly, send with the request's deadline, watch for the client leaving, and turn the engine's outcomes
into HTTP errors."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import io
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from PIL import Image
from starlette.requests import Request

from service import tracing
from service.errors import ServeError
from service.frontend.catalog import ServedModel
from service.outcomes import BatchFailed, DeadlineExceeded, ModelUnavailable, OverBudget, QueueFull, QuotaExceeded
from service.request_context import PRIORITY
from service.runtimes.images import png_pixels
from service.transport import PayloadCodec

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
    """Await ``work``; if the client disconnects first, cancel it (the engine drops its inputs)."""
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
    if not served.takes_requests:
        raise ServeError(503, f"model {served.name} v{served.version} is not ready ({served.status})",
                         headers={"Retry-After": "5"})


def admit(served: ServedModel) -> None:
    """Before the body is read: readiness, and room for at least one input (cheap as a health probe)."""
    require_ready(served)
    served.admission.check(served.name)


INLINE_DECODE_UNITS = 64 * 1024  # pixels or characters: below this, decoding is cheaper than a thread hop
# Larger inputs decode in this many threads per front-end, the rest waiting their turn. A small file can
# decode to millions of pixels (a blank 4000x4000 PNG is 18 KB and 0.13 s of CPU); in the framework's pool
# (40 threads) a flood of them outnumbered the event loops for the cores and held 40 decodes' memory. With
# one decode thread per front-end (the front-ends are half the cores), measured on 2 cores with 2 front-ends
# and 32 connections of such PNGs: a 28x28 predict beside them p50 194 -> 21 ms, health p50 43 -> 6 ms,
# front-end RSS 620 -> 120 MB, and more of the large ones answered (6 -> 9 per second); two threads: 33 ms.
DECODE_THREADS = 1


@functools.cache
def decode_pool() -> ThreadPoolExecutor:
    """The front-end's threads for large decodes (made on first use, for the life of the process)."""
    return ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")


def decoded_size(raw: Any) -> int:
    """What an input decodes to (an image's pixels from its header, a text's characters), not its bytes:
    a small file can hold a large image."""
    if isinstance(raw, bytes):
        if (pixels := png_pixels(raw)) is not None:  # a PNG's size, without opening it (~60 us less)
            return pixels
        try:
            width, height = Image.open(io.BytesIO(raw)).size  # reads the header only
            return int(width * height)
        except Exception:
            return len(raw)  # not an image (or a broken one): its decoder reports it
    if isinstance(raw, str | list):
        return len(raw)  # a text's characters, a series' values
    return int(getattr(raw, "size", 0))  # an array's elements; nothing to decode in anything else (a sampling
    # request), which must not wait for the decode pool


async def decode_all(decode: Callable[[Any, int], Any], raw_inputs: Sequence[Any]) -> list[Any]:
    """Decode and validate every input; the first bad one fails the request (400).

    Small inputs (a 28x28 PNG, a sentence) decode in microseconds, faster than a thread hop, so they
    decode right here; larger ones (by what they decode to, not their bytes) go to the bounded decode
    pool, so the event loop never stalls on them and they cannot crowd out other requests' cores.
    """
    def run() -> list[Any]:
        return [decode(raw, index) for index, raw in enumerate(raw_inputs)]

    if sum(decoded_size(raw) for raw in raw_inputs) < INLINE_DECODE_UNITS:
        return run()
    # the request's context (its ID, for log lines) goes along
    return await asyncio.get_running_loop().run_in_executor(decode_pool(), contextvars.copy_context().run, run)


async def decode_and_infer(request: Request, served: ServedModel, decode: Callable[[Any, int], Any],
                           raw_inputs: Sequence[Any], timeout_s: float, priority: int | None = None) -> list[Any]:
    """Take the inputs' places in the model's queue, decode and validate them, run them on the engine."""
    require_ready(served)
    level = checked_priority(served, PRIORITY.get() if priority is None else priority)
    units = sum(served.runtime.units(raw) for raw in raw_inputs)
    with served.admission.take(served.name, units):
        with tracing.span("decode", **{"serve.inputs": len(raw_inputs)}):
            payloads = await decode_all(decode, raw_inputs)
        return await infer(request, served, payloads, timeout_s, level)


def checked_priority(served: ServedModel, priority: int) -> int:
    """A request's priority level (the X-Priority header's, or V2's ``parameters.priority``; 0: the model's
    default), 400 when the model has no such level."""
    levels = served.config.priority_levels
    if priority < 0:  # the middleware's mark of an X-Priority header that is no whole number
        raise ServeError(400, "X-Priority must be a whole number: 1 (the highest) up to the model's priority levels, "
                         "or 0 for its default", "invalid_input")
    if priority > levels:
        raise ServeError(400, f"priority {priority} is not one of model {served.name}'s levels: 1 (the highest) to "
                         f"{levels}, or 0 for its default ({served.config.default_priority})", "invalid_input")
    return priority


async def infer(request: Request, served: ServedModel, payloads: list[Any], timeout_s: float,
                priority: int = 0) -> list[Any]:
    """Run decoded payloads on the engine (admitted by the caller); their results in order."""
    deadline = arrival_time(request) + timeout_s
    with engine_errors(served, timeout_s):
        raw = await until_disconnect(
            request, served.engine.call(served.name, served.version, deadline, PayloadCodec.encode(payloads),
                                       len(payloads), priority))
    return list(served.payload_codec.decode(raw))


@contextlib.contextmanager
def engine_errors(served: ServedModel, timeout_s: float) -> Iterator[None]:
    """The engine's outcomes as HTTP errors of the one error shape."""
    try:
        yield
    except QueueFull as exc:
        raise ServeError(503, f"model {served.name} is at capacity ({served.config.capacity} inputs at once); "
                         "retry later", "queue_full", headers={"Retry-After": str(exc.retry_after_s)}) from None
    except DeadlineExceeded:
        raise ServeError(504, f"the request's deadline of {timeout_s * 1000:.0f} ms passed before its "
                         "inference finished") from None
    except ModelUnavailable as exc:
        raise ServeError(503, f"model {served.name} is not available: {exc}",
                         headers={"Retry-After": "1"}) from None
    except BatchFailed as exc:
        raise ServeError(500, f"inference failed: {exc}", "inference_failed") from None
    except QuotaExceeded as exc:
        raise quota_error(exc) from None
    except OverBudget as exc:
        raise over_budget_error(exc) from None


def over_budget_error(exc: OverBudget) -> ServeError:
    return ServeError(507, str(exc), "over_memory_budget")


def quota_error(exc: QuotaExceeded) -> ServeError:
    return ServeError(429, str(exc), "rate_limited", headers={"Retry-After": str(exc.retry_after_s)})
