"""The SocketPump over real ZeroMQ sockets between two processes' worth of ends (ipc://): every message
arrives, in order, whatever mix of bursts and replies edge-triggers the descriptor; a failing socket says so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from service.socket_pump import MAX_PER_TURN, SocketPump


def test_bursts_and_echoes_all_arrive_in_order(tmp_path: Path) -> None:
    async def scenario() -> list[bytes]:
        context = zmq.asyncio.Context()
        router: zmq.Socket[bytes] = zmq.Socket(context, zmq.ROUTER)
        dealer: zmq.Socket[bytes] = zmq.Socket(context, zmq.DEALER)
        address = f"ipc://{tmp_path}/pump.sock"
        router.bind(address)
        dealer.connect(address)
        received: list[bytes] = []
        done = asyncio.get_running_loop().create_future()
        total = 3 * MAX_PER_TURN + 7  # more than one turn's worth: the pump must come back for the rest

        def echo(frames: list[zmq.Frame]) -> None:  # the engine's side: each message answered at once
            server.send((frames[0].bytes, *(frame.bytes for frame in frames[1:])))

        def collect(frames: list[zmq.Frame]) -> None:
            received.extend(frame.bytes for frame in frames)
            if len(received) == total and not done.done():
                done.set_result(None)

        server, client = SocketPump(router, echo), SocketPump(dealer, collect)
        try:
            sent = 0
            while sent < total:  # bursts of one to five frames per message, without yielding in between
                burst = [str(sent + i).encode() for i in range(min(1 + sent % 5, total - sent))]
                client.send(burst)
                sent += len(burst)
                if sent % 50 < 5:
                    await asyncio.sleep(0)
            await asyncio.wait_for(done, 10)
        finally:
            server.stop()
            client.stop()
            router.close(linger=0)
            dealer.close(linger=0)
            context.term()
        return received

    received = asyncio.run(scenario())
    assert received == [str(i).encode() for i in range(len(received))]


def test_a_socket_that_fails_fails_the_pump() -> None:
    async def scenario() -> None:
        context = zmq.asyncio.Context()
        router: zmq.Socket[bytes] = zmq.Socket(context, zmq.ROUTER)
        router.bind("inproc://pump-failure")
        pump = SocketPump(router, lambda frames: None)
        router.close(linger=0)
        pump._schedule()  # what the loop would do on the descriptor's next signal
        with pytest.raises(zmq.ZMQError):
            await asyncio.wait_for(pump.failed, 5)
        context.term()

    asyncio.run(scenario())
