"""The hottest route served without the framework's routing: ``POST /v1/models/{name}[/versions/{v}]/predict``.

FastAPI's route matching, dependency solving and exception middleware cost a front-end about a quarter
of its CPU per prediction (py-spy, mnist-cnn at 64 connections). Here the middleware recognises the
native predict route from its path (``middleware.requested_model``, one catalog lookup for both it
and the fast refusal) and calls the very handler the route calls (``routes.native``), with
the same API-key check and the same error responses; everything else, this route's OpenAPI schema
included, stays with FastAPI.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from service.errors import exception_response
from service.frontend.catalog import ServedModel


async def serve_direct(served: ServedModel, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a native predict request for ``served`` (found by the middleware) as the route would."""
    from service.frontend.routes.deps import require_api_key
    from service.frontend.routes.native import predict_response

    request = Request(scope, receive)
    state = scope["app"].state
    try:
        await require_api_key(request)
        response = await predict_response(request, served, state.catalog, state.settings)
    except Exception as exc:
        response = exception_response(request, exc)
    await response(scope, receive, send)
