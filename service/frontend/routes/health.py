"""Liveness and readiness (OIP V2 paths), for load balancers and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.frontend.routes.deps import CatalogDep
from service.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", summary="The process is up")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready", summary="The engine is up and every configured model is loaded, warmed and alive")
async def ready(request: Request, catalog: CatalogDep) -> JSONResponse:
    if request.app.state.draining:
        return JSONResponse({"ready": False, "error": "not ready: draining, the server is shutting down",
                             "type": "unavailable", "models": {}}, status_code=503)
    if catalog.ready:
        return JSONResponse({"ready": True})
    waiting = {f"{s.name}/{s.version}": s.status for s in catalog.all() if s.required and not s.ready}
    if not catalog.engine.up:
        error = "not ready: the engine is starting or restarting"
    elif waiting:
        error = "not ready: " + ", ".join(f"{k} {v}" for k, v in waiting.items())
    elif catalog.engine.status is not None and catalog.engine.status.frontends < catalog.frontends_expected:
        error = (f"not ready: {catalog.engine.status.frontends} of {catalog.frontends_expected} front-ends are "
                 "connected to the engine")
    else:
        error = "not ready: loading"
    return JSONResponse({"ready": False, "error": error, "type": "unavailable", "models": waiting},
                        status_code=503, headers={"Retry-After": "5"})
