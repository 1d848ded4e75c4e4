"""OpenAI-compatible routes (the official ``openai`` client works unchanged): ``POST /v1/embeddings``.

Errors on these routes use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``
(see service/errors.py).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service.errors import ServeError
from service.predict import decode_and_infer
from service.responses import JSONResponse
from service.routes.bodies import check_count, read_json
from service.routes.deps import RegistryDep, SettingsDep

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
async def embeddings(request: Request, registry: RegistryDep, settings: SettingsDep) -> JSONResponse:
    body: EmbeddingsRequest = await read_json(request, EmbeddingsRequest)
    served = registry.get(body.model)
    if served.task != "text-embedding" or served.runtime is None:
        raise ServeError(400, f"model {body.model!r} is not a text embedder ({served.status})",
                         "invalid_request_error")
    texts = _texts(body.input)
    check_count(len(texts), settings.max_inputs_per_request)
    runtime = served.runtime
    if body.dimensions is not None and body.dimensions != runtime.dimensions:
        raise ServeError(400, f"model {body.model} has {runtime.dimensions} dimensions; it cannot shorten them",
                         "invalid_request_error")
    results = await decode_and_infer(request, served, runtime.decode_text, texts, registry.timeout_s(served.name))
    tokens = sum(result.tokens for result in results)
    data: list[dict[str, Any]] = []
    for index, result in enumerate(results):
        vector = np.asarray(result.vector, dtype="<f4")
        encoded = base64.b64encode(vector.tobytes()).decode() if body.encoding_format == "base64" else vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return JSONResponse({"object": "list", "data": data, "model": served.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
