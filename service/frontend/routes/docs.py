"""Swagger UI at ``/docs`` from assets bundled in a Python package: no CDN, works offline."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS = Path(fastapi_offline.__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="serve: API docs",
                               swagger_js_url="/static-docs/swagger-ui-bundle.js",
                               swagger_css_url="/static-docs/swagger-ui.css",
                               swagger_favicon_url="/static-docs/favicon.png")
