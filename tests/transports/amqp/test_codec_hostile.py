"""The AMQP wire codec against hostile bytes: headers of any depth, fuzzed frames and tables.

Any bytes give decoded properties or conveyor's ProtocolError, never another exception and
never unbounded recursion; headers nested too deeply, or that are not a field table, leave the
rest of the message readable and say why (issue 15). No broker needed: the frame reader is fed
bytes directly. The example counts are bounded for CI; CONVEYOR_FUZZ_EXAMPLES raises them.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.errors import ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.transports.amqp.channel import Channel
from conveyor.transports.amqp.codec import (
    MAX_HEADER_DEPTH,
    Message,
    Properties,
    decode_properties,
    encode_properties,
    encode_table,
)
from conveyor.transports.amqp.connection import Connection
from conveyor.transports.amqp.consumer import envelope_of
from conveyor.transports.amqp.errors import ConnectionClosed
from conveyor.transports.unreadable import UNREADABLE_CONTENT_TYPE, unreadable_reason

EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Generated headers cost far more per example than raw bytes.
FUZZ_HEADERS = settings(FUZZ, max_examples=max(25, EXAMPLES // 6))


def nested_table_header(depth: int, *, kind: bytes = b"F") -> bytes:
    """A headers field table whose one header nests ``depth`` tables (or arrays) deep, built
    without recursion (a 5,000-deep one is about 35 KB, as RabbitMQ passes it on)."""
    value = kind + b"\x00\x00\x00\x00"  # the innermost: an empty table or array
    for _ in range(depth):
        inner = b"\x01k" + value if kind == b"F" else value
        value = kind + struct.pack(">I", len(inner)) + inner
    entry = b"\x04deep" + value
    return struct.pack(">I", len(entry)) + entry


def content_header(headers_table: bytes, *, body_size: int = 2) -> bytes:
    """A content header frame payload: content type, headers, delivery mode, correlation id."""
    flags = 0x8000 | 0x2000 | 0x1000 | 0x0400
    props = b"\x10application/json" + headers_table + b"\x02" + b"\x03cid"
    return struct.pack(">HHQH", 60, 0, body_size, flags) + props


def test_a_header_nested_5000_levels_is_refused_with_its_reason_and_the_rest_reads() -> None:
    size, props = decode_properties(content_header(nested_table_header(5000)))
    assert size == 2
    assert props.headers is None
    assert props.unreadable is not None
    assert f"nested more than {MAX_HEADER_DEPTH} levels deep" in props.unreadable
    assert "'k'" in props.unreadable or "'deep'" in props.unreadable
    # what follows the headers table still decodes
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.correlation_id == "cid"


def test_nested_arrays_are_bounded_too() -> None:
    _, props = decode_properties(content_header(nested_table_header(5000, kind=b"A")))
    assert props.unreadable is not None
    assert "nested more than" in props.unreadable


def test_headers_nested_to_the_limit_decode() -> None:
    value: Any = "leaf"
    for _ in range(MAX_HEADER_DEPTH):
        value = {"k": value}
    _, props = decode_properties(content_header(encode_table({"deep": value})))
    assert props.unreadable is None
    assert props.headers == {"deep": value}


def test_an_unreadable_rabbitmq_message_becomes_an_unreadable_envelope_not_an_error() -> None:
    _, props = decode_properties(content_header(nested_table_header(5000)))
    message = Message(b"{}", props, "ex", "rk", delivery_tag=7)
    envelope, target = envelope_of(message)
    assert target is None
    assert envelope.body == b"{}"
    assert envelope.content_type == UNREADABLE_CONTENT_TYPE
    reason = unreadable_reason(envelope)
    assert reason is not None
    assert "nested more than" in reason
    assert envelope.correlation_id == "cid"


def test_headers_an_envelope_cannot_hold_come_as_an_unreadable_envelope() -> None:
    # deep enough for the envelope's own check, shallow enough for the codec
    value: Any = 1
    for _ in range(MAX_HEADER_DEPTH + 1):
        value = [value]
    props = Properties(headers={"deep": value}, content_type="application/json")
    envelope, _ = envelope_of(Message(b"[]", props, "", "q"))
    reason = unreadable_reason(envelope)
    assert reason is not None
    assert "nested more than 32 levels deep" in reason


def test_a_negative_delayed_expiration_does_not_escape_as_an_exception() -> None:
    props = Properties(headers={"x-conveyor-delay-target": "exchange:e", "x-death": []})
    props.headers["x-conveyor-delay-expiration"] = -5  # type: ignore[index]
    envelope, _ = envelope_of(Message(b"x", props, "", "q"))
    assert isinstance(envelope, Envelope)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decode_as_properties_or_raise_protocol_error(data: bytes) -> None:
    try:
        size, props = decode_properties(data)
    except ProtocolError:
        return
    assert isinstance(size, int)
    assert isinstance(props, Properties)


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
HEADER_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
HEADERS = st.dictionaries(st.text(min_size=1, max_size=12), HEADER_VALUES, max_size=6)


@FUZZ_HEADERS
@given(HEADERS)
def test_headers_come_back_as_they_went(headers: dict[str, Any]) -> None:
    envelope = Envelope(body=b"x", headers=headers, correlation_id="c", priority=3)
    flags, payload = encode_properties(envelope, headers, "mid")
    frame = struct.pack(">HHQH", 60, 0, 1, flags) + payload
    size, props = decode_properties(frame)
    assert size == 1
    assert props.unreadable is None
    assert (props.headers or {}) == headers
    assert props.correlation_id == "c"
    assert props.priority == 3
    assert props.message_id == "mid"


@FUZZ_HEADERS
@given(HEADERS, st.data())
def test_corrupted_header_frames_decode_or_raise_protocol_error(
    headers: dict[str, Any], data: st.DataObject
) -> None:
    envelope = Envelope(body=b"x", headers=headers)
    flags, payload = encode_properties(envelope, headers, "mid")
    frame = bytearray(struct.pack(">HHQH", 60, 0, 1, flags) + payload)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(frame)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and where < len(frame):
            frame[where] = data.draw(st.integers(0, 255))
        elif action == "insert":
            frame[where:where] = data.draw(st.binary(min_size=1, max_size=6))
        elif action == "delete":
            del frame[where : where + data.draw(st.integers(1, 6))]
        elif action == "truncate":
            del frame[where:]
    try:
        _, props = decode_properties(bytes(frame))
    except ProtocolError:
        return
    # whatever came out, the consumer makes an envelope of it (or an unreadable one)
    envelope_out, _ = envelope_of(Message(b"x", props, "", "q"))
    assert isinstance(envelope_out, Envelope)


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def _deliver(tag: int) -> bytes:
    return (
        struct.pack(">HH", 60, 60)
        + b"\x03ctg"
        + struct.pack(">Q", tag)
        + b"\x00"
        + b"\x02ex"
        + b"\x02rk"
    )


class _Reader:
    """A connection with channel 1 consuming as ``ctg``, fed bytes by hand (no socket)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.connection = Connection(self.loop)
        self.connection._opened = True
        channel = Channel(self.connection, 1)
        self.connection.channels[1] = channel
        self.received: list[Message] = []
        channel.consumers["ctg"] = self.received.append

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def reader() -> Any:
    r = _Reader()
    try:
        yield r
    finally:
        r.close()


