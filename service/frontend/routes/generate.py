"""``POST /v1/models/{name}[/versions/{v}]/generate``: text from a language model, whole or streamed (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.responses import Response

from service.errors import ServeError
from service.frontend import generation
from service.frontend.catalog import ServedModel
from service.frontend.routes.bodies import read_json
from service.frontend.routes.deps import CatalogDep, SettingsDep
from service.responses import JSONResponse
from service.runtimes.language_model import Piece
from service.schemas import ERROR_RESPONSES, GenerateRequest, GenerateResponse

router = APIRouter(tags=["generation"])


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if len(strings) > 4 or any(not s or len(s) > 64 for s in strings):
        raise ServeError(400, "stop takes up to 4 non-empty strings of at most 64 characters", "invalid_input")
    return tuple(strings)


def sse(data: object) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


async def _generate(request: Request, served: ServedModel, catalog: CatalogDep, settings: SettingsDep) -> Response:
    body: GenerateRequest = await read_json(request, GenerateRequest)
    params = generation.GenerateParams(body.prompt, body.max_tokens, body.temperature, body.top_k, body.top_p,
                                       body.seed, stop_strings(body.stop))
    running = generation.start(request, served, catalog, settings, params)
    if not body.stream:
        done = await generation.collect(request, running)
        return JSONResponse({"model": served.name, "version": served.version, "text": done.text,
                             "tokens": done.tokens, "finish_reason": done.finish_reason})

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for event in generation.events(running):
                if isinstance(event, Piece):
                    yield sse({"text": event.text})
                else:
                    yield sse({"finish_reason": event.reason, "tokens": event.tokens})
        except ServeError as exc:
            yield sse({"error": exc.message, "type": exc.type})
        yield sse(b"[DONE]")

    await running.prime()  # a generation that cannot start is an HTTP error, not a stream of one
    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


GENERATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": GenerateRequest.model_json_schema()}}}}


@router.post("/v1/models/{name}/generate", summary="Generate text (JSON, or SSE with stream: true)",
             response_model=GenerateResponse, responses=ERROR_RESPONSES, openapi_extra=GENERATE_BODY)
async def generate(name: str, request: Request, catalog: CatalogDep, settings: SettingsDep) -> Response:
    return await _generate(request, generation.language_model(catalog, name), catalog, settings)


@router.post("/v1/models/{name}/versions/{version}/generate", summary="Generate text with one version",
             response_model=GenerateResponse, responses=ERROR_RESPONSES, openapi_extra=GENERATE_BODY)
async def generate_version(name: str, version: str, request: Request, catalog: CatalogDep,
                           settings: SettingsDep) -> Response:
    return await _generate(request, generation.language_model(catalog, name, version), catalog, settings)
