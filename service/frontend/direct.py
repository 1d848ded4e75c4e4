"""The hottest routes served without the framework's routing: ``POST /v1/models/{name}[/versions/{v}]/predict``
and ``POST /v2/models/{name}[/versions/{v}]/infer`` (the Open Inference Protocol's, as tritonclient sends it).

FastAPI's route matching, dependency solving and exception middleware cost a front-end about a quarter
of its CPU per prediction (py-spy, mnist-cnn at 64 connections). Here the middleware recognises the
routes from their paths (``middleware.requested_model``, one catalog lookup for the route
and the fast refusal both) and calls the very handler the route calls (``routes.native``, ``routes.oip_v2``), with
the same API-key check and the same error responses; everything else, this route's OpenAPI schema
included, stays with FastAPI. (For V2 binary requests at 72 connections, py-spy put 73% of a front-end in the
framework's middleware and routing stack before this.)
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from service.errors import exception_response
from service.frontend.catalog import ServedModel


async def serve_direct(served: ServedModel, scope: Scope, receive: Receive, send: Send, kind: str = "native") -> None:
    """Answer a native predict (``kind`` "native") or V2 infer ("v2") request for ``served`` (found by the
    middleware) as the route would."""
    from service.frontend.routes.deps import require_api_key
    from service.frontend.routes.native import predict_response
    from service.frontend.routes.oip_v2 import infer_response

    request = Request(scope, receive)
    state = scope["app"].state
    try:
        await require_api_key(request)
        if kind == "v2":
            response = await infer_response(request, served, state.catalog, state.settings.max_inputs_per_request)
        else:
            response = await predict_response(request, served, state.catalog, state.settings)
    except Exception as exc:
        response = exception_response(request, exc)
    await response(scope, receive, send)
