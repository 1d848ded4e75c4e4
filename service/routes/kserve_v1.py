"""KServe V1 protocol: ``POST /v1/models/{name}:predict`` with ``{"instances": [...]}``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.responses import JSONResponse
from service.routes.deps import RegistryDep, SettingsDep
from service.routes.native import predict_items
from service.schemas import ERROR_RESPONSES, KServeV1Request, KServeV1Response

router = APIRouter(tags=["kserve-v1"])

V1_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": KServeV1Request.model_json_schema()}}}}


@router.post("/v1/models/{name}:predict", summary="KServe V1 predict", response_model=KServeV1Response,
             responses=ERROR_RESPONSES, openapi_extra=V1_BODY)
async def kserve_predict(name: str, request: Request, registry: RegistryDep, settings: SettingsDep) -> JSONResponse:
    served = registry.get(name)
    predictions = await predict_items(request, served, registry, settings, instances_key="instances")
    return JSONResponse({"predictions": predictions})
