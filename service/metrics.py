"""Prometheus metrics, in a registry of the app's own (so several apps can live in one process).

Under the supervisor (``python -m service``), ``PROMETHEUS_MULTIPROC_DIR`` is set before any child starts:
the engine writes its batch, queue and forward figures there, each front-end its request figures, and
``/metrics`` on any front-end answers the sum over all of them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, frontend: int = 0) -> None:
        self.frontend = str(frontend)
        self._refusals: dict[str, int] = {}
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("serve_requests", "HTTP requests", ["model", "route", "status"], registry=r)
        self.request_seconds = Histogram("serve_request_duration_seconds", "HTTP request latency",
                                         ["model", "route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.frontend_requests = Counter("serve_frontend_requests", "HTTP requests per front-end process",
                                         ["frontend"], registry=r)
        self.batch_size = Histogram("serve_batch_size", "inputs per forward", ["model", "version"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.mixed_batches = Counter("serve_mixed_batches", "batches holding inputs from more than one front-end",
                                     ["model", "version"], registry=r)
        self.inference_seconds = Histogram("serve_inference_duration_seconds", "time of one batched forward",
                                           ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("serve_queue_depth", "inputs waiting to be batched", ["model", "version"],
                                 registry=r, multiprocess_mode="livesum")
        self.dropped = Counter("serve_dropped_inputs", "inputs dropped before their forward",
                               ["model", "version", "reason"], registry=r)
        self.loaded = Gauge("serve_model_loaded", "1 when the model version is loaded, warmed and alive (in "
                            "the engine)", ["model", "version"], registry=r, multiprocess_mode="livemin")
        # -- for SLOs (the engine's) --
        self.queue_wait = Histogram("serve_queue_wait_seconds", "from a request's arrival at the server to the "
                                    "start of its forward (its first decoding or denoising step)",
                                    ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("serve_requests_in_flight", "requests the engine is running (queued or in a "
                               "forward, generating, sampling)", ["model", "version"], registry=r,
                               multiprocess_mode="livesum")
        self.load_seconds = Gauge("serve_model_load_seconds", "the last load of a version: reading and moving "
                                  "the weights (load), building the prepared forward (prepare), warming up",
                                  ["model", "version", "phase"], registry=r, multiprocess_mode="livemax")
        self.loads = Counter("serve_model_loads", "loads of a version, by why: start, request (the repository "
                             "API), poll, on_demand (a request found it unloaded)", ["model", "version", "why"],
                             registry=r)
        self.evictions = Counter("serve_model_evictions", "versions unloaded to make room within "
                                 "SERVE_MEMORY_BUDGET_MB", ["model", "version"], registry=r)
        self.resident_bytes = Gauge("serve_model_resident_bytes", "the memory a loaded version's weights hold "
                                    "(0 when not loaded)", ["model", "version"], registry=r,
                                    multiprocess_mode="livemax")
        self.engine_restarts = Counter("serve_engine_restarts", "engines started by the supervisor after the "
                                       "first (after a crash, a kill, a hang)", registry=r)
        self.time_to_first_token = Histogram("serve_time_to_first_token_seconds", "from a generation's arrival "
                                             "to its first token", ["model", "version"], buckets=LATENCY_BUCKETS,
                                             registry=r)
        self.time_per_output_token = Histogram("serve_time_per_output_token_seconds", "a finished generation's "
                                               "mean time per token after the first", ["model", "version"],
                                               buckets=TOKEN_BUCKETS, registry=r)
        self.prompt_tokens = Counter("serve_prompt_tokens", "prompt tokens prefilled", ["model", "version"],
                                     registry=r)
        self.generated_tokens = Counter("serve_generated_tokens", "tokens generated", ["model", "version"],
                                        registry=r)
        self.generations = Gauge("serve_generations", "generations running (in the decoding batch) or waiting",
                                 ["model", "version", "state"], registry=r, multiprocess_mode="livesum")
        self.denoising_steps = Counter("serve_denoising_steps", "denoising steps run (each over every active row; "
                                       "rate() is steps per second)", ["model", "version"], registry=r)
        # -- the device scheduler (the engine's) --
        self.device_seconds = Counter("serve_device_seconds", "time the model's work held the device (its share: "
                                      "rate() over the sum of every model's)", ["model", "version"], registry=r)
        self.objective = Counter("serve_latency_objective", "requests (a language model: tokens) measured against "
                                 "the model's latency objective, met or missed", ["model", "version", "outcome"],
                                 registry=r)
        self.objective_seconds = Gauge("serve_latency_objective_seconds", "the model's latency objective (a "
                                       "language model's: per token)", ["model", "version"], registry=r,
                                       multiprocess_mode="livemax")
        self.resident_memory = Gauge("serve_process_resident_memory_bytes", "resident memory of each process of "
                                     "the server (engine, frontend-N; server: the one-process mode)", ["process"],
                                     registry=r, multiprocess_mode="livesum")
        self._memory_read_at = 0.0
        self.device_memory = Gauge("serve_device_memory_bytes", "GPU memory of the engine's device, allocated by "
                                   "tensors and reserved by the caching allocator", ["device", "kind"],
                                   registry=r, multiprocess_mode="livemax")

    def record_memory(self, process: str) -> None:
        """This process's resident memory into its gauge, at most once a second (Linux: /proc/self/statm)."""
        now = time.monotonic()
        if now - self._memory_read_at < 1.0:
            return
        self._memory_read_at = now
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return  # not Linux: no figure rather than a wrong one
        self.resident_memory.labels(process).set(pages * PAGE_SIZE)

    def count_refusal(self, model: str) -> None:
        """A refusal under a flood: a dict increment now, into the Prometheus counters at the next flush
        (their multiprocess files cost more per update than the refusal itself)."""
        self._refusals[model] = self._refusals.get(model, 0) + 1

    def flush_refusals(self, route: str) -> None:
        refusals, self._refusals = self._refusals, {}
        for model, count in refusals.items():
            self.requests.labels(model, route, "503").inc(count)
            self.frontend_requests.labels(self.frontend).inc(count)

    def exposition(self) -> bytes:
        """The text format: this process's registry, or the sum over every process of the server (front-ends
        and engine)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=self.multiprocess_dir)
        return generate_latest(combined)

    def process_exit(self) -> None:
        """Forget this process's live gauges (a process that stopped is no longer loaded or queueing)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def observer(self, model: str, version: int) -> SchedulerMetrics:
        return SchedulerMetrics(self, model, str(version))


