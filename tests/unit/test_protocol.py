"""The RPC framing and message types, without any I/O."""

from __future__ import annotations

import struct

import msgspec
import pytest

from sage_client import protocol as p


def test_frames_round_trip_in_pieces() -> None:
    messages = [p.Hello(client="t"), p.Request(7, "ping", p.encode_params({"payload": "x"})), p.Reply(7, {"a": [1, 2]})]
    stream = b"".join(p.encode_frame(m) for m in messages)
    decoder = p.FrameDecoder()
    out = []
    for i in range(0, len(stream), 3):  # a byte stream cut at awkward places
        decoder.feed(stream[i : i + 3])
        while (body := decoder.next_frame()) is not None:
            out.append(p.decode_message(body))
    assert [type(m) for m in out] == [p.Hello, p.Request, p.Reply]
    assert out[1].method == "ping" and msgspec.msgpack.decode(out[1].params) == {"payload": "x"}
    assert out[2].result == {"a": [1, 2]}
    assert decoder.buffered == 0


def test_incomplete_frame_waits_for_more() -> None:
    frame = p.encode_frame(p.Hello())
    decoder = p.FrameDecoder()
    decoder.feed(frame[:-1])
    assert decoder.next_frame() is None
    decoder.feed(frame[-1:])
    assert decoder.next_frame() is not None


def test_oversized_frame_is_fatal_and_typed() -> None:
    decoder = p.FrameDecoder(max_frame_bytes=1024)
    decoder.feed(struct.pack(">I", 1025))
    with pytest.raises(p.ProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == p.ErrorCode.FRAME_TOO_LARGE and info.value.fatal
    assert "1025" in info.value.message and "1024" in info.value.message


def test_garbage_frame_is_a_typed_non_fatal_error() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_message(b"\xc1not msgpack")
    assert info.value.code == p.ErrorCode.BAD_FRAME and not info.value.fatal
    with pytest.raises(p.ProtocolError):  # valid msgpack, not one of our messages
        p.decode_message(msgspec.msgpack.encode({"t": "nope"}))


def test_params_are_typed_per_method() -> None:
    assert p.decode_params("ping", p.encode_params({"payload": "hi"})) == p.EchoParams("hi")
    with pytest.raises(p.ProtocolError) as info:
        p.decode_params("ping", p.encode_params({"payload": 3}))
    assert info.value.code == p.ErrorCode.INVALID_PARAMS and "payload" in info.value.message
    with pytest.raises(p.ProtocolError) as info:
        p.decode_params("ping", p.encode_params({"delay_s": 999}))
    assert info.value.code == p.ErrorCode.INVALID_PARAMS
    with pytest.raises(p.ProtocolError) as info:
        p.decode_params("no.such.method", p.encode_params({}))
    assert info.value.code == p.ErrorCode.UNKNOWN_METHOD and "ping" in info.value.message
