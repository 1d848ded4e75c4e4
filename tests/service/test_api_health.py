"""Health and metadata never queue behind request work: no route solves a dependency (or runs its handler) in
the thread pool, which request work can fill; measured before this held, /v2/health/ready answered 2-4x
slower than /v2/health/live under a flood of predictions."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
from fastapi import routing
from fastapi.dependencies.models import Dependant
from fastapi.testclient import TestClient

from service.frontend.main import create_app
from service.settings import Settings

METADATA_PATHS = ["/v2/health/live", "/v2/health/ready", "/v1/models", "/v1/models/tiny-cnn",
                  "/v1/models/tiny-cnn/versions/1", "/v2", "/v2/models/tiny-cnn", "/v2/models/tiny-cnn/ready",
                  "/v2/models/tiny-cnn/versions/1", "/v2/models/tiny-cnn/versions/1/ready",
                  "/v2/models/tiny-cnn/config", "/metrics"]


def is_async(call: Callable[..., Any]) -> bool:
    if inspect.isroutine(call) or inspect.isclass(call):
        return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
    dunder_call = getattr(call, "__call__", None)  # noqa: B004 (an instance with an async __call__)
    return inspect.iscoroutinefunction(dunder_call) or inspect.isasyncgenfunction(dunder_call)


def calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    """A route's handler and every dependency under it."""
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from calls(sub)


def test_no_route_runs_a_sync_function_in_the_thread_pool(weights_dir) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(weights_dir=weights_dir, device="cpu"))
    found, sync = set(), []
    # the routes as served, with their routers' dependencies (FastAPI < 0.16x: app.routes holds them as such)
    served = routing.iter_route_contexts(app.routes) if hasattr(routing, "iter_route_contexts") else app.routes
    for route in served:
        dependant: Dependant | None = getattr(route, "dependant", None)
        endpoint = getattr(route, "endpoint", None)
        functions = list(calls(dependant)) if dependant is not None else [endpoint] if endpoint is not None else []
        found.add(route.path)
        sync += [f"{route.path}: {call.__module__}.{call.__qualname__}" for call in functions if not is_async(call)]
    assert {"/v2/health/live", "/v2/health/ready", "/v1/models/{name}", "/v2/models/{name}/ready", "/metrics",
            "/openapi.json"} <= found
    assert sync == [], "FastAPI runs these in the thread pool, behind request work; make them async def"


def test_health_and_metadata_answer_while_the_thread_pool_is_full(client: TestClient) -> None:
    portal = client.portal
    assert portal is not None
    limiter = portal.call(anyio.to_thread.current_default_thread_limiter)
    release = threading.Event()

    async def occupy_every_thread() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(int(limiter.total_tokens)):
                group.start_soon(anyio.to_thread.run_sync, release.wait, 10.0)

    occupied = portal.start_task_soon(occupy_every_thread)
    try:
        deadline = time.monotonic() + 10
        while portal.call(lambda: limiter.borrowed_tokens) < limiter.total_tokens and time.monotonic() < deadline:
            time.sleep(0.01)
        assert portal.call(lambda: limiter.borrowed_tokens) == limiter.total_tokens
        for path in METADATA_PATHS:
            started = time.monotonic()
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert time.monotonic() - started < 2, f"{path} waited for a thread"
    finally:
        release.set()
        occupied.result(timeout=15)
