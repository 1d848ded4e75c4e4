"""The engine's side of the transport: one ROUTER socket (read by a ``SocketPump``), one asyncio task per request.

Each ``Submit`` goes to its model's scheduler (batcher, generation loop or denoising loop) with the
deadline the front-end stamped at arrival; the outcome goes back to the front-end that sent it. A
``Cancel`` cancels the request's task, which drops its inputs before their forward or between two
steps. A ``StatusQuery`` is answered at once with every model's readiness and queue depth: it is the
front-ends' heartbeat of this engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import msgspec
import zmq

from service import tracing
from service.engine.batcher import BatchFailed, DeadlineExceeded, ModelUnavailable, QueueFull, Timing
from service.engine.denoising_loop import DenoisingLoop
from service.engine.generation_loop import GenerationLoop
from service.engine.registry import LoadFailed, ModelNotFound, Registry, ServedModel
from service.outcomes import OverBudget, QuotaExceeded
from service.quotas import Quotas
from service.request_context import REQUEST_ID
from service.runtimes.language_model import Piece as TextPiece
from service.socket_pump import SocketPump
from service.transport import (
    Cancel,
    Control,
    Failure,
    Finished,
    FromEngine,
    ModelStatus,
    PayloadCodec,
    Piece,
    Result,
    Status,
    StatusQuery,
    Submit,
    decode_to_engine,
    encode,
)

log = logging.getLogger("service.engine")
FRONTEND_SILENT_AFTER_S = 1.0  # a front-end asks every 0.2 s; one silent this long is gone
READINESS_POLL_S = 0.01


class EngineServer:
    def __init__(self, registry: Registry, socket: zmq.Socket[bytes]) -> None:
        """Made on the running loop: the socket's messages are read from now on."""
        self.registry = registry
        self.quotas = Quotas(registry.settings)
        self.pump = SocketPump(socket, self._on_message)
        self.started_at = time.time()
        self._running: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        self._codecs: dict[tuple[str, int], PayloadCodec] = {}
        self._heard_from: dict[bytes, float] = {}  # front-end -> when it last asked for the status
        self._metric_children: dict[tuple[str, str, int], Any] = {}
        self._outbox: dict[bytes, list[bytes]] = {}  # front-end -> messages to send at the end of this loop turn
        self._controls: set[asyncio.Task[None]] = set()

    async def announce_changes(self) -> None:
        """Tell every front-end at once when a model turns ready or not ready (loaded, warmed, died), rather
        than at its next heartbeat: front-ends that share a port must not disagree for up to 200 ms."""
        last: tuple[object, ...] = ()
        while True:
            now = (self.registry.loading_done, *((served.name, served.version, served.ready, served.state)
                                                 for served in self.registry.all()))
            if now != last:
                last = now
                status = self.status()
                for identity in list(self._heard_from):
                    self._send(identity, status)
            await asyncio.sleep(READINESS_POLL_S)

    async def serve(self) -> None:
        """The pump reads the front-ends' messages from the loop: this task is how long it reads (and it fails,
        so the engine exits and is restarted, if the socket does)."""
        try:
            await self.pump.failed
        finally:
            self.pump.stop()

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        """A front-end's ZeroMQ message (the ROUTER puts its identity first): one frame per message."""
        identity = frames[0].bytes
        for frame in frames[1:]:
            try:
                message = decode_to_engine(frame.buffer)
            except msgspec.DecodeError as exc:
                log.error("a front-end sent an unreadable message: %s", exc)
                continue
            self._handle(identity, message)

    def _handle(self, identity: bytes, message: Submit | Cancel | StatusQuery | Control) -> None:
        if isinstance(message, StatusQuery):
            self._heard_from[identity] = time.monotonic()
            self._send(identity, self.status(message.id))
        elif isinstance(message, Cancel):
            task = self._running.pop((identity, message.id), None)
            if task is not None:
                task.cancel()
        elif isinstance(message, Control):
            self._control_task(identity, message)
        else:
            self._start(identity, message)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def frontends_connected(self) -> int:
        """Front-ends that asked for the status within the last second (each asks every 0.2 s while it runs)."""
        now = time.monotonic()
        return sum(1 for heard in self._heard_from.values() if now - heard < FRONTEND_SILENT_AFTER_S)

    async def finish(self) -> None:
        """Stop the request tasks still running (their schedulers failed them already), before the socket closes."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.flush()

    def status(self, request_id: int = 0) -> Status:
        for served in self.registry.all():  # readiness can change without an event (a scheduler dies)
            self.registry.metrics.loaded.labels(served.name, str(served.version)).set(1 if served.ready else 0)
        self.registry.record_device_memory()
        if self.registry.settings.engine_address is not None:  # an engine process (else: the front-end's)
            self.registry.metrics.record_memory("engine")
        models = {f"{served.name}/{served.version}": ModelStatus(
            served.ready, served.status, served.device, served.dtype, served.loaded_at,
            served.scheduler.depth if served.scheduler is not None else 0,
            served.runtime.forward_kind if served.runtime is not None else "eager",
            served.state, served.reason, served.required, served.on_demand and not served.ready and not served.error,
            served.resident_bytes if served.scheduler is not None else 0) for served in self.registry.all()}
        now = time.monotonic()
        for identity in [i for i, heard in self._heard_from.items() if now - heard > 60]:
            del self._heard_from[identity]  # a front-end gone for good (restarted under a new identity)
        return Status(request_id, os.getpid(), self.started_at, self.registry.loading_done, models,
                      self.frontends_connected())

    def _send(self, identity: bytes, message: FromEngine) -> None:
        """Queue a message for a front-end. The results of one batch all wake up in the same loop turn: they go
        out together, one ZeroMQ message (of one frame each) per front-end, after it."""
        outbox = self._outbox.get(identity)
        if outbox is None:
            if not self._outbox:
                asyncio.get_running_loop().call_soon(self.flush)
            outbox = self._outbox[identity] = []
        outbox.append(encode(message))

    def flush(self) -> None:
        outboxes, self._outbox = self._outbox, {}
        for identity, frames in outboxes.items():
            self.pump.send((identity, *frames))  # a ROUTER drops what it cannot queue: never raises Again

    def _start(self, identity: bytes, submit: Submit) -> None:
        served = self.registry.get(submit.model, submit.version)
        key = (identity, submit.id)
        task = asyncio.create_task(self._run(identity, submit, served), name=f"request:{submit.id}")
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _run(self, identity: bytes, submit: Submit, served: ServedModel | None) -> None:
        REQUEST_ID.set(submit.request_id)  # this task's own context: its log lines carry the request's ID
        if tracing.active() and submit.traceparent:
            with tracing.engine_span(submit.traceparent, submit.model, submit.version) as span:
                outcome = await self._serve(identity, submit, served)
                span.set_attribute("serve.outcome", outcome)
        else:
            await self._serve(identity, submit, served)

    async def _serve(self, identity: bytes, submit: Submit, served: ServedModel | None) -> str:
        """Run one request on its model's scheduler and send the outcome back; the outcome's kind."""
        timing = Timing()
        counted = False
        if served is not None:
            served.in_flight += 1  # an unloading version waits for these
            self._in_flight(served).inc()
        try:
            counted = self.quotas.enabled and self.quotas.acquire(submit.key)
            if served is not None:
                served.last_used = time.monotonic()
                if not served.ready and served.on_demand:  # its first request: load it, within the deadline
                    try:
                        async with asyncio.timeout(max(0.0, submit.deadline - time.monotonic())):
                            await self.registry.ensure_loaded(served)
                    except TimeoutError:
                        raise DeadlineExceeded(f"{submit.model} v{submit.version} was still loading at the "
                                               "request's deadline") from None
            if served is None or not served.ready or served.scheduler is None:
                status = served.status if served is not None else "not served by this engine"
                raise ModelUnavailable(f"{submit.model} v{submit.version} is {status}")
            payloads = self._codec(served).decode(submit.payload)
            scheduler = served.scheduler
            arrival = submit.arrival or time.monotonic()
            if isinstance(scheduler, GenerationLoop):
                await self._generate(identity, submit.id, scheduler, payloads[0], arrival, submit.priority)
                return "generated"
            if isinstance(scheduler, DenoisingLoop):
                with tracing.span("sample", **{"serve.images": payloads[0].n}):
                    results: list[Any] = [await scheduler.submit(payloads[0], submit.deadline, arrival,
                                                                 submit.priority)]
            else:
                results = await scheduler.submit(payloads, submit.deadline, source=identity, timing=timing,
                                                 arrival=arrival, priority=submit.priority)
                self._queue_wait(served).observe(max(0.0, timing.forward_started - arrival))
                tracing.timed_child("queue", arrival, timing.forward_started)
                tracing.timed_child("forward", timing.forward_started, timing.forward_started + timing.forward_s,
                                    **{"serve.batch_size": timing.batch_size, "serve.inputs": len(payloads)})
            reply: FromEngine = Result(submit.id, PayloadCodec.encode(results), timing.queue_s, timing.forward_s)
        except asyncio.CancelledError:
            raise  # the client went away: nobody waits for an answer
        except Exception as exc:
            reply = failed = failure(submit.id, exc)
            if isinstance(exc, BatchFailed):  # one line per request of the failed batch, with its ID
                log.warning("%s v%d: the request failed: %s", submit.model, submit.version, exc)
            if failed.kind == "unavailable":
                # the front-end learns the new readiness before it answers this request's 503
                self._send(identity, self.status())
            outcome = failed.kind
        else:
            outcome = "ok"
        finally:
            if counted:
                self.quotas.release(submit.key)
            if served is not None:
                served.in_flight -= 1
                self._in_flight(served).dec()
        self._send(identity, reply)
        return outcome

    def _control_task(self, identity: bytes, control: Control) -> None:
        task = asyncio.create_task(self._control(identity, control), name=f"control:{control.action}")
        self._controls.add(task)
        task.add_done_callback(self._controls.discard)

    async def _control(self, identity: bytes, control: Control) -> None:
        """Load or unload a model; the front-end that asked gets the new status, then the outcome."""
        version = control.version or None
        try:
            if control.action == "load":
                await self.registry.load_model(control.model)
            elif control.action == "unload":
                await self.registry.unload_model(control.model, version)
            else:
                raise ValueError(f"unknown control action {control.action!r}")
            reply: FromEngine = Result(control.id, msgspec.Raw(encode({})))
        except ModelNotFound as exc:
            reply = Failure(control.id, "not_found", str(exc))
        except LoadFailed as exc:
            reply = Failure(control.id, "load_failed", str(exc))
        except Exception as exc:
            log.error("%s of %s failed: %r", control.action, control.model, exc, exc_info=exc)
            reply = Failure(control.id, "failed", repr(exc))
        self._send(identity, self.status())
        self._send(identity, reply)

    def _in_flight(self, served: ServedModel) -> Any:
        return self._child("in_flight", served)

    def _queue_wait(self, served: ServedModel) -> Any:
        return self._child("queue_wait", served)

    def _child(self, metric: str, served: ServedModel) -> Any:
        """A metric's series for a model version, looked up once (``labels`` takes a lock and hashes each time)."""
        key = (metric, served.name, served.version)
        child = self._metric_children.get(key)
        if child is None:
            child = getattr(self.registry.metrics, metric).labels(served.name, str(served.version))
            self._metric_children[key] = child
        return child

    async def _generate(self, identity: bytes, request_id: int, loop: GenerationLoop, request: Any,
                        arrival: float, priority: int) -> None:
        generation = loop.submit(request, arrival, priority)
        with tracing.span("generate", **{"serve.max_tokens": request.max_tokens}) as span:
            async for event in generation.events():
                if isinstance(event, TextPiece):
                    self._send(identity, Piece(request_id, event.text))
                else:
                    self._send(identity, Finished(request_id, event.reason, event.tokens, event.prompt_tokens))
                    if span is not None:
                        span.set_attributes({"serve.tokens": event.tokens, "serve.prompt_tokens": event.prompt_tokens,
                                             "serve.finish_reason": event.reason})

    def _codec(self, served: ServedModel) -> PayloadCodec:
        key = (served.name, served.version)
        if key not in self._codecs:
            self._codecs[key] = PayloadCodec(served.runtime.payload_type)
        return self._codecs[key]


def failure(request_id: int, exc: BaseException) -> Failure:
    """A scheduler's outcome as the message the front-end turns into an HTTP error."""
    if isinstance(exc, QueueFull):
        return Failure(request_id, "queue_full", str(exc), exc.retry_after_s)
    if isinstance(exc, DeadlineExceeded):
        return Failure(request_id, "deadline", str(exc))
    if isinstance(exc, ModelUnavailable):
        return Failure(request_id, "unavailable", str(exc), 5)
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError):
        return Failure(request_id, "invalid", f"the engine could not read the request: {exc}")
    if isinstance(exc, BatchFailed):
        return Failure(request_id, "failed", str(exc))
    if isinstance(exc, QuotaExceeded):
        return Failure(request_id, "quota", str(exc), exc.retry_after_s)
    if isinstance(exc, OverBudget):
        return Failure(request_id, "over_budget", str(exc))
    log.error("request %d failed in the engine: %r", request_id, exc, exc_info=exc)
    return Failure(request_id, "failed", repr(exc))
