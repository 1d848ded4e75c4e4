"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from service.errors import ServeError
from service.frontend.catalog import Catalog
from service.metrics import Metrics
from service.quotas import key_digest
from service.request_context import KEY_DIGEST
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def checked_key(request: Request, keys: list[str], what: str = "API key", placeholder: str = "<key>") -> str:
    """The key the request presents (``Authorization: Bearer`` or ``X-API-Key``) if it is one of ``keys``;
    401 otherwise, naming ``what`` kind of key is missing."""
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not presented or not any(secrets.compare_digest(presented, key) for key in keys):
        raise ServeError(401, f"missing or invalid {what}; send Authorization: Bearer {placeholder}",
                         headers={"WWW-Authenticate": "Bearer"})
    return presented


async def require_api_key(request: Request) -> None:
    """With SERVE_API_KEYS set, inference and metadata need ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    presented = checked_key(request, keys)
    if request.app.state.settings.key_quotas:  # the engine counts the key's requests against its quota
        KEY_DIGEST.set(key_digest(presented))


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
