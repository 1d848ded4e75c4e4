"""KServe V1 protocol: ``POST /v1/models/{name}:predict`` with ``{"instances": [...]}``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.frontend.routes.deps import CatalogDep, SettingsDep
from service.frontend.routes.native import predict_items
from service.responses import JSONResponse
from service.schemas import ERROR_RESPONSES, KServeV1Request, KServeV1Response

router = APIRouter(tags=["kserve-v1"])

V1_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": KServeV1Request.model_json_schema()}}}}


@router.post("/v1/models/{name}:predict", summary="KServe V1 predict", response_model=KServeV1Response,
             responses=ERROR_RESPONSES, openapi_extra=V1_BODY)
async def kserve_predict(name: str, request: Request, catalog: CatalogDep, settings: SettingsDep) -> JSONResponse:
    served = catalog.get(name)
    predictions = await predict_items(request, served, catalog, settings, instances_key="instances")
    return JSONResponse({"predictions": predictions})