class SchedulerMetrics:
    """A scheduler's observer for one model version: the batcher's figures, and the generation and denoising
    loops' own."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._queue_wait = metrics.queue_wait.labels(model, version)
        self._ttft = metrics.time_to_first_token.labels(model, version)
        self._tpot = metrics.time_per_output_token.labels(model, version)
        self._prompt_tokens = metrics.prompt_tokens.labels(model, version)
        self._generated_tokens = metrics.generated_tokens.labels(model, version)
        self._running = metrics.generations.labels(model, version, "running")
        self._waiting = metrics.generations.labels(model, version, "waiting")
        self._steps = metrics.denoising_steps.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._seconds = metrics.inference_seconds.labels(model, version)
        self._mixed = metrics.mixed_batches.labels(model, version)
        self._depth = metrics.queue_depth.labels(model, version)
        self._dropped = metrics.dropped
        self._device_seconds = metrics.device_seconds.labels(model, version)
        self._met = metrics.objective.labels(model, version, "met")
        self._missed = metrics.objective.labels(model, version, "missed")
        self._labels = (model, version)

    def batch_done(self, size: int, seconds: float, sources: int = 1) -> None:
        self._batch_size.observe(size)
        self._seconds.observe(seconds)
        if sources > 1:
            self._mixed.inc()

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def device_time(self, seconds: float) -> None:
        """Called by the device's thread after each of this model's calls."""
        self._device_seconds.inc(seconds)

    def objective(self, total: int, missed: int) -> None:
        if missed:
            self._missed.inc(missed)
        if total > missed:
            self._met.inc(total - missed)

    def dropped(self, reason: str, count: int) -> None:
        self._dropped.labels(*self._labels, reason).inc(count)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(max(0.0, seconds))

    # -- generation --
    def generation_step(self, running: int, waiting: int, prompt_tokens: int) -> None:
        """One decoding step: ``running`` rows each made a token, ``prompt_tokens`` were prefilled."""
        self._generated_tokens.inc(running)
        if prompt_tokens:
            self._prompt_tokens.inc(prompt_tokens)
        self._running.set(running)
        self._waiting.set(waiting)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(max(0.0, seconds))

    def generation_done(self, tokens: int, seconds_after_first: float) -> None:
        if tokens > 1:
            self._tpot.observe(seconds_after_first / (tokens - 1))

    # -- denoising --
    def denoising_step(self) -> None:
        self._steps.inc()
