"""The model repository API, like Triton's repository extension: list every model version under the weights
directory with its state, and load or unload models while the server runs (``SERVE_MODEL_CONTROL=explicit``).

Every route takes an admin key (``SERVE_ADMIN_KEYS``, as ``Authorization: Bearer`` or ``X-API-Key``); without
admin keys configured they answer 403. A load returns once the model's new versions are loaded and warm
(the engine serves them as "latest" only then); an unload returns once the version's requests in flight
have finished.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from service.errors import ServeError
from service.frontend.routes.deps import CatalogDep, SettingsDep, checked_key
from service.outcomes import ControlFailed, ModelUnavailable
from service.responses import JSONResponse

CONTROL_TIMEOUT_S = 600.0  # a load prepares and warms every version: minutes at worst, never forever


async def require_admin_key(request: Request) -> None:
    keys: list[str] = request.app.state.settings.admin_keys
    if not keys:
        raise ServeError(403, "the model repository API is off: set SERVE_ADMIN_KEYS to use it", "forbidden")
    checked_key(request, keys, "admin key", "<admin key>")


router = APIRouter(tags=["model repository"], dependencies=[Depends(require_admin_key)])


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool = Field(default=False, description="only the versions that are READY")


class UnloadParameters(BaseModel):
    model_config = ConfigDict(extra="allow")  # Triton's unload_dependents and the like are accepted and moot

    version: int | None = Field(default=None, ge=1, description="that version only; default every version")


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: UnloadParameters = Field(default_factory=UnloadParameters)


@router.post("/v2/repository/index", summary="Every model version under the weights directory, with its state")
async def index(catalog: CatalogDep, body: Annotated[IndexRequest | None, Body()] = None) -> JSONResponse:
    status = catalog.engine.status
    if status is None or not catalog.engine.up:
        raise ServeError(503, "the engine is starting or restarting", headers={"Retry-After": "1"})
    entries: list[dict[str, Any]] = []
    for key, model in sorted(status.models.items(), key=lambda item: _order(item[0])):
        name, version = key.rsplit("/", 1)
        if body is None or not body.ready or model.state == "READY":
            entry: dict[str, Any] = {"name": name, "version": version, "state": model.state, "reason": model.reason}
            if model.resident_bytes:  # a loaded version's weights (the memory budget's unit)
                entry["resident_bytes"] = model.resident_bytes
            if model.on_demand:
                entry["reason"] = "not loaded: its first request loads it (SERVE_MODEL_CONTROL=on_demand)"
            entries.append(entry)
    return JSONResponse(entries)


def _order(key: str) -> tuple[str, int]:
    name, version = key.rsplit("/", 1)
    return name, int(version)


@router.post("/v2/repository/models/{name}/load", summary="Load a model's versions (its version policy's)")
async def load(name: str, catalog: CatalogDep, settings: SettingsDep,
               body: Annotated[ControlRequest | None, Body()] = None) -> JSONResponse:
    await _control(catalog, settings, "load", name, None)
    return JSONResponse({})


@router.post("/v2/repository/models/{name}/unload", summary="Unload a model, or one version of it")
async def unload(name: str, catalog: CatalogDep, settings: SettingsDep,
                 body: Annotated[ControlRequest | None, Body()] = None) -> JSONResponse:
    await _control(catalog, settings, "unload", name, body.parameters.version if body else None)
    return JSONResponse({})


async def _control(catalog: Any, settings: Any, action: str, name: str, version: int | None) -> None:
    if settings.model_control not in ("explicit", "on_demand"):
        raise ServeError(400, f"models are not {action}ed on request with SERVE_MODEL_CONTROL={settings.model_control}"
                         " (set it to explicit or on_demand)", "model_control_disabled")
    try:
        async with asyncio.timeout(CONTROL_TIMEOUT_S):
            await catalog.engine.control(action, name, version)
    except ControlFailed as exc:
        if exc.kind == "not_found":
            raise ServeError(404, str(exc), "model_not_found") from None
        raise ServeError(400, str(exc), "load_failed") from None
    except ModelUnavailable as exc:
        raise ServeError(503, f"the engine is not available: {exc}", headers={"Retry-After": "1"}) from None
    except TimeoutError:
        raise ServeError(504, f"the {action} of {name!r} did not finish within {CONTROL_TIMEOUT_S:g} s") from None
