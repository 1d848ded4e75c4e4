"""``GET /v1/models/{name}[/versions/{v}]/samples``: images from a generator, a PNG grid or JSON."""

from __future__ import annotations

import functools
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from service.errors import ServeError
from service.frontend.catalog import Catalog, ServedModel
from service.frontend.predict import admit, decode_and_infer
from service.frontend.routes.deps import CatalogDep
from service.responses import JSONResponse
from service.runtimes.image_generator import Samples
from service.schemas import ERROR_RESPONSES, SampleParameters

router = APIRouter(tags=["generation"])
SAMPLE_RESPONSES = {**ERROR_RESPONSES, 200: {"content": {"image/png": {}, "application/json": {}},
                                             "description": "a PNG grid, or JSON with the seed and one PNG per image"}}


def generator_runtime(served: ServedModel) -> Any:
    if served.task != "image-generation" or served.runtime is None:
        raise ServeError(400, f"model {served.name} is not an image generator ({served.task or served.status})",
                         "wrong_task")
    return served.runtime


async def draw(request: Request, served: ServedModel, catalog: Catalog, params: SampleParameters) -> Samples:
    """Check the parameters against this generator, then sample on the engine."""
    runtime = generator_runtime(served)
    seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
    sample_request = runtime.sample_request(params, seed)
    decode = functools.partial(runtime.decode, params=None)
    [samples] = await decode_and_infer(request, served, decode, [sample_request], catalog.timeout_s(served))
    return samples


async def _samples(request: Request, served: ServedModel, catalog: Catalog, params: SampleParameters) -> Response:
    runtime = generator_runtime(served)
    admit(served)
    samples = await draw(request, served, catalog, params)
    headers = {"X-Seed": str(samples.seed)}
    if params.format == "json":
        return JSONResponse(runtime.as_json(samples), headers=headers)
    return Response(runtime.png_grid(samples), media_type="image/png", headers=headers)


@router.get("/v1/models/{name}/samples", summary="Images from a generator (PNG grid or JSON)",
            responses=SAMPLE_RESPONSES)
async def samples(name: str, request: Request, catalog: CatalogDep,
                  params: Annotated[SampleParameters, Query()]) -> Response:
    return await _samples(request, catalog.get(name), catalog, params)


@router.get("/v1/models/{name}/versions/{version}/samples", summary="Images from one generator version",
            responses=SAMPLE_RESPONSES)
async def samples_version(name: str, version: str, request: Request, catalog: CatalogDep,
                          params: Annotated[SampleParameters, Query()]) -> Response:
    return await _samples(request, catalog.get(name, version), catalog, params)
