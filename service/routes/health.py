"""Liveness and readiness (OIP V2 paths), for load balancers and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.responses import JSONResponse
from service.routes.deps import RegistryDep

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", summary="The process is up")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready", summary="Every configured model is loaded, warmed and alive (in every worker)")
async def ready(request: Request, registry: RegistryDep) -> JSONResponse:
    peers = request.app.state.peers
    if registry.ready and (peers is None or peers.all_ready):
        return JSONResponse({"ready": True})
    waiting = {f"{s.name}/{s.version}": s.status for s in registry.all() if not s.ready}
    if waiting:
        error = "not ready: " + ", ".join(f"{k} {v}" for k, v in waiting.items())
    elif registry.ready:
        error = f"not ready: {peers.ready_count()} of {peers.expected} workers are ready"
    else:
        error = "not ready: loading"
    return JSONResponse({"ready": False, "error": error, "type": "unavailable", "models": waiting},
                        status_code=503, headers={"Retry-After": "5"})
