"""The engine's models: discovers ``weights/<name>/<version>/``, loads and warms the versions it serves (each
once), starts the scheduler each runtime asks for (a batcher, a generation loop or a denoising loop), and
loads and unloads versions on request (the model repository API) or as the directory changes (polling)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import models
from models.artifact import read_manifest
from models.device import resolve_device
from service.engine.batcher import BatchConfig, Batcher
from service.engine.denoising_loop import DenoisingLoop
from service.engine.device import Device
from service.engine.generation_loop import GenerationLoop
from service.engine.scheduler import Objective
from service.engine.watchdog import Watchdog
from service.metrics import Metrics
from service.outcomes import ModelUnavailable, OverBudget
from service.runtimes import resolve_dtype
from service.serving import ServingConfig, build_runtime, discover, serving_config, version_policy
from service.settings import Settings

log = logging.getLogger("service.engine.registry")


Scheduler = Batcher | GenerationLoop | DenoisingLoop


READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
LOAD_SWITCH_S = 0.0005  # the interpreter's switch interval while a load runs (Python's default: 0.005)
MB = 1024 * 1024
UNLOAD_SETTLE_S = 0.5  # an unloading version keeps serving this long: every front-end has seen it go by then


class ModelNotFound(Exception):
    pass


class LoadFailed(Exception):
    pass


@dataclass
class ServedModel:
    """One model version found under the weights directory; when loaded: its manifest, runtime, serving
    settings and the one scheduler that feeds it."""

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
    state: str = UNAVAILABLE  # READY, LOADING, UNLOADING (still serving what reaches it) or UNAVAILABLE
    reason: str = "not loaded"
    required: bool = False  # readiness waits for it: loaded at start or on request, and not unloaded since
    in_flight: int = 0  # requests the engine is running on it
    on_demand: bool = False  # SERVE_MODEL_CONTROL=on_demand: a request that finds it unloaded loads it
    resident_bytes: int = 0  # its weights' memory, measured once loaded
    last_used: float = 0.0  # time.monotonic() of its last request: the least recently used is evicted first

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    @property
    def ready(self) -> bool:
        """It takes requests: loaded, warm and alive (READY, or UNLOADING while the front-ends move away)."""
        return self.warmed and self.scheduler is not None and self.scheduler.alive

    @property
    def status(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        if self.scheduler is not None and self.scheduler.dead_reason:
            return f"not ready: {self.scheduler.dead_reason}"
        if self.state == UNAVAILABLE:
            return f"unavailable: {self.reason}"
        if self.state == UNLOADING:
            return "unloading"
        return "ready" if self.ready else "loading"


class Registry:
    """Every version under the weights directory, and the lifecycle of those served: loaded at start (per
    SERVE_MODEL_CONTROL, SERVE_MODELS and each model's version policy), then loaded and unloaded on request
    or by polling the directory. One control operation runs at a time."""

    def __init__(self, settings: Settings, metrics: Metrics, watchdog: Watchdog | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        # The device's inference threads and the one scheduler that decides what they run (service/engine/device.py).
        self.executor = Device(str(self.device), watchdog, settings.device_lanes,
                               self.device if self.device.type == "cuda" else None)
        # Loading (read, build, trace, check, warm up) and freeing happen beside serving, on a thread of their own
        # at the lowest CPU priority: a load never holds up the models that serve (issue 21; figures in README).
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"load-{self.device}",
                                         initializer=_lowest_priority)
        discover(settings.weights_dir, settings.models)  # SERVE_MODELS must name models that are there
        self.models: dict[str, dict[int, ServedModel]] = {}
        self.scan()
        self.loading_done = False
        self._control = asyncio.Lock()
        self._on_demand_loads: dict[tuple[str, int], asyncio.Task[None]] = {}
        mb = settings.memory_budget_mb
        self.budget_bytes = None if mb is None else int(mb * MB)

    def get(self, name: str, version: int) -> ServedModel | None:
        return self.models.get(name, {}).get(version)

    def all(self) -> list[ServedModel]:
        return [served for versions in self.models.values() for served in versions.values()]

    @property
    def ready(self) -> bool:
        return self.loading_done and all(served.ready for served in self.all() if served.required)

    def scan(self) -> None:
        """Add the versions that appeared under the weights directory (a vanished one is dropped by ``poll``)."""
        for name, version, path in discover(self.settings.weights_dir, []):
            if version not in self.models.setdefault(name, {}):
                self.models[name][version] = ServedModel(name, version, path, {})

    def wanted_versions(self, name: str) -> list[int]:
        """The versions of ``name`` on disk that its version policy serves."""
        present = [version for version, served in self.models.get(name, {}).items() if served.path.is_dir()]
        if not present:
            return []
        try:
            policy = version_policy(self.settings, name, read_manifest(self.models[name][max(present)].path))
        except Exception:  # an unreadable newest manifest or serving block: its load says why
            policy = version_policy(self.settings, name, {})
        return policy.select(present)

    def initial_names(self) -> list[str]:
        if self.settings.models:
            return [name for name in self.settings.models if name in self.models]
        return [] if self.settings.model_control in ("explicit", "on_demand") else sorted(self.models)

    @property
    def prepares(self) -> bool:
        """Whether loads build prepared forwards: not under a memory budget on the CPU, where a traced forward's
        frozen copy of the weights lives as long as the process (pytorch/pytorch#35600) and no eviction frees it."""
        return self.settings.prepare and not (self.budget_bytes is not None and self.device.type == "cpu")

    # -- loading -------------------------------------------------------------------------------
    def _load_one(self, served: ServedModel) -> None:
        """Runs in the loader thread, beside the inference thread: build, verify hash, load, move to the device,
        prepare and warm up; on a GPU on a CUDA stream of its own, so that its copies and warm-up kernels do not
        queue behind (or in front of) the serving models' work on the default stream."""
        # Tracing and warm-up hold the interpreter lock for long stretches of Python: while a load runs, the lock
        # changes hands every LOAD_SWITCH_S instead of every 5 ms, so the serving threads wait less for it.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(LOAD_SWITCH_S)
        try:
            if self.device.type == "cuda":
                with torch.cuda.stream(torch.cuda.Stream(self.device)):
                    self._build_and_warm(served)
                torch.cuda.synchronize(self.device)  # every copy and kernel of the load done before it serves
            else:
                self._build_and_warm(served)
        finally:
            sys.setswitchinterval(switch)

    def _build_and_warm(self, served: ServedModel) -> None:
        phases = time.perf_counter()

        def phase_done(phase: str) -> None:
            nonlocal phases
            now = time.perf_counter()
            self.metrics.load_seconds.labels(served.name, str(served.version), phase).set(now - phases)
            phases = now

        module, manifest = models.load(served.path, device="cpu")
        served.manifest = manifest
        served.config = serving_config(self.settings, served.name, manifest)
        runtime = build_runtime(manifest, served.path, self.settings)
        runtime.attach(module, self.device, self.dtype)
        phase_done("load")
        if self.prepares:
            runtime.prepare_forward(served.config.max_batch_size)
        phase_done("prepare")
        runtime.warmup(served.config.max_batch_size)
        phase_done("warmup")
        served.runtime = runtime
        served.device, served.dtype = str(self.device), str(runtime.dtype).removeprefix("torch.")
        served.resident_bytes = tensor_bytes(runtime.module)

    def _scheduler(self, served: ServedModel) -> Scheduler:
        config, runtime = served.config, served.runtime
        assert config is not None
        observer = self.metrics.observer(served.name, served.version)
        label = f"{served.name}/{served.version}"
        objective = Objective(config.latency_objective_s, config.priority_levels, config.default_priority)
        self.metrics.objective_seconds.labels(served.name, str(served.version)).set(objective.seconds)
        if runtime.scheduler == "generation":
            return GenerationLoop(label, runtime, self.executor, config.max_batch_size, config.capacity, observer,
                                  objective)
        if runtime.scheduler == "denoising":
            # max_batch_size rows per forward; up to two forwards' worth (or one n=64 request) per step
            return DenoisingLoop(label, runtime, self.executor, max(2 * config.max_batch_size, 64), config.capacity,
                                 observer, objective)
        batching = BatchConfig(config.max_batch_size, config.max_delay_s, config.capacity)
        return Batcher(label, runtime.forward, batching, self.executor, observer, objective)

    async def _load_version(self, served: ServedModel, why: str, raise_refusal: bool = False) -> bool:
        """Load, warm and start one version; a failure marks that version (UNAVAILABLE, with why), nothing else.
        ``why``: start, request (the repository API), poll or on_demand. A version that does not fit the memory
        budget is not loaded (``raise_refusal``: and the OverBudget or ModelUnavailable is raised)."""
        try:
            await self._make_room(served)
        except (OverBudget, ModelUnavailable) as exc:
            served.state, served.reason = UNAVAILABLE, str(exc)
            log.error("model %s v%d cannot load: %s", served.name, served.version, exc)
            if raise_refusal:
                raise
            return False
        self.metrics.loads.labels(served.name, str(served.version), why).inc()
        served.state, served.reason, served.error = LOADING, "loading", None
        started = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(self.loader, self._load_one, served)
        except Exception as exc:
            served.error = str(exc)
            served.state, served.reason = UNAVAILABLE, f"failed to load: {exc}"
            log.error("model %s v%d failed to load: %s", served.name, served.version, exc)
            return False
        served.scheduler = self._scheduler(served)
        served.scheduler.start()
        served.warmed = True
        served.loaded_at = time.time()
        served.state, served.reason = READY, ""
        self.metrics.loaded.labels(served.name, str(served.version)).set(1)
        self.metrics.resident_bytes.labels(served.name, str(served.version)).set(served.resident_bytes)
        log.info("model %s v%d ready on %s (%s) in %.2f s", served.name, served.version,
                 served.device, served.dtype, time.perf_counter() - started)
        return True

    async def load_all(self) -> None:
        """At start: load, warm and start what is to be served, in turn."""
        async with self._control:
            chosen = [self.models[name][version] for name in self.initial_names()
                      for version in self.wanted_versions(name)]
            for served in chosen:  # all of them count for readiness from the start, failed ones too
                served.required, served.state, served.reason = True, LOADING, "waiting to load"
            for served in chosen:
                await self._load_version(served, "start")
            if self.settings.model_control == "on_demand":
                for name in self.models:
                    for version in self.wanted_versions(name):
                        self.models[name][version].on_demand = True
            self.loading_done = True

    async def load_model(self, name: str, why: str = "request") -> None:
        """Load the versions of ``name`` its policy serves (new folders included), then, once one of them is
        ready, unload the others. A version that fails leaves the serving ones untouched, says why in the index,
        and makes this raise LoadFailed."""
        async with self._control:
            self.scan()
            if name not in self.models:
                raise ModelNotFound(f"no model {name!r} under {self.settings.weights_dir}")
            wanted = self.wanted_versions(name)
            failures = []
            for version in wanted:
                served = self.models[name][version]
                if not (served.state == READY and served.ready) and not await self._load_version(served, why):
                    failures.append(f"v{version}: {served.reason}")
                    served.required = False
                    continue
                served.state, served.required = READY, True
            if any(self.models[name][version].state == READY for version in wanted):
                for version, served in sorted(self.models[name].items()):
                    if version not in wanted and served.state == READY:  # after the new ones are ready
                        await self._unload_version(served, "unloaded: outside the version policy")
            elif not failures:
                failures.append("no version on disk to load")
            if failures:
                raise LoadFailed(f"model {name!r}: " + "; ".join(failures))

    # -- on demand, within the memory budget ------------------------------------------------------
    async def ensure_loaded(self, served: ServedModel) -> None:
        """A request found ``served`` unloaded (SERVE_MODEL_CONTROL=on_demand): load it, once for every request
        that waits for it. Raises OverBudget (it can never fit), ModelUnavailable (it failed to load, or the
        budget is held by versions with requests in flight). Cancelling the caller (its deadline) leaves the
        load running for the others."""
        key = (served.name, served.version)
        task = self._on_demand_loads.get(key)
        if task is None or task.done():
            task = self._on_demand_loads[key] = asyncio.create_task(self._load_on_demand(served),
                                                                    name=f"on-demand:{served.name}/{served.version}")
        await asyncio.shield(task)

    async def _load_on_demand(self, served: ServedModel) -> None:
        async with self._control:
            if served.ready:
                return
            if not await self._load_version(served, "on_demand", raise_refusal=True):
                raise ModelUnavailable(f"{served.name} v{served.version} failed to load on demand: {served.reason}")
            served.required = False  # readiness does not wait for it, and it may be evicted again

    def estimated_bytes(self, served: ServedModel) -> int:
        """What a version will hold once loaded, before it is: what it measured when last loaded, else its
        tensors as the device will hold them (a floating tensor in the engine's dtype: an fp16 file served in
        float32 doubles), read from the safetensors headers."""
        if served.resident_bytes:
            return served.resident_bytes
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return sum(stored_bytes(file, itemsize) for file in served.path.glob("*.safetensors"))

    def resident_bytes(self) -> int:
        return sum(served.resident_bytes for served in self.all() if served.scheduler is not None)

    async def _make_room(self, served: ServedModel) -> None:
        """Within the budget: evict the least recently used idle versions until ``served`` fits. A version with
        requests in flight or queued is never evicted."""
        budget = self.budget_bytes
        if budget is None:
            return
        need = self.estimated_bytes(served)
        if need > budget:
            raise OverBudget(f"model {served.name} v{served.version} needs about {need / MB:.1f} MB, more than the "
                             f"engine's whole memory budget of {budget / MB:.1f} MB (SERVE_MEMORY_BUDGET_MB)")
        while self.resident_bytes() + need > budget:
            idle = [other for other in self.all() if other is not served and other.state == READY
                    and other.scheduler is not None and other.in_flight == 0 and other.scheduler.depth == 0]
            if not idle:
                raise ModelUnavailable(f"the memory budget of {budget / MB:.1f} MB is held by models serving "
                                       f"requests; {served.name} v{served.version} needs {need / MB:.1f} MB")
            victim = min(idle, key=lambda other: other.last_used)
            await self._unload_version(victim, f"evicted (least recently used) for {served.name} v{served.version}",
                                       settle=False)
            victim.on_demand = self.settings.model_control == "on_demand"
            self.metrics.evictions.labels(victim.name, str(victim.version)).inc()

    # -- unloading -----------------------------------------------------------------------------
    async def unload_model(self, name: str, version: int | None = None) -> None:
        async with self._control:
            if name not in self.models or (version is not None and version not in self.models[name]):
                raise ModelNotFound(f"no model {name!r}" + (f" version {version}" if version is not None else ""))
            for served in [self.models[name][version]] if version is not None else list(self.models[name].values()):
                await self._unload_version(served, "unloaded on request")

    async def _unload_version(self, served: ServedModel, reason: str, settle: bool = True) -> None:
        """Stop serving one version without failing what reached it: the front-ends move away (UNLOADING), its
        requests finish, then its scheduler stops and its module is freed. ``settle=False`` (an eviction): no
        wait for the front-ends, which send an evicted version's requests on, to load it again."""
        served.required = False
        if served.scheduler is None:
            if served.state != LOADING:
                served.state, served.reason = UNAVAILABLE, reason
            return
        served.state, served.reason = UNLOADING, reason
        if settle:
            await asyncio.sleep(UNLOAD_SETTLE_S)
        give_up = time.monotonic() + (served.config.timeout_s if served.config else 60.0)
        while served.in_flight and time.monotonic() < give_up:  # noqa: ASYNC110 (counted by the engine server)
            await asyncio.sleep(0.02)
        await served.scheduler.stop()
        served.scheduler, served.runtime, served.warmed = None, None, False
        served.state = UNAVAILABLE
        self.metrics.loaded.labels(served.name, str(served.version)).set(0)
        self.metrics.resident_bytes.labels(served.name, str(served.version)).set(0)
        await asyncio.get_running_loop().run_in_executor(self.loader, release_memory, self.device)
        log.info("model %s v%d %s", served.name, served.version, reason)

    # -- polling -------------------------------------------------------------------------------
    async def poll(self) -> None:
        """SERVE_MODEL_CONTROL=poll: every SERVE_POLL_S, serve new versions and drop vanished ones."""
        while True:
            await asyncio.sleep(self.settings.poll_s)
            try:
                await self._poll_once()
            except Exception as exc:  # one bad rescan must not end polling
                log.error("polling the weights directory failed: %r", exc)

    async def _poll_once(self) -> None:
        self.scan()
        for name in sorted(self.models):
            versions = self.models[name]
            for served in [served for served in versions.values() if not served.path.is_dir()]:
                async with self._control:
                    await self._unload_version(served, "its folder was removed")
                    versions.pop(served.version, None)
            if not versions:
                self.models.pop(name, None)
                continue
            wanted = self.wanted_versions(name)
            loaded = {version for version, served in versions.items() if served.state in (READY, UNLOADING)}
            if any(version not in loaded and versions[version].error is None for version in wanted) or (
                    loaded - set(wanted)):
                with contextlib.suppress(LoadFailed):
                    await self.load_model(name, "poll")  # a failure is in the index; the serving versions stay

    def record_device_memory(self) -> None:
        """GPU memory of this engine's device into its gauges (nothing to say on a CPU)."""
        if self.device.type == "cuda":
            device = str(self.device)
            self.metrics.device_memory.labels(device, "allocated").set(torch.cuda.memory_allocated(self.device))
            self.metrics.device_memory.labels(device, "reserved").set(torch.cuda.memory_reserved(self.device))

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
        self.loader.shutdown(wait=False, cancel_futures=True)  # a load in progress is abandoned with the engine


def _lowest_priority() -> None:
    """The loader thread's nice value: 19 (Linux sets it per thread). Under load the inference thread and the
    event loops get the cores first; a load then takes longer, and serving does not wait for it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError) as exc:  # not Linux, or not allowed: loads then compete with serving
        log.warning("could not lower the loader thread's priority (%s): loads compete with serving for the CPU", exc)


FLOATING = {"F16", "BF16", "F32", "F64"}


def stored_bytes(path: Path, float_itemsize: int) -> int:
    """A safetensors file's tensors once loaded: each floating one at ``float_itemsize`` bytes an element (or its
    stored size, if larger), the others as stored. Reads only the header (8 bytes of length, then JSON)."""
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        stored = entry["data_offsets"][1] - entry["data_offsets"][0]
        elements = math.prod(entry["shape"])
        total += max(stored, elements * float_itemsize) if entry["dtype"] in FLOATING else stored
    return total


def tensor_bytes(module: Any) -> int:
    """The bytes of a module's parameters and buffers, each storage once (tied weights share one)."""
    storages: dict[int, int] = {}
    if isinstance(module, torch.nn.Module):
        for tensor in [*module.parameters(), *module.buffers()]:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def release_memory(device: torch.device) -> None:
    """Runs in the loader thread after a version is dropped: give its memory back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
