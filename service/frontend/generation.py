"""The request-level glue for text generation: validate, admit, start the generation on the engine's
generation loop, and turn its events into a whole answer or a stream; errors become HTTP errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from starlette.requests import Request

from service.errors import ServeError
from service.frontend.admission import Permit
from service.frontend.catalog import Catalog, ServedModel
from service.frontend.engine_client import EngineStream
from service.frontend.predict import (
    admit,
    arrival_time,
    checked_priority,
    over_budget_error,
    quota_error,
    until_disconnect,
)
from service.outcomes import BatchFailed, DeadlineExceeded, ModelUnavailable, OverBudget, QueueFull, QuotaExceeded
from service.request_context import PRIORITY
from service.runtimes.language_model import Finished, GenerationRequest, Piece, Sampling
from service.settings import Settings
from service.transport import PayloadCodec


@dataclass(frozen=True)
class GenerateParams:
    prompt: str
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float
    seed: int | None
    stop: tuple[str, ...]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    prompt_tokens: int
    finish_reason: str


class Generation:
    """One generation running on the engine: its events (the first may be read ahead, so that a stream
    that cannot start is an HTTP error, not a 200 with an error inside), and its place in the queue."""

    def __init__(self, stream: EngineStream, permit: Permit) -> None:
        self._stream = stream
        self._permit = permit
        self._events = stream.events()
        self._first: Piece | Finished | None = None

    async def prime(self) -> None:
        """Wait for the first event; a failure before it raises here (503, 504)."""
        try:
            self._first = await anext(self._events)
        except Exception as exc:
            self.close()
            raise http_error(exc) from None

    async def events(self) -> AsyncIterator[Piece | Finished]:
        try:
            if self._first is not None:
                yield self._first
                if isinstance(self._first, Finished):
                    return
            async for event in self._events:
                yield event
        except Exception as exc:
            raise http_error(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        self._stream.cancel()
        self._permit.release()


def http_error(exc: Exception) -> Exception:
    """The engine's outcome for a generation as an HTTP error (anything else passes through)."""
    if isinstance(exc, QueueFull):
        return ServeError(503, "the model has too many generations waiting; retry later", "queue_full",
                          headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, DeadlineExceeded):
        return ServeError(504, "the generation was not started before the request's deadline")
    if isinstance(exc, ModelUnavailable):
        return ServeError(503, f"the model is not available: {exc}", headers={"Retry-After": "1"})
    if isinstance(exc, QuotaExceeded):
        return quota_error(exc)
    if isinstance(exc, OverBudget):
        return over_budget_error(exc)
    if isinstance(exc, BatchFailed):
        return ServeError(500, f"generation failed: {exc}", "inference_failed")
    return exc


def language_model(registry: Catalog, name: str, version: str | None = None) -> ServedModel:
    served = registry.get(name, version)
    if served.task != "text-generation":
        raise ServeError(400, f"model {name!r} is a {served.task or 'failed'} model, not a language model",
                         "wrong_task")
    admit(served)
    return served


def generation_request(request: Request, served: ServedModel, registry: Catalog, settings: Settings,
                       params: GenerateParams) -> GenerationRequest:
    """One generation's bounds checked and its prompt encoded (400 if either fails); nothing started yet."""
    if len(params.prompt) > settings.max_prompt_chars:
        raise ServeError(400, f"prompt of {len(params.prompt)} characters exceeds {settings.max_prompt_chars}",
                         "invalid_input")
    if params.max_tokens > settings.max_new_tokens:
        raise ServeError(400, f"max_tokens {params.max_tokens} exceeds the limit of {settings.max_new_tokens}",
                         "invalid_input")
    return GenerationRequest(
        prompt_ids=served.runtime.encode_prompt(params.prompt), max_tokens=params.max_tokens,
        sampling=Sampling(params.temperature, params.top_k, params.top_p), seed=params.seed, stop=params.stop,
        deadline=arrival_time(request) + registry.timeout_s(served))


def start(request: Request, served: ServedModel, registry: Catalog, settings: Settings,
          params: GenerateParams) -> Generation:
    [generation] = start_all(request, served, registry, settings, [params])
    return generation


def start_all(request: Request, served: ServedModel, registry: Catalog, settings: Settings,
              params: Sequence[GenerateParams]) -> list[Generation]:
    """Start a request's generations, all or none: every prompt is checked and every place in the queue
    taken before the first one starts, and if one cannot start, those started are cancelled."""
    requests = [generation_request(request, served, registry, settings, p) for p in params]
    priority = checked_priority(served, PRIORITY.get())
    permits: list[Permit] = []
    streams: list[EngineStream] = []
    try:
        for _ in requests:
            permits.append(served.admission.take(served.name, 1))
        for prepared in requests:
            streams.append(served.engine.stream(served.name, served.version, prepared.deadline,
                                                PayloadCodec.encode([prepared]), prepared.max_tokens, priority))
    except Exception as exc:
        for stream in streams:
            stream.cancel()
        for permit in permits:
            permit.release()
        if isinstance(exc, ModelUnavailable):
            raise ServeError(503, f"model {served.name} is not available: {exc}",
                             headers={"Retry-After": "1"}) from None
        raise
    return [Generation(stream, permit) for stream, permit in zip(streams, permits, strict=True)]


def events(generation: Generation) -> AsyncIterator[Piece | Finished]:
    """The generation's events, with the engine's failures as HTTP errors."""
    return generation.events()


async def _gather(generation: Generation) -> Completion:
    pieces = []
    async for event in events(generation):
        if isinstance(event, Piece):
            pieces.append(event.text)
        else:
            return Completion("".join(pieces), event.tokens, event.prompt_tokens, event.reason)
    raise ServeError(503, "the generation ended without finishing")


async def collect(request: Request, generation: Generation) -> Completion:
    """The whole completion; a client that disconnects meanwhile stops its generation."""
    [completion] = await collect_all(request, [generation])
    return completion


async def collect_all(request: Request, generations: Sequence[Generation]) -> list[Completion]:
    """Every completion of a request, in order, decoded together. The first that fails fails the request
    and the others are cancelled (the engine drops them), as they are when the client disconnects: none
    goes on decoding to its ``max_tokens`` for an answer nobody will read."""
    async def gather_all() -> list[Completion]:
        tasks = [asyncio.ensure_future(_gather(generation)) for generation in generations]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:  # the failure of the first prompt among those that failed
                error = task.exception() if task in done else None
                if error is not None:
                    raise error
            return [task.result() for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        return await until_disconnect(request, gather_all())
    finally:
        for generation in generations:
            generation.close()
