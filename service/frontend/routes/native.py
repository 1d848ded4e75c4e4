"""Native API: model listing and metadata, ``POST /v1/models/{name}[/versions/{v}]/predict``."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request

from service.errors import ServeError
from service.frontend.catalog import Catalog, ServedModel
from service.frontend.predict import admit, decode_and_infer
from service.frontend.routes.bodies import read_image_request, read_json_inputs, read_text_request
from service.frontend.routes.deps import CatalogDep, SettingsDep
from service.responses import JSONResponse
from service.runtimes import v2
from service.schemas import (
    ERROR_RESPONSES,
    PredictResponse,
    SampleParameters,
    TextParameters,
)
from service.settings import Settings

router = APIRouter(tags=["native"])

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        },
    }
}


def model_summary(catalog: Catalog, name: str) -> dict[str, Any]:
    latest = catalog.get(name)
    return {
        "id": name, "object": "model", "created": int(latest.loaded_at), "owned_by": "serve",
        "task": latest.task or None, "version": latest.version,
        "versions": catalog.versions(name), "ready": latest.ready,
    }


def parameters_of(served: ServedModel) -> dict[str, Any]:
    """Each request parameter with its JSON schema plus ``default``, ``min`` and ``max`` for this model."""
    schema = served.runtime.parameters if served.runtime is not None else None
    properties = (schema or TextParameters).model_json_schema()["properties"]
    steps = getattr(served.runtime, "steps", None)
    if schema is SampleParameters:
        if steps is None:
            properties.pop("steps", None)  # a GAN draws in one forward
        else:
            properties["steps"] |= {"type": "integer", "default": steps.default, "minimum": steps.min,
                                    "maximum": steps.max}
    for schema in properties.values():
        if "minimum" in schema:
            schema["min"] = schema["minimum"]
        if "maximum" in schema:
            schema["max"] = schema["maximum"]
    return dict(properties)


def model_detail(served: ServedModel, catalog: Catalog) -> dict[str, Any]:
    manifest, runtime = served.manifest, served.runtime
    return {
        "name": served.name, "version": served.version, "versions": catalog.versions(served.name),
        "ready": served.ready, "status": served.status, "task": served.task or None,
        "architecture": manifest.get("architecture"), "labels": manifest.get("labels"),
        "inputs": [spec.as_dict() for spec in runtime.inputs] if runtime else [],
        "outputs": [spec.as_dict() for spec in runtime.outputs] if runtime else [],
        "parameters": parameters_of(served),
        "max_tokens": getattr(runtime, "max_tokens", None),
        "context": getattr(runtime, "context", None),
        "conditional": manifest.get("conditional"),
        "device": served.device or None, "dtype": served.dtype or None, "forward": served.forward,
        "batching": served.config.as_dict,
        "metrics": manifest.get("metrics", {}), "dataset": manifest.get("dataset"),
        "trained": manifest.get("trained"), "sha256": manifest.get("sha256"),
    }


@router.get("/v1/models", summary="List the served models")
async def list_models(catalog: CatalogDep) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [model_summary(catalog, name) for name in catalog.names()]})


@router.get("/v1/models/{name}", summary="Metadata of a model's latest version", responses=ERROR_RESPONSES)
async def get_model(name: str, catalog: CatalogDep) -> JSONResponse:
    return JSONResponse(model_detail(catalog.get(name), catalog))


@router.get("/v1/models/{name}/versions/{version}", summary="Metadata of one model version",
            responses=ERROR_RESPONSES)
async def get_model_version(name: str, version: str, catalog: CatalogDep) -> JSONResponse:
    return JSONResponse(model_detail(catalog.get(name, version), catalog))


BODY_READERS = {"image": read_image_request, "text": read_text_request, "series": read_json_inputs}


async def predict_items(request: Request, served: ServedModel, catalog: Catalog, settings: Settings,
                        instances_key: str = "inputs") -> list[dict[str, Any]]:
    """Shared by the native and KServe V1 routes: admit, read the body the runtime takes, decode, run, encode."""
    runtime, timeout_s = served.runtime, catalog.timeout_s(served)
    if runtime is None:
        raise ServeError(503, f"model {served.name} v{served.version} is not loaded ({served.status})",
                         headers={"Retry-After": "5"})
    if runtime.body is None:
        raise ServeError(400, f"model {served.name} ({served.task}) has no predict route", "wrong_task")
    admit(served)  # a full or unready model refuses before its body is read
    raw, query = await BODY_READERS[runtime.body](request, settings, instances_key)
    params = runtime.prepare(v2.validate(runtime.parameters, query))
    results = await decode_and_infer(request, served, functools.partial(runtime.decode, params=params), raw,
                                     timeout_s)
    return [runtime.encode(result, params) for result in results]


async def predict_response(request: Request, served: ServedModel, catalog: Catalog,
                           settings: Settings) -> JSONResponse:
    """The native predict route's answer (also called without routing: service/frontend/direct.py)."""
    predictions = await predict_items(request, served, catalog, settings)
    return JSONResponse({"model": served.name, "version": served.version, "predictions": predictions})


@router.post("/v1/models/{name}/predict", summary="Predict with a model's latest version",
             response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=IMAGE_BODY)
async def predict(name: str, request: Request, catalog: CatalogDep, settings: SettingsDep) -> JSONResponse:
    return await predict_response(request, catalog.get(name), catalog, settings)


@router.post("/v1/models/{name}/versions/{version}/predict", summary="Predict with one model version",
             response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=IMAGE_BODY)
async def predict_version(name: str, version: str, request: Request, catalog: CatalogDep,
                          settings: SettingsDep) -> JSONResponse:
    return await predict_response(request, catalog.get(name, version), catalog, settings)
