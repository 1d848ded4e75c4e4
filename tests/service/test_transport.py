"""The wire between front-ends and the engine: every message and payload comes back as it was sent, numpy
arrays of any dtype and shape included (bit for bit, writable, not a view of the frame), and what the codecs
cannot carry is refused by name rather than sent as something else."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.transport import (
    ARRAY_EXT,
    Cancel,
    Control,
    Failure,
    Finished,
    ModelStatus,
    PayloadCodec,
    Piece,
    Result,
    Status,
    StatusQuery,
    Submit,
    decode_from_engine,
    decode_to_engine,
    encode,
)

DTYPES = st.sampled_from([np.uint8, np.int16, np.int64, np.float16, np.float32, np.float64, np.bool_])
ARRAYS = DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                                               max_side=5)))


class Item(msgspec.Struct, array_like=True):
    """A payload type like the runtimes' (an image, its index, a flag)."""

    pixels: np.ndarray
    index: int
    truncated: bool = False


@given(ARRAYS)
def test_an_array_comes_back_bit_for_bit(array: np.ndarray) -> None:
    [item] = PayloadCodec(Item).decode(PayloadCodec.encode([Item(array, 3)]))
    assert item.pixels.dtype == array.dtype and item.pixels.shape == array.shape
    assert item.pixels.tobytes() == np.ascontiguousarray(array).tobytes()
    assert item.pixels.flags.writeable and item.pixels.flags.owndata  # a copy the runtime may change


def test_a_strided_array_is_sent_as_its_values() -> None:
    array = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2].T  # not contiguous
    [item] = PayloadCodec(Item).decode(PayloadCodec.encode([Item(array, 0)]))
    assert np.array_equal(item.pixels, array)


def test_numpy_scalars_travel_as_numbers_and_order_is_kept() -> None:
    items = [Item(np.zeros(2, np.uint8), np.int64(i), np.bool_(i % 2)) for i in range(5)]  # type: ignore[arg-type]
    decoded = PayloadCodec(Item).decode(PayloadCodec.encode(items))
    assert [(item.index, item.truncated) for item in decoded] == [(i, bool(i % 2)) for i in range(5)]
    assert all(type(item.index) is int and type(item.truncated) is bool for item in decoded)


@given(st.integers(0, 2**63 - 1), st.text(), st.integers(-(2**31), 2**31), st.floats(allow_nan=False),
       st.text(), st.text(), st.floats(allow_nan=False), st.text())
def test_messages_to_the_engine_round_trip(id_: int, model: str, version: int, deadline: float, request_id: str,
                                           key: str, arrival: float, traceparent: str) -> None:
    payload = PayloadCodec.encode([Item(np.ones((2, 2), np.float32), 1)])
    submit = Submit(id_, model, version, deadline, payload, request_id, key, arrival, traceparent)
    decoded = decode_to_engine(encode(submit))
    assert isinstance(decoded, Submit)
    assert (decoded.id, decoded.model, decoded.version, decoded.deadline, decoded.request_id, decoded.key,
            decoded.arrival, decoded.traceparent) == (id_, model, version, deadline, request_id, key, arrival,
                                                      traceparent)
    assert bytes(decoded.payload) == bytes(payload)
    for message in (Cancel(id_), StatusQuery(id_), Control(id_, "load", model, version)):
        assert decode_to_engine(encode(message)) == message


def test_messages_from_the_engine_round_trip() -> None:
    status = Status(7, 1234, 1.5, True, {"m/1": ModelStatus(True, "ready", "cpu", "float32", 2.0, 3, "traced",
                                                             "READY", "", False)}, frontends=2)
    messages = [Result(1, msgspec.Raw(encode([1, 2])), 0.25, 0.5), Failure(2, "queue_full", "full", 3),
                Piece(3, "to be"), Finished(4, "stop", 12, 5), status]
    for message in messages:
        decoded = decode_from_engine(encode(message))
        assert type(decoded) is type(message)
        if isinstance(message, Result):
            assert isinstance(decoded, Result)
            assert (decoded.id, bytes(decoded.payload), decoded.queue_s, decoded.forward_s) == (
                1, bytes(message.payload), 0.25, 0.5)
        else:
            assert decoded == message


def test_a_message_of_the_wrong_direction_or_kind_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_to_engine(encode(Piece(1, "x")))  # the engine's message, sent to the engine
    with pytest.raises(msgspec.ValidationError):
        decode_from_engine(encode(Cancel(1)))
    with pytest.raises(msgspec.DecodeError):
        decode_to_engine(b"\xc1")  # not MessagePack


def test_what_cannot_travel_is_refused_by_name() -> None:
    class Opaque:  # msgspec itself carries dataclasses, attrs classes and Structs
        pass

    with pytest.raises(NotImplementedError, match="cannot send a Opaque"):
        PayloadCodec.encode([Opaque()])
    unknown = msgspec.msgpack.encode([[msgspec.msgpack.Ext(ARRAY_EXT + 1, b"x"), 0, False]])
    with pytest.raises(ValueError, match="unknown MessagePack extension 2"):
        PayloadCodec(Item).decode(unknown)
    with pytest.raises(msgspec.ValidationError):
        PayloadCodec(Item).decode(msgspec.msgpack.encode([["not an array", 0, False]]))


def test_a_payload_of_another_type_does_not_decode_as_this_one() -> None:
    class Other(msgspec.Struct, array_like=True):
        text: str

    with pytest.raises(msgspec.ValidationError):
        PayloadCodec(Item).decode(PayloadCodec.encode([Other("hello")]))
