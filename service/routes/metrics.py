"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.routes.deps import MetricsDep, RegistryDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(registry: RegistryDep, metrics: MetricsDep) -> Response:
    for served in registry.all():  # readiness can change without an event (a worker dies): read it now
        metrics.loaded.labels(served.name, str(served.version)).set(1 if served.ready else 0)
        if served.worker is not None:
            metrics.queue_depth.labels(served.name, str(served.version)).set(served.worker.depth)
    return Response(metrics.exposition(), media_type=metrics.content_type)
