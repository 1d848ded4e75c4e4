"""``create_app(settings)``: one HTTP front-end; assembles settings, the engine client, the model catalog,
middleware and routers; nothing else.

With ``SERVE_ENGINE_ADDRESS`` set (by the supervisor, ``python -m service``) it talks to the engine
process there. Without it, it starts the same engine inside this process on an ``inproc://`` address
(development and unit tests): the same messages cross the same transport either way.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import zmq.asyncio
from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from service import __version__, tracing
from service.errors import install_error_handlers
from service.frontend.catalog import Catalog
from service.frontend.engine_client import EngineClient
from service.frontend.middleware import FAST_ROUTE, ServeMiddleware
from service.frontend.routes import (
    docs,
    generate,
    health,
    kserve_v1,
    native,
    oip_v2,
    openai,
    repository,
    samples,
    ui,
)
from service.frontend.routes import metrics as metrics_routes
from service.frontend.routes.deps import require_api_key
from service.logging_setup import configure_logging
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service")
FIRST_STATUS_TIMEOUT_S = 10.0  # how long a front-end waits for the engine before it serves anyway


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics(frontend=settings.frontend_index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = zmq.asyncio.Context()
        async with AsyncExitStack() as stack:
            stack.callback(context.term)
            address = settings.engine_address
            if address is None:
                from service.engine.process import InProcessEngine  # imports torch: only in this mode

                address = f"inproc://engine-{uuid.uuid4().hex}"
                engine = InProcessEngine(settings, metrics, context, address)
                await engine.start()
                stack.push_async_callback(engine.stop)
                app.state.engine = engine
            client = EngineClient(address, context)
            client.start()
            stack.push_async_callback(client.close)
            # Accept no connection before the engine has said what it serves: a front-end restarted next to a
            # running engine would otherwise refuse the requests queued on its socket as "not ready". An
            # engine still starting answers within a second (its models' loading shows in readiness).
            if not await client.first_status(FIRST_STATUS_TIMEOUT_S):
                log.warning("no word from the engine at %s after %g s: serving, not ready", address,
                            FIRST_STATUS_TIMEOUT_S)
            app.state.catalog = Catalog(settings, client)
            process = f"frontend-{settings.frontend_index}" if settings.engine_address else "server"
            flusher = asyncio.create_task(flush_refusals(metrics, process), name="flush-refusals")
            try:
                yield
            finally:
                flusher.cancel()
                metrics.flush_refusals(FAST_ROUTE)
                metrics.process_exit()

    app = FastAPI(title="serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="PyTorch models over HTTP with dynamic batching: native, KServe V1 and "
                              "Open Inference Protocol V2 APIs.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None  # the in-process engine, when there is one
    app.state.draining = False  # set on SIGTERM (service/frontend/drain.py): readiness turns false
    install_error_handlers(app)
    app.add_middleware(ServeMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       access_log=settings.access_log,
                       refusal_delay_s=settings.refusal_delay_ms / 1000)
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
    app.include_router(repository.router)  # its own keys: SERVE_ADMIN_KEYS
    app.mount("/static-docs", StaticFiles(directory=docs.ASSETS), name="static-docs")
    return app


async def flush_refusals(metrics: Metrics, process: str) -> None:
    while True:
        await asyncio.sleep(0.5)
        metrics.flush_refusals(FAST_ROUTE)
        metrics.record_memory(process)


def app_from_environment(settings: Settings | None = None) -> FastAPI:
    """The factory of a front-end process: settings (from ``SERVE_*`` unless given) and logging."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    tracing.setup("frontend")
    return create_app(settings)
