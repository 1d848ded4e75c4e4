"""The front-end's view of the models: what each manifest says (read from disk, no torch), the front-end
half of its runtime, its serving settings, its admission counter, and what the engine last said of it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.artifact import read_manifest
from service.errors import ServeError
from service.frontend.admission import Admission
from service.frontend.engine_client import EngineClient
from service.serving import ServingConfig, build_runtime, discover, serving_config
from service.settings import Settings
from service.transport import PayloadCodec, Status

log = logging.getLogger("service.frontend.catalog")


@dataclass
class ServedModel:
    """One model version as a front-end serves it; its readiness is the engine's word, read fresh."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    config: ServingConfig
    engine: EngineClient
    admission: Admission
    runtime: Any = None  # the front-end half: decode, validate, encode
    payload_codec: Any = None  # results of the engine, decoded with the runtime's result type
    error: str | None = None  # the manifest could not be read here

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    @property
    def engine_status(self) -> Any:
        return self.engine.model_status(self.name, self.version)

    @property
    def ready(self) -> bool:
        status = self.engine_status
        return self.runtime is not None and status is not None and status.ready

    @property
    def takes_requests(self) -> bool:
        """Ready, or not loaded and loaded by its first request (SERVE_MODEL_CONTROL=on_demand)."""
        status = self.engine_status
        return self.runtime is not None and status is not None and (status.ready or status.on_demand)

    @property
    def status(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        status = self.engine_status
        if status is None:
            return "not ready: the engine is starting or restarting"
        return str(status.status)

    def _reported(self, field: str, default: Any) -> Any:
        """A figure of the engine's last status for this model, or ``default`` while there is none."""
        status = self.engine_status
        return getattr(status, field) if status else default

    @property
    def state(self) -> str:
        """The repository index's: READY, LOADING, UNLOADING or UNAVAILABLE (LOADING until the engine says)."""
        return str(self._reported("state", "LOADING"))

    @property
    def reason(self) -> str:
        return str(self._reported("reason", "the engine is starting or restarting"))

    @property
    def required(self) -> bool:
        """Readiness waits for it (the engine's word; every version while the engine has said nothing)."""
        return bool(self._reported("required", True))

    @property
    def served(self) -> bool:
        """Loaded, loading or required: requests for it are routed to it (and answered 503 while not ready);
        a version that is neither (unloaded, never loaded) is not found."""
        return self.required or self.state != "UNAVAILABLE" or bool(self._reported("on_demand", False))

    @property
    def device(self) -> str:
        return str(self._reported("device", ""))

    @property
    def dtype(self) -> str:
        return str(self._reported("dtype", ""))

    @property
    def forward(self) -> str | None:
        forward = self._reported("forward", None)
        return None if forward is None else str(forward)

    @property
    def loaded_at(self) -> float:
        return float(self._reported("loaded_at", 0.0))


class Catalog:
    """Every model version under the weights directory, as the engine reports it: versions it loads later (a
    new folder, the repository API) are read here when its status first lists them, and vanished ones go."""

    def __init__(self, settings: Settings, engine: EngineClient) -> None:
        self.settings = settings
        self.engine = engine
        self.models: dict[str, dict[int, ServedModel]] = {}
        for name, version, path in discover(settings.weights_dir, []):
            self._add(name, version, path)
        engine.status_listeners.append(self.sync)
        if engine.status is not None:
            self.sync(engine.status)

    def _add(self, name: str, version: int, path: Path) -> None:
        served = self._describe(name, version, path)
        if served.runtime is not None:
            served.payload_codec = PayloadCodec(served.runtime.result_type)
        self.models.setdefault(name, {})[version] = served

    def sync(self, status: Status) -> None:
        """Follow the engine's list of versions (cheap when nothing changed: a set comparison)."""
        known = {f"{served.name}/{served.version}" for served in self.all()}
        if known == status.models.keys():
            return
        for key in status.models.keys() - known:
            name, version = key.rsplit("/", 1)
            self._add(name, int(version), self.settings.weights_dir / name / version)
            log.info("model %s v%s is in the repository", name, version)
        for key in known - status.models.keys():
            name, version = key.rsplit("/", 1)
            self.models[name].pop(int(version), None)
            if not self.models[name]:
                del self.models[name]

    def _describe(self, name: str, version: int, path: Path) -> ServedModel:
        try:
            manifest = read_manifest(path)
            config = serving_config(self.settings, name, manifest)
            runtime = build_runtime(manifest, path, self.settings)
        except Exception as exc:  # the engine reports the same artifact as failed; this says why here
            log.error("model %s v%d cannot be served: %s", name, version, exc)
            config = serving_config(self.settings, name, {})
            return ServedModel(name, version, path, {}, config, self.engine, self._admission(name, config),
                               error=str(exc))
        return ServedModel(name, version, path, manifest, config, self.engine, self._admission(name, config), runtime)

    def _admission(self, name: str, config: ServingConfig) -> Admission:
        """Under the supervisor, the model's queue is shared by SERVE_WORKERS front-ends: this one gets its part."""
        if self.settings.engine_address is None:
            return Admission(config, name=name)
        return Admission(config, self.settings.frontend_index, self.settings.workers, name)

    def get(self, name: str, version: int | str | None = None) -> ServedModel:
        """The version a request names, or the latest: the newest in state READY (one still loading does not
        take over before it is ready, one unloading hands over at once; one that died stays and answers 503),
        else the newest served."""
        versions = {number: served for number, served in self.models.get(name, {}).items() if served.served}
        if not versions:
            raise ServeError(404, f"model {name!r} is not served; GET /v1/models lists the models", "model_not_found")
        if version is None or version == "":
            ready = [number for number, served in versions.items() if served.state == "READY"]
            return versions[max(ready or versions)]
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise ServeError(404, f"version {version!r} of {name!r}: versions are integers",
                             "version_not_found") from None
        if number not in versions:
            raise ServeError(404, f"model {name!r} serves no version {number}; it serves {sorted(versions)}",
                             "version_not_found")
        return versions[number]

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` that are served (loaded, loading or required)."""
        return sorted(number for number, served in self.models.get(name, {}).items() if served.served)

    def names(self) -> list[str]:
        """The models with a served version."""
        return [name for name in self.models if self.versions(name)]

    def all(self) -> list[ServedModel]:
        return [served for versions in self.models.values() for served in versions.values()]

    @property
    def frontends_expected(self) -> int:
        return self.settings.workers if self.settings.engine_address is not None else 1

    @property
    def ready(self) -> bool:
        """The engine is up with every model ready, and every front-end of the server is connected to it: a
        load balancer that sees 200 here may send to any of them (they share the port)."""
        status = self.engine.status
        return (self.engine.up and status is not None and status.loading_done and
                status.frontends >= self.frontends_expected and all(s.ready for s in self.all() if s.required))

    def batch_config(self, served: ServedModel) -> ServingConfig:
        return served.config

    def timeout_s(self, served: ServedModel) -> float:
        return served.config.timeout_s
