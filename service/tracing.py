"""OpenTelemetry tracing, optional: off unless the standard ``OTEL_*`` variables ask for it, and then only if
the ``otel`` extra is installed (``pip install 'serve[otel]'``); the server runs the same without it.

It is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, or
``OTEL_TRACES_EXPORTER=otlp`` (and not ``OTEL_SDK_DISABLED=true``); spans go over OTLP/HTTP, batched, with the
SDK's own ``OTEL_*`` settings (service name, headers, sampling, batch delay). A request's trace:

- the front-end's span of the HTTP request (kind SERVER), a child of the caller's ``traceparent`` if it sent
  one, with the route, model, version and status; a ``decode`` child for the inputs' decoding;
- the engine's span of the same request (``engine <model>``), in the same trace across the process boundary
  (the front-end sends its ``traceparent`` with the request), with ``queue`` and ``forward`` children carrying
  the batch size, or the generation with its token counts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

log = logging.getLogger("service.tracing")
_tracer: Any = None  # the OpenTelemetry tracer once set up; None: tracing is off


def requested(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                      or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(role: str) -> bool:
    """Turn tracing on for this process (``role``: frontend, engine or server) if the environment asks for it."""
    global _tracer
    if _tracer is not None or not requested(os.environ):
        return _tracer is not None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for traces, but OpenTelemetry is not installed: pip install 'serve[otel]'")
        return False
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "serve"),
                                "serve.process": role, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("serve")
    log.info("tracing to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
             or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "the default OTLP endpoint"))
    return True


def active() -> bool:
    return _tracer is not None


def _extract(carrier: Mapping[str, str]) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


@contextmanager
def request_span(headers: list[tuple[bytes, bytes]], method: str) -> Iterator[Any]:
    """The front-end's span of one HTTP request, under the caller's ``traceparent`` if any."""
    from opentelemetry.trace import SpanKind

    carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers
               if key in (b"traceparent", b"tracestate")}
    with _tracer.start_as_current_span(method, context=_extract(carrier), kind=SpanKind.SERVER) as span:
        yield span


def span(name: str, **attributes: Any) -> Any:
    """A child span of the current one (a no-op context without tracing)."""
    if _tracer is None:
        return nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes)


def traceparent() -> str:
    """The current span's context as a ``traceparent`` value, to send along ("" without tracing)."""
    if _tracer is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


@contextmanager
def engine_span(parent: str, model: str, version: int) -> Iterator[Any]:
    """The engine's span of a request, in the trace of the front-end's span (``parent``: its traceparent)."""
    from opentelemetry.trace import SpanKind

    context = _extract({"traceparent": parent})
    with _tracer.start_as_current_span(f"engine {model}", context=context, kind=SpanKind.SERVER,
                                       attributes={"serve.model": model, "serve.version": version}) as current:
        yield current


def timed_child(name: str, start_monotonic: float, end_monotonic: float, **attributes: Any) -> None:
    """A finished child span of the current one, from two ``time.monotonic()`` readings."""
    if _tracer is None or end_monotonic <= 0:
        return
    offset_ns = time.time_ns() - time.monotonic_ns()
    started = _tracer.start_span(name, start_time=int(start_monotonic * 1e9) + offset_ns, attributes=attributes)
    started.end(end_time=int(end_monotonic * 1e9) + offset_ns)
