"""Messages between the HTTP front-ends and an engine: msgspec MessagePack frames over ZeroMQ.

A front-end holds one DEALER socket; the engine one ROUTER socket (``ipc://`` between processes,
``inproc://`` when the engine runs inside the front-end's process). Every message is one frame: a
tagged msgspec struct. What a runtime sends (decoded inputs) and gets back (results) travels inside
it as MessagePack of the runtime's own payload and result types, with numpy arrays as one extension
type (dtype, shape, raw bytes): no pickle anywhere, and a 28x28 image costs one 3 KB copy.

Why this pair (``python -m bench.transport``, this 2-core machine): a request of one 28x28 image encodes
and decodes in 4 us (orjson with base64 arrays: 14 us), one of 32 images in 105 us (414 us); a round
trip over ``ipc://`` to another process takes 111 us at the median (32 images: 248 us). ZeroMQ also gives
framing, reconnection after an engine restart, and a monitor that reports a dead peer the moment its
socket closes.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

ARRAY_EXT = 1  # the MessagePack extension code of a numpy array


class Submit(msgspec.Struct, tag="submit", array_like=True):
    """Run ``payload`` (a list of decoded inputs, or one sampling/generation request) on a model."""

    id: int
    model: str
    version: int
    deadline: float  # time.monotonic() of the front-end's machine: absolute, counted from arrival
    payload: msgspec.Raw
    request_id: str = ""  # the HTTP request's X-Request-ID, for the engine's log lines about it
    key: str = ""  # a digest of its API key, when keys have quotas (service/quotas.py)
    arrival: float = 0.0  # time.monotonic() of its arrival at the front-end (0: unknown), for the queue wait
    traceparent: str = ""  # the front-end's span, when tracing is on (service/tracing.py)
    priority: int = 0  # its priority level (1 the highest; 0 the model's default)


class Cancel(msgspec.Struct, tag="cancel", array_like=True):
    """The client went away: drop the request's inputs before their forward or between two steps."""

    id: int


class Control(msgspec.Struct, tag="control", array_like=True):
    """The model repository API: ``load`` or ``unload`` a model (``version`` 0: every version)."""

    id: int
    action: str
    model: str
    version: int = 0


class StatusQuery(msgspec.Struct, tag="status?", array_like=True):
    id: int


class Result(msgspec.Struct, tag="result", array_like=True):
    id: int
    payload: msgspec.Raw  # the runtime's results, in the order of the inputs
    queue_s: float = 0.0  # for a batched model: the longest wait of its inputs before their forward
    forward_s: float = 0.0  # and the longest forward that ran them


class Failure(msgspec.Struct, tag="failure", array_like=True):
    id: int
    kind: str  # queue_full | deadline | unavailable | failed | invalid | quota
    message: str
    retry_after_s: int = 0


class Piece(msgspec.Struct, tag="piece", array_like=True):
    """Generated text of one decoding step."""

    id: int
    text: str


class Finished(msgspec.Struct, tag="finished", array_like=True):
    id: int
    reason: str  # "length" | "stop"
    tokens: int
    prompt_tokens: int


class ModelStatus(msgspec.Struct, array_like=True):
    ready: bool
    status: str
    device: str
    dtype: str
    loaded_at: float
    queue_depth: int
    forward: str = "eager"  # the prepared forward's kind (and its largest difference from eager)
    state: str = "READY"  # READY | LOADING | UNLOADING | UNAVAILABLE (the repository index's)
    reason: str = ""
    required: bool = True  # readiness waits for it
    on_demand: bool = False  # not loaded, and loaded by its first request (SERVE_MODEL_CONTROL=on_demand)
    resident_bytes: int = 0  # its weights' memory, while loaded


class Status(msgspec.Struct, tag="status", array_like=True):
    id: int
    pid: int
    started_at: float
    loading_done: bool
    models: dict[str, ModelStatus]  # "name/version" -> status
    frontends: int = 0  # front-ends that asked for the status within the last second (connected, alive)


ToEngine = Submit | Cancel | StatusQuery | Control
FromEngine = Result | Failure | Piece | Finished | Status


def _encode_extra(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        # "<dtype>;<d0,d1,...>;<C-order bytes>". Not "|": it is part of some dtypes' names ("|u1", "|b1").
        header = f"{obj.dtype.str};{','.join(map(str, obj.shape))};".encode()
        return msgspec.msgpack.Ext(ARRAY_EXT, header + obj.tobytes(order="C"))
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"cannot send a {type(obj).__name__} between processes")


def _decode_ext(code: int, data: memoryview) -> Any:
    if code != ARRAY_EXT:
        raise ValueError(f"unknown MessagePack extension {code}")
    raw = bytes(data)
    dtype, shape, _ = raw.split(b";", 2)
    offset = len(dtype) + len(shape) + 2
    dims = [int(size) for size in shape.split(b",") if size]  # none: a 0-d array
    return np.frombuffer(raw, dtype=np.dtype(dtype.decode()), offset=offset).reshape(dims).copy()


_encoder = msgspec.msgpack.Encoder(enc_hook=_encode_extra)
_to_engine = msgspec.msgpack.Decoder(ToEngine)
_from_engine = msgspec.msgpack.Decoder(FromEngine)


def encode(message: Any) -> bytes:
    """A message, or a payload to wrap in one (``msgspec.Raw(encode(payload))``)."""
    return _encoder.encode(message)


def decode_to_engine(frame: bytes | memoryview) -> ToEngine:
    return _to_engine.decode(frame)


def decode_from_engine(frame: bytes | memoryview) -> FromEngine:
    return _from_engine.decode(frame)


class PayloadCodec:
    """Encodes and decodes one runtime's payload or result lists with their declared types."""

    def __init__(self, item_type: Any) -> None:
        # No dec_hook: arrays arrive as the extension type, and msgspec refuses anything else where an array is
        # declared with a ValidationError naming the field (a hook that passed it on was dead code, found by
        # make mutate).
        self._decoder = msgspec.msgpack.Decoder(list[item_type], ext_hook=_decode_ext)

    @staticmethod
    def encode(items: list[Any]) -> msgspec.Raw:
        return msgspec.Raw(_encoder.encode(items))

    def decode(self, raw: msgspec.Raw | bytes) -> list[Any]:
        return self._decoder.decode(raw)
