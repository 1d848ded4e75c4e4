"""The request-level glue for text generation: validate, submit to the model's decoding loop, and
turn its events into a whole answer or a stream; errors become HTTP errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request

from service.batcher import DeadlineExceeded, ModelUnavailable, QueueFull
from service.decoder import Finished, Generation, GenerationRequest, Piece
from service.errors import ServeError
from service.predict import arrival_time, require_ready, until_disconnect
from service.registry import Registry, ServedModel
from service.runtimes.language_model import Sampling
from service.settings import Settings


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


def language_model(registry: Registry, name: str, version: str | None = None) -> ServedModel:
    served = registry.get(name, version)
    if served.task != "text-generation":
        raise ServeError(400, f"model {name!r} is a {served.task or 'failed'} model, not a language model",
                         "wrong_task")
    require_ready(served)
    return served


def start(request: Request, served: ServedModel, registry: Registry, settings: Settings,
          params: GenerateParams) -> Generation:
    if len(params.prompt) > settings.max_prompt_chars:
        raise ServeError(400, f"prompt of {len(params.prompt)} characters exceeds {settings.max_prompt_chars}",
                         "invalid_input")
    if params.max_tokens > settings.max_new_tokens:
        raise ServeError(400, f"max_tokens {params.max_tokens} exceeds the limit of {settings.max_new_tokens}",
                         "invalid_input")
    assert served.decoder is not None
    generation_request = GenerationRequest(
        prompt_ids=served.runtime.encode_prompt(params.prompt), max_tokens=params.max_tokens,
        sampling=Sampling(params.temperature, params.top_k, params.top_p), seed=params.seed, stop=params.stop,
        deadline=arrival_time(request) + registry.timeout_s(served))
    try:
        return served.decoder.submit(generation_request)
    except QueueFull:
        raise ServeError(503, f"model {served.name} has {served.decoder.max_queue} generations waiting; retry "
                         "later", "queue_full", headers={"Retry-After": "1"}) from None
    except ModelUnavailable as exc:
        raise ServeError(503, f"model {served.name} is not available: {exc}", headers={"Retry-After": "5"}) from None


async def events(generation: Generation) -> AsyncIterator[Piece | Finished]:
    """The generation's events, with the decoding loop's failures as HTTP errors."""
    try:
        async for event in generation.events():
            yield event
    except DeadlineExceeded:
        raise ServeError(504, "the generation was not started before the request's deadline") from None
    except ModelUnavailable as exc:
        raise ServeError(503, f"the model is not available: {exc}", headers={"Retry-After": "5"}) from None


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

    return await until_disconnect(request, gather())