def test_the_frame_reader_delivers_a_5000_deep_message_and_goes_on(reader: _Reader) -> None:
    deep = content_header(nested_table_header(5000))
    good = content_header(encode_table({"task": "t"}))
    stream = (
        _frame(1, 1, _deliver(1))
        + _frame(2, 1, deep)
        + _frame(3, 1, b"{}")
        + _frame(1, 1, _deliver(2))
        + _frame(2, 1, good)
        + _frame(3, 1, b"[]")
    )
    reader.connection.data_received(stream)
    assert not reader.connection.closed.done()
    assert [m.delivery_tag for m in reader.received] == [1, 2]
    assert reader.received[0].properties.unreadable is not None
    assert reader.received[1].properties.headers == {"task": "t"}


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=200), st.integers(1, 64))
def test_the_frame_reader_survives_any_payloads(method: bytes, header: bytes, cut: int) -> None:
    r = _Reader()
    try:
        stream = (
            _frame(1, 1, _deliver(1))
            + _frame(2, 1, header)
            + _frame(3, 1, b"ab")
            + _frame(1, 1, method)
        )
        # in pieces, as a socket hands them over
        for start in range(0, len(stream), cut):
            r.connection.data_received(stream[start : start + cut])
        if r.connection.closed.done():
            assert isinstance(r.connection.closed.exception(), ConnectionClosed)
    finally:
        r.close()
