"""The request-level glue for text generation: validate, admit, start the generation on the engine's
generation loop, and turn its events into a whole answer or a stream; errors become HTTP errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request

from service.errors import ServeError
from service.frontend.admission import Permit
from service.frontend.catalog import Catalog, ServedModel
from service.frontend.engine_client import EngineStream
from service.frontend.predict import admit, arrival_time, until_disconnect
from service.outcomes import BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull
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


def start(request: Request, served: ServedModel, registry: Catalog, settings: Settings,
          params: GenerateParams) -> Generation:
    if len(params.prompt) > settings.max_prompt_chars:
        raise ServeError(400, f"prompt of {len(params.prompt)} characters exceeds {settings.max_prompt_chars}",
                         "invalid_input")
    if params.max_tokens > settings.max_new_tokens:
        raise ServeError(400, f"max_tokens {params.max_tokens} exceeds the limit of {settings.max_new_tokens}",
                         "invalid_input")
    generation_request = GenerationRequest(
        prompt_ids=served.runtime.encode_prompt(params.prompt), max_tokens=params.max_tokens,
        sampling=Sampling(params.temperature, params.top_k, params.top_p), seed=params.seed, stop=params.stop,
        deadline=arrival_time(request) + registry.timeout_s(served))
    permit = served.admission.take(served.name, 1)
    try:
        stream = served.engine.stream(served.name, served.version, generation_request.deadline,
                                      PayloadCodec.encode([generation_request]), params.max_tokens)
    except ModelUnavailable as exc:
        permit.release()
        raise ServeError(503, f"model {served.name} is not available: {exc}", headers={"Retry-After": "1"}) from None
    return Generation(stream, permit)


def events(generation: Generation) -> AsyncIterator[Piece | Finished]:
    """The generation's events, with the engine's failures as HTTP errors."""
    return generation.events()


async def collect(request: Request, generation: Generation) -> Completion:
    """The whole completion; a client that disconnects meanwhile stops its generation."""
    async def gather() -> Completion:
        pieces = []
        async for event in events(generation):
            if isinstance(event, Piece):
                pieces.append(event.text)
            else:
                return Completion("".join(pieces), event.tokens, event.prompt_tokens, event.reason)
        raise ServeError(503, "the generation ended without finishing")

    try:
        return await until_disconnect(request, gather())
    finally:
        generation.close()
