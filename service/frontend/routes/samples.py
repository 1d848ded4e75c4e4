"""``GET /v1/models/{name}[/versions/{v}]/samples``: images from a generator, a PNG grid or JSON."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from service.errors import ServeError
from service.frontend.catalog import Catalog, ServedModel
from service.frontend.predict import admit, decode_and_infer, denoise
from service.frontend.routes.deps import CatalogDep
from service.responses import JSONResponse
from service.runtimes.image_generator import SampleRequest, Samples
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
    """Check the parameters against this generator, then sample on its worker (shared with V2 infer)."""
    runtime = generator_runtime(served)
    if params.label is not None and (not runtime.conditional or params.label >= runtime.classes):
        allowed = f"0 to {runtime.classes - 1}" if runtime.conditional else "none: the model is unconditional"
        raise ServeError(400, f"label {params.label} is out of range; labels: {allowed}", "invalid_input")
    bounds = runtime.steps
    if params.steps is not None and (bounds is None or not bounds.min <= params.steps <= bounds.max):
        allowed = f"{bounds.min} to {bounds.max}" if bounds else "none: the model draws in one forward"
        raise ServeError(400, f"steps {params.steps} is out of range; steps: {allowed}", "invalid_input")
    seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
    sample_request = SampleRequest(params.n, seed, params.label, params.steps)
    if runtime.scheduler == "denoising":
        return await denoise(request, served, sample_request, catalog.timeout_s(served))
    [samples] = await decode_and_infer(request, served, runtime.decode_request, [sample_request],
                                       catalog.timeout_s(served))
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
