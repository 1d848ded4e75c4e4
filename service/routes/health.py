"""Liveness and readiness (OIP V2 paths), for load balancers and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter

from service.responses import JSONResponse
from service.routes.deps import RegistryDep

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", summary="The process is up")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready", summary="Every configured model is loaded, warmed and alive")
async def ready(registry: RegistryDep) -> JSONResponse:
    if registry.ready:
        return JSONResponse({"ready": True})
    waiting = {f"{s.name}/{s.version}": s.status for s in registry.all() if not s.ready}
    return JSONResponse({"ready": False, "error": "not ready: " + ", ".join(f"{k} {v}" for k, v in waiting.items())
                           if waiting else "not ready: loading", "type": "unavailable", "models": waiting},
                          status_code=503, headers={"Retry-After": "5"})
