"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.frontend.middleware import FAST_ROUTE
from service.frontend.routes.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """This front-end's request figures and the engine's batch, queue and forward figures (shared through
    the Prometheus multiprocess directory), summed over every process of the server."""
    metrics.flush_refusals(FAST_ROUTE)  # this front-end's refusals up to now (the others flush every 0.5 s)
    return Response(metrics.exposition(), media_type=metrics.content_type)
