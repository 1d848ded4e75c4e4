"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.frontend.routes.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """This front-end's request figures and the engine's batch, queue and forward figures (shared through
    the Prometheus multiprocess directory), summed over every process of the server."""
    return Response(metrics.exposition(), media_type=metrics.content_type)
