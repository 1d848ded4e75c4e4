"""The engine's models: discovers ``weights/<name>/<version>/``, loads and warms every version once, and
starts the scheduler its runtime asks for (a batcher, a generation loop or a denoising loop)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import models
from models.device import resolve_device
from service.engine.batcher import BatchConfig, Batcher
from service.engine.denoising_loop import DenoisingLoop
from service.engine.generation_loop import GenerationLoop
from service.engine.watchdog import Watchdog, WatchedExecutor
from service.metrics import Metrics
from service.runtimes import resolve_dtype
from service.serving import ServingConfig, build_runtime, discover, serving_config
from service.settings import Settings

log = logging.getLogger("service.engine.registry")


Scheduler = Batcher | GenerationLoop | DenoisingLoop


@dataclass
class ServedModel:
    """One loaded model version: its manifest, runtime, serving settings and the one scheduler that feeds it."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    config: ServingConfig | None = None
    runtime: Any = None
    scheduler: Scheduler | None = None
    device: str = ""
    dtype: str = ""
    warmed: bool = False
    error: str | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    @property
    def ready(self) -> bool:
        return self.warmed and self.scheduler is not None and self.scheduler.alive

    @property
    def status(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        if self.scheduler is not None and self.scheduler.dead_reason:
            return f"not ready: {self.scheduler.dead_reason}"
        return "ready" if self.ready else "loading"


class Registry:
    def __init__(self, settings: Settings, metrics: Metrics, watchdog: Watchdog | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        # One inference thread per device: forwards of all models on it run one after another.
        self.executor = WatchedExecutor(watchdog, thread_name_prefix=f"infer-{self.device}")
        self.models: dict[str, dict[int, ServedModel]] = {}
        for name, version, path in discover(settings.weights_dir, settings.models):
            self.models.setdefault(name, {})[version] = ServedModel(name, version, path, {})
        self.loading_done = False

    def get(self, name: str, version: int) -> ServedModel | None:
        return self.models.get(name, {}).get(version)

    def all(self) -> list[ServedModel]:
        return [served for versions in self.models.values() for served in versions.values()]

    @property
    def ready(self) -> bool:
        return self.loading_done and all(served.ready for served in self.all())

    # -- lifecycle ---------------------------------------------------------------------------
    def _load_one(self, served: ServedModel) -> None:
        """Runs in the inference thread: build, verify hash, load, move to the device, warm up."""
        module, manifest = models.load(served.path, device="cpu")
        served.manifest = manifest
        served.config = serving_config(self.settings, served.name, manifest)
        runtime = build_runtime(manifest, served.path, self.settings)
        runtime.attach(module, self.device, self.dtype)
        if self.settings.prepare:
            runtime.prepare_forward(served.config.max_batch_size)
        runtime.warmup(served.config.max_batch_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        served.runtime = runtime
        served.device, served.dtype = str(self.device), str(runtime.dtype).removeprefix("torch.")

    def _scheduler(self, served: ServedModel) -> Scheduler:
        config, runtime = served.config, served.runtime
        assert config is not None
        observer = self.metrics.observer(served.name, served.version)
        label = f"{served.name}/{served.version}"
        if runtime.scheduler == "generation":
            return GenerationLoop(label, runtime, self.executor, config.max_batch_size, config.capacity, observer)
        if runtime.scheduler == "denoising":
            # max_batch_size rows per forward; up to two forwards' worth (or one n=64 request) per step
            return DenoisingLoop(label, runtime, self.executor, max(2 * config.max_batch_size, 64), config.capacity,
                                 observer)
        batching = BatchConfig(config.max_batch_size, config.max_delay_s, config.capacity)
        return Batcher(label, runtime.forward, batching, self.executor, observer)

    async def load_all(self) -> None:
        """Load, warm and start each version in turn; a failure marks that version, not the engine."""
        loop = asyncio.get_running_loop()
        for served in self.all():
            started = time.perf_counter()
            try:
                await loop.run_in_executor(self.executor, self._load_one, served)
            except Exception as exc:
                served.error = str(exc)
                log.error("model %s v%d failed to load: %s", served.name, served.version, exc)
                continue
            served.scheduler = self._scheduler(served)
            served.scheduler.start()
            served.warmed = True
            served.loaded_at = time.time()
            self.metrics.loaded.labels(served.name, str(served.version)).set(1)
            log.info("model %s v%d ready on %s (%s) in %.2f s", served.name, served.version,
                     served.device, served.dtype, time.perf_counter() - started)
        self.loading_done = True

    def fail_all(self, reason: str) -> None:
        """Every model dead with ``reason``: what waits on them gets 503, and readiness turns false."""
        for served in self.all():
            if served.scheduler is not None:
                served.scheduler.fail(reason)

    async def close(self) -> None:
        for served in self.all():
            if served.scheduler is not None:
                await served.scheduler.stop()
            self.metrics.loaded.labels(served.name, str(served.version)).set(0)
        hung = self.executor.watchdog is not None and self.executor.watchdog.tripped is not None
        self.executor.shutdown(wait=not hung, cancel_futures=True)  # a hung thread would never be joined
