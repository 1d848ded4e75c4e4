"""Prometheus metrics, in a registry of the app's own (so several apps can live in one process).

Under the supervisor (``python -m service``), ``PROMETHEUS_MULTIPROC_DIR`` is set before any child starts:
the engine writes its batch, queue and forward figures there, each front-end its request figures, and
``/metrics`` on any front-end answers the sum over all of them.
"""

from __future__ import annotations

import os

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

    def observer(self, model: str, version: int) -> BatchMetrics:
        return BatchMetrics(self, model, str(version))


class BatchMetrics:
    """The batcher's observer for one model version."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._batch_size = metrics.batch_size.labels(model, version)
        self._seconds = metrics.inference_seconds.labels(model, version)
        self._mixed = metrics.mixed_batches.labels(model, version)
        self._depth = metrics.queue_depth.labels(model, version)
        self._dropped = metrics.dropped
        self._labels = (model, version)

    def batch_done(self, size: int, seconds: float, sources: int = 1) -> None:
        self._batch_size.observe(size)
        self._seconds.observe(seconds)
        if sources > 1:
            self._mixed.inc()

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def dropped(self, reason: str, count: int) -> None:
        self._dropped.labels(*self._labels, reason).inc(count)
