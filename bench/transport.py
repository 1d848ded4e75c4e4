"""``python -m bench.transport``: what the front-end <-> engine transport costs, alone.

1. Encoding: a request of N 28x28 float32 images as our msgspec MessagePack message (arrays as one
   extension type), encode + decode, against orjson with base64 arrays (the obvious JSON alternative).
2. A round trip over ZeroMQ: a DEALER sends the message to a ROUTER in another process, which decodes it
   and answers with N result rows; p50/p99 over many sequential round trips, ``ipc://`` as the server uses.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import zmq

from service.transport import Cancel, PayloadCodec, Result, Submit, decode_from_engine, decode_to_engine, encode


def request(images: int) -> Submit:
    payload = [np.random.default_rng(i).random((1, 28, 28), dtype=np.float32) for i in range(images)]
    return Submit(1, "mnist-cnn", 1, time.monotonic() + 10, PayloadCodec.encode(payload))


def per_call_us(function: object, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        function()  # type: ignore[operator]
    return (time.perf_counter() - started) / repeats * 1e6


def encoding(images: int, repeats: int) -> tuple[float, float]:
    arrays = [np.random.default_rng(i).random((1, 28, 28), dtype=np.float32) for i in range(images)]
    codec = PayloadCodec(np.ndarray)

    def ours() -> None:
        message = decode_to_engine(encode(Submit(1, "mnist-cnn", 1, 0.0, PayloadCodec.encode(arrays))))
        assert isinstance(message, Submit)
        codec.decode(message.payload)

    def json_base64() -> None:
        body = orjson.dumps({"id": 1, "model": "mnist-cnn", "inputs": [
            {"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()} for a in arrays]})
        for item in orjson.loads(body)["inputs"]:
            np.frombuffer(base64.b64decode(item["data"]), np.float32).reshape(item["shape"])

    return per_call_us(ours, repeats), per_call_us(json_base64, repeats)


def echo_engine(address: str, images: int) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.bind(address)
    rows = PayloadCodec.encode([np.zeros(10, np.float32)] * images)
    codec = PayloadCodec(np.ndarray)
    while True:
        identity, frame = socket.recv_multipart()
        message = decode_to_engine(frame)
        if not isinstance(message, Submit):
            break
        codec.decode(message.payload)
        socket.send_multipart([identity, encode(Result(message.id, rows))])
    socket.close(linger=0)
    context.term()


def round_trips(images: int, count: int) -> list[float]:
    with tempfile.TemporaryDirectory() as directory:
        address = f"ipc://{Path(directory) / 'engine.sock'}"
        engine = multiprocessing.get_context("spawn").Process(target=echo_engine, args=(address, images))
        engine.start()
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.connect(address)
        message = encode(request(images))
        result_codec = PayloadCodec(np.ndarray)
        times = []
        for index in range(count + 100):
            started = time.perf_counter()
            socket.send(message)
            reply = decode_from_engine(socket.recv())
            assert isinstance(reply, Result)
            result_codec.decode(reply.payload)
            if index >= 100:  # the first ones warm up
                times.append((time.perf_counter() - started) * 1e6)
        socket.send(encode(Cancel(0)))  # not a Submit: the echo engine stops
        engine.join(timeout=10)
        socket.close(linger=0)
        context.term()
        return times


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    print("| images | ours encode+decode us | orjson+base64 us | ZeroMQ ipc round trip p50 / p99 us |")
    print("|---:|---:|---:|---:|")
    for images in (1, 32):
        ours, json_base64 = encoding(images, args.repeats)
        times = sorted(round_trips(images, args.repeats))
        print(f"| {images} | {ours:.1f} | {json_base64:.1f} | {statistics.median(times):.0f} / "
              f"{times[int(0.99 * len(times))]:.0f} |")


if __name__ == "__main__":
    main()
