"""``create_app(settings)``: assembles settings, registry, middleware and routers; nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from service import __version__
from service.errors import install_error_handlers
from service.logging_setup import configure_logging
from service.metrics import Metrics
from service.middleware import ServeMiddleware
from service.peers import WorkerPeers
from service.registry import Registry
from service.routes import docs, generate, health, kserve_v1, native, oip_v2, openai, samples, ui
from service.routes import metrics as metrics_routes
from service.routes.deps import require_api_key
from service.settings import Settings

log = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.resolved_torch_threads())
        registry = Registry(settings, metrics)
        app.state.registry = registry
        # Load in the background: liveness answers at once, readiness once every model is warm.
        background = [asyncio.create_task(registry.load_all(), name="load-models")]
        if settings.peers_dir is not None:  # one of several workers: ready only when all of them are
            app.state.peers = WorkerPeers(settings.peers_dir, settings.workers)
            background.append(asyncio.create_task(app.state.peers.beat(lambda: registry.ready), name="peers"))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await registry.close()
            metrics.process_exit()

    app = FastAPI(title="serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="PyTorch models over HTTP with dynamic batching: native, KServe V1 and "
                              "Open Inference Protocol V2 APIs.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.peers = None
    install_error_handlers(app)
    app.add_middleware(ServeMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    guarded = [Depends(require_api_key)]
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    app.include_router(docs.router)
    app.include_router(ui.router)
    app.include_router(kserve_v1.router, dependencies=guarded)
    app.include_router(native.router, dependencies=guarded)
    app.include_router(oip_v2.router, dependencies=guarded)
    app.include_router(generate.router, dependencies=guarded)
    app.include_router(samples.router, dependencies=guarded)
    app.include_router(openai.router, dependencies=guarded)
    app.mount("/static-docs", StaticFiles(directory=docs.ASSETS), name="static-docs")
    return app


def app_from_environment() -> FastAPI:
    """The factory each worker process calls (``SERVE_WORKERS`` > 1): settings and logging from ``SERVE_*``."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
