"""The hottest route served without the framework's routing: ``POST /v1/models/{name}[/versions/{v}]/predict``.

FastAPI's route matching, dependency solving and exception middleware cost a front-end about a quarter
of its CPU per prediction (py-spy, mnist-cnn at 64 connections). Here the middleware recognises the
native predict route from its path and calls the very handler the route calls (``routes.native``), with
the same API-key check and the same error responses; everything else, this route's OpenAPI schema
included, stays with FastAPI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from service.errors import ServeError, exception_response
from service.frontend.catalog import ServedModel

PREDICT_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/]+))?/predict$")
LATEST, ONE_VERSION = "/v1/models/{name}/predict", "/v1/models/{name}/versions/{version}/predict"


@dataclass(frozen=True)
class DirectTarget:
    served: ServedModel
    template: str  # the route's path template, for the request metrics


def direct_target(scope: Scope) -> DirectTarget | None:
    """The model a native predict request is for, or None to leave the request to the routes (another
    route, an unknown model or version: the routes answer those)."""
    if scope["method"] != "POST":
        return None
    match = PREDICT_PATH.match(scope["path"])
    state: Any = getattr(scope.get("app"), "state", None)
    catalog = getattr(state, "catalog", None)
    if match is None or catalog is None:
        return None
    try:
        served = catalog.get(match["name"], match["version"])
    except ServeError:
        return None
    scope["path_params"] = {"name": served.name}
    return DirectTarget(served, ONE_VERSION if match["version"] else LATEST)


async def serve_direct(target: DirectTarget, scope: Scope, receive: Receive, send: Send) -> None:
    from service.frontend.routes.deps import require_api_key
    from service.frontend.routes.native import predict_response

    request = Request(scope, receive)
    state = scope["app"].state
    try:
        await require_api_key(request)
        response = await predict_response(request, target.served, state.catalog, state.settings)
    except Exception as exc:
        response = exception_response(request, exc)
    await response(scope, receive, send)
