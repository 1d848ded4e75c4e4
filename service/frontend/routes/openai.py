"""OpenAI-compatible routes (the official ``openai`` client works unchanged): ``POST /v1/embeddings`` and
``POST /v1/completions`` (streamed as Server-Sent Events ending with ``data: [DONE]``).

Errors on these routes use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``
(see service/errors.py).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.responses import Response

from service.errors import ServeError
from service.frontend import generation
from service.frontend.predict import decode_and_infer
from service.frontend.routes.bodies import check_count, read_json
from service.frontend.routes.deps import CatalogDep, SettingsDep
from service.frontend.routes.generate import sse, stop_strings
from service.responses import JSONResponse
from service.runtimes.language_model import Piece

router = APIRouter(tags=["openai"])


class EmbeddingsRequest(BaseModel):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


EMBEDDINGS_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": EmbeddingsRequest.model_json_schema()}}}}


def _texts(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value and not all(isinstance(item, str) for item in value):
        raise ServeError(400, "input must be a string or a list of strings; token arrays are not accepted "
                         "(this model has its own tokenizer)", "invalid_request_error")
    return list(value)  # type: ignore[arg-type]


@router.post("/v1/embeddings", summary="Embeddings (OpenAI-compatible)", response_model=EmbeddingsResponse,
             openapi_extra=EMBEDDINGS_BODY)
async def embeddings(request: Request, catalog: CatalogDep, settings: SettingsDep) -> JSONResponse:
    body: EmbeddingsRequest = await read_json(request, EmbeddingsRequest)
    served = catalog.get(body.model)
    if served.task != "text-embedding" or served.runtime is None:
        raise ServeError(400, f"model {body.model!r} is not a text embedder ({served.status})",
                         "invalid_request_error")
    texts = _texts(body.input)
    check_count(len(texts), settings.max_inputs_per_request)
    runtime = served.runtime
    if body.dimensions is not None and body.dimensions != runtime.dimensions:
        raise ServeError(400, f"model {body.model} has {runtime.dimensions} dimensions; it cannot shorten them",
                         "invalid_request_error")
    results = await decode_and_infer(request, served, runtime.decode_text, texts, catalog.timeout_s(served))
    tokens = sum(result.tokens for result in results)
    data: list[dict[str, Any]] = []
    for index, result in enumerate(results):
        vector = np.asarray(result.vector, dtype="<f4")
        encoded = base64.b64encode(vector.tobytes()).decode() if body.encoding_format == "base64" else vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return JSONResponse({"object": "list", "data": data, "model": served.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


class CompletionRequest(BaseModel):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    n: int | None = 1
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None


COMPLETIONS_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": CompletionRequest.model_json_schema()}}}}


def _unsupported(body: CompletionRequest) -> None:
    checks = {"n": (body.n or 1) != 1, "best_of": (body.best_of or 1) != 1, "echo": bool(body.echo),
              "logprobs": body.logprobs is not None, "suffix": body.suffix is not None,
              "presence_penalty": bool(body.presence_penalty), "frequency_penalty": bool(body.frequency_penalty),
              "logit_bias": bool(body.logit_bias)}
    bad = [name for name, failed in checks.items() if failed]
    if bad:
        raise ServeError(400, f"not supported by this server: {', '.join(bad)}", "invalid_request_error")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@router.post("/v1/completions", summary="Completions (OpenAI-compatible; stream: true for SSE)",
             openapi_extra=COMPLETIONS_BODY)
async def completions(request: Request, catalog: CatalogDep, settings: SettingsDep) -> Response:
    body: CompletionRequest = await read_json(request, CompletionRequest)
    _unsupported(body)
    served = generation.language_model(catalog, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or (body.stream and len(prompts) != 1):
        raise ServeError(400, "prompt must be one string (or, without stream, a non-empty list of strings)",
                         "invalid_request_error")
    check_count(len(prompts), settings.max_inputs_per_request)
    stop = stop_strings(body.stop)
    identity = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": served.name}
    temperature = 1.0 if body.temperature is None else body.temperature
    runs = generation.start_all(request, served, catalog, settings, [generation.GenerateParams(
        prompt, body.max_tokens or 16, temperature, None, body.top_p or 1.0, body.seed, stop) for prompt in prompts])
    if not body.stream:
        done = await generation.collect_all(request, runs)
        choices = [{"text": d.text, "index": i, "logprobs": None, "finish_reason": d.finish_reason}
                   for i, d in enumerate(done)]
        usage = _usage(sum(d.prompt_tokens for d in done), sum(d.tokens for d in done))
        return JSONResponse({**identity, "choices": choices, "usage": usage})
    include_usage = bool((body.stream_options or {}).get("include_usage"))

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for event in generation.events(runs[0]):
                if isinstance(event, Piece):
                    choice = {"text": event.text, "index": 0, "logprobs": None, "finish_reason": None}
                    yield sse({**identity, "choices": [choice]})
                else:
                    choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": event.reason}
                    yield sse({**identity, "choices": [choice]})
                    if include_usage:
                        yield sse({**identity, "choices": [], "usage": _usage(event.prompt_tokens, event.tokens)})
        except ServeError as exc:
            yield sse({"error": {"message": exc.message, "type": "server_error", "param": None, "code": exc.type}})
        yield sse(b"[DONE]")

    await runs[0].prime()  # a generation that cannot start is an HTTP error, not a stream of one
    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
