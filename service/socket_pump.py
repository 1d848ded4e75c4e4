"""A ZeroMQ socket on an asyncio loop without a future per message: both ends of the transport use it.

pyzmq's asyncio sockets make a Future, read the socket's events and look an option up (through an import)
on every ``recv`` and ``send``: py-spy put 30% of the engine's event loop there at 64 connections, one
message at a time. Here the loop watches the socket's descriptor once; when it signals, every waiting
message is read in one go and handed to a callback, and a send goes straight out, non-blocking (as every
send of the transport already was: a ROUTER drops what it cannot queue, a DEALER raises ``zmq.Again``).

ZeroMQ's descriptor is edge-triggered: it signals once for any number of messages, and a send can consume
that signal. So a drain reads until the socket is empty, and a send looks for waiting messages after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import zmq

log = logging.getLogger("service.transport")
MAX_PER_TURN = 256  # messages read per event-loop turn: a flood of them cannot starve the loop's other work


class SocketPump:
    """Reads every message of ``socket`` into ``on_message`` (its frames) from the running loop; sends."""

    def __init__(self, socket: zmq.Socket[bytes], on_message: Callable[[list[zmq.Frame]], None]) -> None:
        self.socket = socket
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._fd = int(socket.getsockopt(zmq.FD))
        self._scheduled = False
        self._stopped = False
        # fails if reading does (not "no message": a closed socket, a terminated context); the pump has stopped
        self.failed: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(self._fd, self._drain)
        self._schedule()  # what arrived before the loop watched the descriptor

    def send(self, frames: Sequence[bytes]) -> None:
        """Queue one message; raises ``zmq.Again`` where a DEALER has no peer to queue it for."""
        self.socket.send_multipart(frames, zmq.NOBLOCK)
        if int(self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:  # the send may have taken the read signal
            self._schedule()

    def stop(self) -> None:
        """Stop reading; the socket's owner closes it after this (the loop must forget a descriptor first)."""
        if not self._stopped:
            self._stopped = True
            with contextlib.suppress(OSError, ValueError):  # the socket failed: its descriptor may be gone
                self._loop.remove_reader(self._fd)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self._stopped:
            return
        for _ in range(MAX_PER_TURN):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.error("reading the transport's socket failed: %r", exc)
                self.stop()
                if not self.failed.done():
                    self.failed.set_exception(exc)
                return
            try:
                self._on_message(frames)
            except Exception as exc:  # one bad message must not stop the reading of the others
                log.error("handling a message failed: %r", exc, exc_info=exc)
        self._schedule()  # more are waiting: the loop's other callbacks go first
