"""The front-end's side of the transport: one DEALER socket to its device's engine.

Requests are matched to replies by id. The client knows at once when the engine goes away: ZeroMQ's
socket monitor reports the disconnect the moment the engine's socket closes (a crash, ``kill -9``, an
out-of-memory kill), and every request in flight then fails with ``ModelUnavailable`` (503) instead of
waiting for its deadline. A status query every 200 ms is the heartbeat: with no answer for
``STALE_AFTER_S`` the engine counts as down (hung) too. ZeroMQ reconnects by itself when the
supervisor has started a new engine on the same address.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from service import tracing
from service.outcomes import (
    BatchFailed,
    ControlFailed,
    DeadlineExceeded,
    ModelUnavailable,
    OverBudget,
    QueueFull,
    QuotaExceeded,
)
from service.request_context import ARRIVAL, KEY_DIGEST, REQUEST_ID, note_engine_times, note_model
from service.runtimes.language_model import Finished as TextFinished
from service.runtimes.language_model import Piece as TextPiece
from service.socket_pump import SocketPump
from service.transport import (
    Cancel,
    Control,
    Failure,
    Finished,
    ModelStatus,
    Piece,
    Result,
    Status,
    StatusQuery,
    Submit,
    decode_from_engine,
    encode,
)

log = logging.getLogger("service.frontend.engine")
STATUS_INTERVAL_S = 0.2
STALE_AFTER_S = 2.0


def failure_exception(message: Failure) -> Exception:
    if message.kind == "queue_full":
        return QueueFull(max(1, message.retry_after_s))
    if message.kind == "deadline":
        return DeadlineExceeded(message.message)
    if message.kind == "unavailable":
        return ModelUnavailable(message.message)
    if message.kind in ("not_found", "load_failed"):
        return ControlFailed(message.kind, message.message)
    if message.kind == "quota":
        return QuotaExceeded(message.message, max(1, message.retry_after_s))
    if message.kind == "over_budget":
        return OverBudget(message.message)
    return BatchFailed(message.message)


class EngineStream:
    """The events of one generation, as they arrive; ``cancel`` tells the engine to drop it."""

    def __init__(self, client: EngineClient, request_id: int, size: int) -> None:
        self._client = client
        self.id = request_id
        self.queue: asyncio.Queue[Piece | Finished | BaseException] = asyncio.Queue(maxsize=size)
        self.done = False

    async def events(self) -> AsyncIterator[TextPiece | TextFinished]:
        try:
            while True:
                event = await self.queue.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, Piece):
                    yield TextPiece(event.text)
                else:
                    self.done = True
                    yield TextFinished(event.reason, event.tokens, event.prompt_tokens)
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._client.forget(self.id, cancel=True)


class EngineClient:
    def __init__(self, address: str, context: zmq.asyncio.Context) -> None:
        self.address = address
        self.socket: zmq.Socket[bytes] = zmq.Socket(context, zmq.DEALER)  # read by a SocketPump (start)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)  # never queue requests for an engine that is not there
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 50)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        # made by the asyncio context: an asyncio socket (the transport's own socket is a plain one)
        self._monitor: zmq.asyncio.Socket = self.socket.get_monitor_socket(  # type: ignore[assignment]
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.socket.connect(address)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any] | EngineStream] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pump: SocketPump | None = None
        self._outbox: list[tuple[bytes, int]] = []  # (message, the request it is for: 0 for none)
        # An in-process engine (inproc://) cannot vanish apart from this process, and ZeroMQ reports no
        # handshake for it: it is connected from the start.
        self.connected = address.startswith("inproc://")
        self.status: Status | None = None
        self._status_at = 0.0
        self._heard = asyncio.Event()  # set by the first status: the models' readiness is known
        self.restarts = 0  # engine incarnations seen after the first
        self.refusing: str | None = None  # set when draining ran out of time: every request is refused
        self.status_listeners: list[Callable[[Status], None]] = []  # the catalog follows the engine's models

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """On the running loop: read the engine's replies, watch its connection, ask for its status."""
        self._pump = SocketPump(self.socket, self._on_message)
        for coroutine, name in ((self._watch(), "engine-monitor"), (self._heartbeat(), "engine-heartbeat")):
            self._tasks.append(asyncio.create_task(coroutine, name=name))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pump is not None:
            self._pump.stop()
        self._fail_all(ModelUnavailable("the server is shutting down"))
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=0)

    @property
    def up(self) -> bool:
        """Connected, and the engine answered a status query lately."""
        return self.connected and time.monotonic() - self._status_at < STALE_AFTER_S

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def refuse_all(self, reason: str) -> None:
        """Fail every request in flight, and every later one, with ``ModelUnavailable`` (503): the end of a drain."""
        self.refusing = reason
        request_ids = list(self._pending)
        self._fail_all(ModelUnavailable(reason))
        for request_id in request_ids:  # the engine drops them too, rather than run them to the end
            if self.connected:
                self._send(Cancel(request_id))

    def model_status(self, name: str, version: int) -> ModelStatus | None:
        if not self.up or self.status is None:
            return None
        return self.status.models.get(f"{name}/{version}")

    # -- requests ---------------------------------------------------------------------------------
    def _submit(self, model: str, version: int, deadline: float, payload: msgspec.Raw, inputs: int,
                priority: int = 0) -> int:
        if self.refusing:
            raise ModelUnavailable(self.refusing)
        if not self.up:
            raise ModelUnavailable("the engine is not running (restarting?)")
        note_model(model, version, inputs)
        request_id = next(self._ids)
        message = Submit(request_id, model, version, deadline, payload, REQUEST_ID.get(), KEY_DIGEST.get(),
                         ARRIVAL.get(), tracing.traceparent(), priority)
        self._send(message, request_id)
        return request_id

    async def call(self, model: str, version: int, deadline: float, payload: msgspec.Raw,
                   inputs: int = 1, priority: int = 0) -> msgspec.Raw:
        """Run ``payload`` (``inputs`` inputs) on the model at ``priority``; the engine's results (still encoded).
        Cancelling drops it there."""
        request_id = self._submit(model, version, deadline, payload, inputs, priority)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            result = await future
            note_engine_times(result.queue_s, result.forward_s)
            return result.payload
        finally:  # cancelled here (the client left) or not answered: the engine drops the request
            self.forget(request_id, cancel=future.cancelled() or not future.done())

    async def control(self, action: str, model: str, version: int | None) -> None:
        """Load or unload a model on the engine (the repository API); returns once it is done, raises
        ControlFailed (or ModelUnavailable) otherwise. This front-end has the new status before it returns."""
        if not self.up:
            raise ModelUnavailable("the engine is not running (restarting?)")
        request_id = next(self._ids)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._send(Control(request_id, action, model, version or 0), request_id)
            await future
        finally:
            self._pending.pop(request_id, None)

    def stream(self, model: str, version: int, deadline: float, payload: msgspec.Raw, size: int,
               priority: int = 0) -> EngineStream:
        """Start a generation of at most ``size`` events."""
        request_id = self._submit(model, version, deadline, payload, 1, priority)
        stream = EngineStream(self, request_id, size + 2)
        self._pending[request_id] = stream
        return stream

    def forget(self, request_id: int, cancel: bool) -> None:
        if self._pending.pop(request_id, None) is not None and cancel and self.connected:
            self._send(Cancel(request_id))  # (queued: a send that fails is handled by _flush)

    # -- background ---------------------------------------------------------------------------------
    def _send(self, message: Submit | Cancel | Control | StatusQuery, waiter: int = 0) -> None:
        """Queue a message; the requests that reach this front-end together go out as one ZeroMQ message at the
        end of the loop's turn (the engine reads them in one go). Where it cannot be queued (no engine to take
        it), the request ``waiter`` (its id) fails with ModelUnavailable."""
        if self._pump is None:
            raise ModelUnavailable("the engine client is not started")
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append((encode(message), waiter))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if not outbox or self._pump is None:
            return
        try:
            self._pump.send([frame for frame, _ in outbox])
        except zmq.ZMQError as exc:  # Again: no engine connected to queue them for; or the socket is closed
            reason = "the engine is not reachable" if isinstance(exc, zmq.Again) else f"the transport failed: {exc}"
            for _, waiter in outbox:
                if waiter:
                    self._fail(waiter, ModelUnavailable(reason))

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        """A ZeroMQ message from the engine: one frame per message (a batch's results come together)."""
        for frame in frames:
            try:
                message = decode_from_engine(frame.buffer)
            except msgspec.DecodeError as exc:
                log.error("unreadable message from the engine: %s", exc)
                continue
            self._handle(message)

    def _handle(self, message: Result | Failure | Piece | Finished | Status) -> None:
        if isinstance(message, Status):
            self._on_status(message)
            return
        waiter = self._pending.get(message.id)
        if waiter is None:
            return  # its client left
        if isinstance(waiter, EngineStream):
            event: Any = failure_exception(message) if isinstance(message, Failure) else message
            if isinstance(message, Finished | Failure):
                self._pending.pop(message.id, None)
                waiter.done = isinstance(message, Finished) or waiter.done
            with contextlib.suppress(asyncio.QueueFull):
                waiter.queue.put_nowait(event)
        elif not waiter.done():
            if isinstance(message, Result):
                waiter.set_result(message)
            elif isinstance(message, Failure):
                waiter.set_exception(failure_exception(message))

    def _on_status(self, status: Status) -> None:
        if self.status is not None and (status.pid, status.started_at) != (self.status.pid, self.status.started_at):
            self.restarts += 1
            log.warning("the engine restarted (pid %d)", status.pid)
        self.status, self._status_at = status, time.monotonic()
        for listener in self.status_listeners:
            listener(status)
        self._heard.set()

    async def first_status(self, timeout_s: float) -> bool:
        """Wait until the engine has told this front-end what it serves (False after ``timeout_s``)."""
        try:
            await asyncio.wait_for(self._heard.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
                log.info("connected to the engine at %s", self.address)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = False
                self._status_at = 0.0
                log.error("lost the engine at %s: failing %d requests in flight", self.address, len(self._pending))
                self._fail_all(ModelUnavailable("the engine stopped; it is being restarted"))

    async def _heartbeat(self) -> None:
        ids = itertools.count(1)
        while True:
            if self.connected:
                self._send(StatusQuery(next(ids)))
            await asyncio.sleep(STATUS_INTERVAL_S)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self._pending):
            self._fail(request_id, error)

    def _fail(self, request_id: int, error: Exception) -> None:
        waiter = self._pending.pop(request_id, None)
        if isinstance(waiter, EngineStream):
            waiter.done = True
            with contextlib.suppress(asyncio.QueueFull):
                waiter.queue.put_nowait(error)
        elif waiter is not None and not waiter.done():
            waiter.set_exception(error)
