"""Discovers ``weights/<name>/<version>/``, loads every version, batches and warms each one."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import models
from models.device import resolve_device
from service.batcher import BatchConfig, Batcher
from service.decoder import DecodeLoop
from service.denoiser import DenoiseLoop
from service.errors import ServeError
from service.metrics import Metrics
from service.runtimes import DecodeLimits, DiffusionRuntime, resolve_dtype, runtime_class
from service.settings import BatchingOverride, Settings

log = logging.getLogger("service.registry")


@dataclass
class ServedModel:
    """One loaded model version: its manifest, runtime and the one worker that feeds it."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    runtime: Any = None
    batcher: Batcher | None = None  # request/response models
    serving_defaults: BatchingOverride | None = None  # the manifest's "serving": the model's own defaults
    decoder: DecodeLoop | None = None  # language models: continuous batching of decoding steps
    denoiser: DenoiseLoop | None = None  # diffusion models: continuous batching of denoising steps
    device: str = ""
    dtype: str = ""
    warmed: bool = False
    error: str | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    @property
    def worker(self) -> Batcher | DecodeLoop | DenoiseLoop | None:
        return self.decoder or self.denoiser or self.batcher

    @property
    def ready(self) -> bool:
        return self.warmed and self.worker is not None and self.worker.alive

    @property
    def status(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        if self.worker is not None and self.worker.dead_reason:
            return f"not ready: {self.worker.dead_reason}"
        return "ready" if self.ready else "loading"


def discover(weights_dir: Path, names: list[str]) -> list[tuple[str, int, Path]]:
    """(name, version, path) of every artifact under ``weights_dir``; ``names`` filters (empty = all)."""
    found = []
    for manifest_path in sorted(weights_dir.glob("*/*/manifest.json")):
        version_dir = manifest_path.parent
        name, version = version_dir.parent.name, version_dir.name
        if version.isdigit() and (not names or name in names):
            found.append((name, int(version), version_dir))
    missing = set(names) - {name for name, _, _ in found}
    if missing:
        raise RuntimeError(f"SERVE_MODELS names {sorted(missing)}, which {weights_dir} does not hold")
    return found


class Registry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        # One inference worker per device: forwards of all models on it run one after another.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{self.device}")
        self.models: dict[str, dict[int, ServedModel]] = {}
        for name, version, path in discover(settings.weights_dir, settings.models):
            self.models.setdefault(name, {})[version] = ServedModel(name, version, path, {})
        self.loading_done = False

    # -- lookup ------------------------------------------------------------------------------
    def get(self, name: str, version: int | str | None = None) -> ServedModel:
        versions = self.models.get(name)
        if not versions:
            raise ServeError(404, f"model {name!r} is not served; GET /v1/models lists the models", "model_not_found")
        if version is None or version == "":
            return versions[max(versions)]
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise ServeError(404, f"version {version!r} of {name!r}: versions are integers",
                             "version_not_found") from None
        if number not in versions:
            raise ServeError(404, f"model {name!r} has no version {number}; it has {sorted(versions)}",
                             "version_not_found")
        return versions[number]

    def all(self) -> list[ServedModel]:
        return [served for versions in self.models.values() for served in versions.values()]

    @property
    def ready(self) -> bool:
        return self.loading_done and all(served.ready for served in self.all())

    # -- lifecycle ---------------------------------------------------------------------------
    def _setting(self, served: ServedModel, field_name: str) -> Any:
        """A serving setting of one model version: the operator's per-model override
        (``SERVE_MODEL_OVERRIDES``), else the model's own default (its manifest's ``serving``), else the
        global ``SERVE_*`` value."""
        for source in (self.settings.model_overrides.get(served.name), served.serving_defaults):
            value = getattr(source, field_name, None) if source else None
            if value is not None:
                return value
        return getattr(self.settings, field_name)

    def batch_config(self, served: ServedModel) -> BatchConfig:
        return BatchConfig(max_batch_size=self._setting(served, "max_batch_size"),
                           max_delay_s=self._setting(served, "max_delay_ms") / 1000,
                           max_queue=self._setting(served, "max_queue"))

    def timeout_s(self, served: ServedModel) -> float:
        return float(self._setting(served, "timeout_ms")) / 1000

    def _load_one(self, served: ServedModel) -> None:
        """Runs in the inference worker: build, verify hash, load, move to the device, warm up."""
        module, manifest = models.load(served.path, device="cpu")
        runtime = runtime_class(manifest)
        if runtime is None:
            raise RuntimeError(f"no runtime for task {manifest['task']!r}")
        served.manifest = manifest
        served.serving_defaults = BatchingOverride.model_validate(manifest.get("serving") or {})
        served.runtime = runtime(module, manifest, self.device, self.dtype,
                                       DecodeLimits(self.settings.max_image_pixels),
                                       tokenizer=models.load_tokenizer(served.path, manifest))
        served.runtime.warmup(self.batch_config(served).max_batch_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        served.device, served.dtype = str(self.device), str(self.dtype).removeprefix("torch.")

    async def load_all(self) -> None:
        """Load, warm and start each version in turn; a failure marks that version, not the server."""
        loop = asyncio.get_running_loop()
        for served in self.all():
            started = time.perf_counter()
            try:
                await loop.run_in_executor(self.executor, self._load_one, served)
            except Exception as exc:
                served.error = str(exc)
                log.error("model %s v%d failed to load: %s", served.name, served.version, exc)
                continue
            config, observer = self.batch_config(served), self.metrics.observer(served.name, served.version)
            label = f"{served.name}/{served.version}"
            if served.task == "text-generation":
                served.decoder = DecodeLoop(label, served.runtime, self.executor, config.max_batch_size,
                                            config.max_queue, observer)
                served.decoder.start()
            elif isinstance(served.runtime, DiffusionRuntime):
                # max_batch_size rows per forward; up to two forwards' worth (or one n=64 request) per step
                served.denoiser = DenoiseLoop(label, served.runtime, self.executor,
                                              max(2 * config.max_batch_size, 64), config.max_queue, observer)
                served.denoiser.start()
            else:
                served.batcher = Batcher(label, served.runtime.forward, config, self.executor, observer)
                served.batcher.start()
            served.warmed = True
            served.loaded_at = time.time()
            self.metrics.loaded.labels(served.name, str(served.version)).set(1)
            log.info("model %s v%d ready on %s (%s) in %.2f s", served.name, served.version,
                     served.device, served.dtype, time.perf_counter() - started)
        self.loading_done = True

    async def close(self) -> None:
        for served in self.all():
            if served.worker is not None:
                await served.worker.stop()
            self.metrics.loaded.labels(served.name, str(served.version)).set(0)
        self.executor.shutdown(wait=True, cancel_futures=True)
