"""The AMQP 0-9-1 wire codec: frames, field tables and basic properties, encoded and decoded.

Rarely used methods (declarations, the handshake) are marshalled and unmarshalled by pamqp; the
per-message hot path (``basic.publish``, ``basic.deliver``, content headers, acks) is framed
here directly, straight from and into bytes. Field tables are always conveyor's own: pamqp
encodes floats as 32-bit, and headers must come back as they went, so floats go as doubles,
in declarations too. Encoding raises ProtocolError for what AMQP cannot carry.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pamqp.frame
from pamqp import commands as spec
from pamqp import encode as pamqp_encode
from pamqp.base import Frame

from conveyor.errors import ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import FrozenMapping

__all__ = [
    "Message",
    "Properties",
    "decode_properties",
    "encode_properties",
    "encode_table",
    "message_frames",
    "method_frame",
    "shortstr",
]

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
HEAD = struct.Struct(">BHI")
CLASS_METHOD = struct.Struct(">HH")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# (class, method) ids of the frames handled on the hot path.
DELIVER = (60, 60)
GET_OK = (60, 71)
GET_EMPTY = (60, 72)
RETURN = (60, 50)
ACK = (60, 80)
NACK = (60, 120)


@dataclass(slots=True)
class Properties:
    """Basic properties of a received message; ``headers`` holds JSON-ready values.

    ``unreadable`` says why the headers could not be read (then ``headers`` is None).
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    unreadable: str | None = None


@dataclass(slots=True)
class Message:
    """A message RabbitMQ delivered (``basic.deliver``/``get-ok``) or returned (``return``)."""

    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    delivery_tag: int = 0
    redelivered: bool = False
    consumer_tag: str = ""
    reply_code: int = 0
    reply_text: str = ""


class Reader:
    """Reads AMQP wire types from a buffer, left to right."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def octet(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def short(self) -> int:
        (value,) = U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def long(self) -> int:
        (value,) = U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def longlong(self) -> int:
        (value,) = U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def shortstr(self) -> str:
        size = self.data[self.pos]
        start = self.pos + 1
        self.pos = start + size
        return self.data[start : self.pos].decode("utf-8", errors="replace")

    def longstr(self) -> str:
        size = self.long()
        start = self.pos
        self.pos += size
        return self.data[start : self.pos].decode("utf-8", errors="replace")

    def scalar(self) -> Any:
        """A field value of a kind that holds no other values (``F`` and ``A`` do)."""
        kind = self.data[self.pos]
        self.pos += 1
        if kind == 83:  # S
            return self.longstr()
        if kind == 73:  # I
            (value,) = struct.unpack_from(">i", self.data, self.pos)
            self.pos += 4
            return value
        if kind == 116:  # t
            return self.octet() != 0
        if kind == 86:  # V
            return None
        fixed = _FIXED.get(kind)
        if fixed is not None:
            (value,) = fixed.unpack_from(self.data, self.pos)
            self.pos += fixed.size
            return value
        if kind == 84:  # T: seconds since the epoch
            return self.longlong()
        if kind == 68:  # D: scale, then an unscaled 32-bit value
            scale = self.octet()
            (unscaled,) = struct.unpack_from(">i", self.data, self.pos)
            self.pos += 4
            return unscaled / 10**scale
        if kind == 120:  # x: bytes, carried as text
            return self.longstr()
        raise ProtocolError(f"unknown field type {chr(kind)!r} in a field table")


_FIXED = {
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("s"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("i"): struct.Struct(">I"),
    ord("l"): struct.Struct(">q"),
    ord("L"): struct.Struct(">Q"),
    ord("f"): struct.Struct(">f"),
    ord("d"): struct.Struct(">d"),
}


_UNPACK_U32 = U32.unpack_from
_UNPACK_I32 = struct.Struct(">i").unpack_from


def shortstr_at(data: bytes, pos: int) -> tuple[str, int]:
    """The short string at ``pos`` and the position after it."""
    end = pos + 1 + data[pos]
    return data[pos + 1 : end].decode("utf-8", errors="replace"), end


# How deeply field tables and arrays may nest inside a header value: as deep as an envelope
# lets headers nest, and far from Python's recursion limit (RabbitMQ passes on thousands).
MAX_HEADER_DEPTH = 32
# What reading a field table can raise on bytes that are not one.
_MALFORMED = (struct.error, IndexError, ProtocolError)


def _table(data: bytes, pos: int, depth: int = 0) -> tuple[dict[str, Any], int]:
    """A field table at ``pos``, as JSON-ready values, and the position after it.

    ``depth`` is how many tables and arrays enclose it. Raises ProtocolError for a table nested
    deeper than MAX_HEADER_DEPTH or an unknown field type; struct.error or IndexError for a
    table cut short.
    """
    (size,) = _UNPACK_U32(data, pos)
    pos += 4
    end = pos + size
    result: dict[str, Any] = {}
    keys = _KEY_NAMES
    while pos < end:
        key_end = pos + 1 + data[pos]
        raw_key = data[pos + 1 : key_end]
        key = keys.get(raw_key)
        if key is None:
            key = raw_key.decode("utf-8", errors="replace")
            if len(keys) < 4096:
                keys[raw_key] = key
        # The common kinds inline (one call per entry is most of the cost).
        kind = data[key_end]
        if kind == 83:  # S
            (size,) = _UNPACK_U32(data, key_end + 1)
            pos = key_end + 5 + size
            result[key] = data[key_end + 5 : pos].decode("utf-8", errors="replace")
        elif kind == 86:  # V
            result[key] = None
            pos = key_end + 1
        elif kind == 116:  # t
            result[key] = data[key_end + 1] != 0
            pos = key_end + 2
        else:
            result[key], pos = _value(data, key_end, depth, key)
    if pos != end:
        raise ProtocolError(f"a field table's entries overrun its size by {pos - end} bytes")
    return result, pos


_KEY_NAMES: dict[bytes, str] = {}


def _value(data: bytes, pos: int, depth: int, key: str) -> tuple[Any, int]:
    kind = data[pos]
    pos += 1
    if kind == 83:  # S
        (size,) = _UNPACK_U32(data, pos)
        pos += 4
        return data[pos : pos + size].decode("utf-8", errors="replace"), pos + size
    if kind == 86:  # V
        return None, pos
    if kind == 73:  # I
        return _UNPACK_I32(data, pos)[0], pos + 4
    if kind == 116:  # t
        return data[pos] != 0, pos + 1
    if kind == 70 or kind == 65:  # F, A
        if depth >= MAX_HEADER_DEPTH:
            raise ProtocolError(
                f"header {key!r} is nested more than {MAX_HEADER_DEPTH} levels deep"
            )
        if kind == 70:
            return _table(data, pos, depth + 1)
        (size,) = _UNPACK_U32(data, pos)
        pos += 4
        end = pos + size
        items = []
        while pos < end:
            item, pos = _value(data, pos, depth + 1, key)
            items.append(item)
        if pos != end:
            raise ProtocolError(f"header {key!r}: an array's items overrun its size")
        return items, pos
    reader = Reader(data, pos - 1)
    value = reader.scalar()
    if reader.pos > len(data):
        raise IndexError("a field value runs past the end of the frame")
    return value, reader.pos


def _headers(data: bytes, pos: int) -> tuple[dict[str, Any] | None, str | None, int]:
    """The headers table at ``pos``, or None and why it cannot be read; then the position
    after it (a table's size prefix says where it ends, so the properties after it still read).
    """
    (size,) = _UNPACK_U32(data, pos)
    end = pos + 4 + size
    if end > len(data):
        raise ProtocolError("the headers table runs past the end of the content header")
    try:
        headers, _ = _table(data, pos)
    except _MALFORMED as exc:
        return None, f"unreadable AMQP headers: {exc}", end
    return headers, None, end


def decode_properties(data: bytes) -> tuple[int, Properties]:
    """Decode a content header frame: the body size and the properties.

    Headers that cannot be read (nested deeper than MAX_HEADER_DEPTH, an unknown field type, a
    malformed table) leave ``headers`` None and say why in ``unreadable``; the rest still
    decodes. A frame that is not a content header at all raises ProtocolError.
    """
    try:
        return _decode_properties(data)
    except (struct.error, IndexError) as exc:
        raise ProtocolError(f"malformed content header frame: {exc}") from exc


def _decode_properties(data: bytes) -> tuple[int, Properties]:
    (size,) = U64.unpack_from(data, 4)
    (flags,) = U16.unpack_from(data, 12)
    pos = 14
    extra = flags
    while extra & 1:  # continuation flag words (RabbitMQ sends none)
        (extra,) = U16.unpack_from(data, pos)
        pos += 2
    props = Properties()
    if flags & 0x8000:
        props.content_type, pos = shortstr_at(data, pos)
    if flags & 0x4000:
        props.content_encoding, pos = shortstr_at(data, pos)
    if flags & 0x2000:
        props.headers, props.unreadable, pos = _headers(data, pos)
    if flags & 0x1000:
        props.delivery_mode = data[pos]
        pos += 1
    if flags & 0x0800:
        props.priority = data[pos]
        pos += 1
    if flags & 0x0400:
        props.correlation_id, pos = shortstr_at(data, pos)
    if flags & 0x0200:
        props.reply_to, pos = shortstr_at(data, pos)
    if flags & 0x0100:
        props.expiration, pos = shortstr_at(data, pos)
    if flags & 0x0080:
        props.message_id, pos = shortstr_at(data, pos)
    if flags & 0x0040:
        (props.timestamp,) = U64.unpack_from(data, pos)
        pos += 8
    if flags & 0x0020:
        props.type, pos = shortstr_at(data, pos)
    if flags & 0x0010:
        props.user_id, pos = shortstr_at(data, pos)
    if flags & 0x0008:
        props.app_id, pos = shortstr_at(data, pos)
    if pos > len(data):
        raise ProtocolError("the content header's properties run past the end of the frame")
    return size, props


def unmarshal(channel: int, payload: bytes) -> Any:
    """A method frame's payload decoded by pamqp (the rarely used methods)."""
    return pamqp.frame.unmarshal(
        HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + b"\xce"
    )[2]


def method_frame(channel: int, frame: Frame) -> bytes:
    """``frame`` marshalled for ``channel`` (pamqp; frames may override ``marshal``)."""
    return bytes(pamqp.frame.marshal(frame, channel))


_SETTLE = struct.Struct(">BHIHHQBB")


def settle_frame(channel: int, method: int, delivery_tag: int, bits: int) -> bytes:
    """``basic.ack`` (method 80) or ``basic.nack`` (120) with its bits, for ``channel``."""
    return _SETTLE.pack(1, channel, 13, 60, method, delivery_tag, bits, FRAME_END)


_PACK_I = struct.Struct(">I").pack
_PACK_INT = struct.Struct(">ci").pack
_PACK_DOUBLE = struct.Struct(">cd").pack
_KEYS: dict[str, bytes] = {}


def _encode_value(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        data: bytes = value.encode("utf-8")
        return b"S" + _PACK_I(len(data)) + data
    if value is None:
        return b"V"
    if kind is int and -(2**31) <= value < 2**31:
        return _PACK_INT(b"I", value)
    if kind is bool:
        return b"t\x01" if value else b"t\x00"
    if kind is list:
        items = b"".join([_encode_value(item) for item in value])
        return b"A" + _PACK_I(len(items)) + items
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + struct.pack(">i", value)
        if -(2**63) <= value < 2**63:
            return b"l" + struct.pack(">q", value)
        raise ProtocolError(f"integer {value} does not fit the 64 bits an AMQP header allows")
    if isinstance(value, float):
        return _PACK_DOUBLE(b"d", value)
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"S" + struct.pack(">I", len(data)) + data
    if isinstance(value, (bytes, bytearray)):
        return b"x" + struct.pack(">I", len(value)) + bytes(value)
    if isinstance(value, Mapping):
        return b"F" + encode_table(value)
    if isinstance(value, (list, tuple)):
        items = b"".join([_encode_value(item) for item in value])
        return b"A" + _PACK_I(len(items)) + items
    raise ProtocolError(f"cannot send a {type(value).__name__} in an AMQP field table: {value!r}")


def _encode_key(key: str) -> bytes:
    name = key.encode("utf-8")
    if len(name) > 255:
        raise ProtocolError(f"header name {key[:40]!r}... is over AMQP's 255 byte limit")
    encoded = bytes((len(name),)) + name
    if len(_KEYS) < 4096:
        _KEYS[key] = encoded
    return encoded


# Per header name, the last immutable value encoded under it (compared by identity) and its
# encoded entry: most entries of a loop's messages (task name, origin, flags) repeat.
_LAST_ENTRY: dict[str, tuple[Any, bytes]] = {}
_SCALARS = frozenset((str, type(None), bool, int, float))


def encode_table(table: Mapping[str, Any] | None) -> bytes:
    """``table`` as an AMQP field table (floats as doubles); ProtocolError for what won't go."""
    if not table:
        return b"\x00\x00\x00\x00"
    # A FrozenMapping's own items() goes through the Mapping mixins: a copy is cheaper.
    items = (table.to_dict() if isinstance(table, FrozenMapping) else table).items()
    keys = _KEYS
    last = _LAST_ENTRY
    last_get = last.get
    pack = _PACK_I
    parts: list[bytes] = []
    append = parts.append
    for key, value in items:
        held = last_get(key)
        if held is not None and held[0] is value:
            append(held[1])  # the same immutable object: the same bytes
            continue
        kind = type(value)
        if kind is str:
            data = value.encode("utf-8")
            entry = (keys.get(key) or _encode_key(key)) + b"S" + pack(len(data)) + data
        elif value is None:
            entry = (keys.get(key) or _encode_key(key)) + b"V"
        elif kind is bool:
            entry = (keys.get(key) or _encode_key(key)) + (b"t\x01" if value else b"t\x00")
        else:
            entry = (keys.get(key) or _encode_key(key)) + _encode_value(value)
            if kind not in _SCALARS:
                append(entry)  # a container may change between sends: never reused
                continue
        if held is not None or len(last) < 4096:
            last[key] = (value, entry)
        append(entry)
    body = b"".join(parts)
    return pack(len(body)) + body


def shortstr(text: str, what: str) -> bytes:
    """``text`` as a short string; ProtocolError naming ``what`` if over 255 bytes."""
    data = text.encode("utf-8")
    if len(data) > 255:
        raise ProtocolError(f"{what} is over AMQP's 255 byte limit: {text[:40]!r}...")
    return bytes((len(data),)) + data


_FRAME_HEAD = struct.Struct(">BHI").pack
_PUBLISH_HEAD = struct.Struct(">HHH").pack(60, 40, 0)
_CONTENT_HEAD = struct.Struct(">HHQH").pack
_PACK_Q = struct.Struct(">Q").pack
_END = b"\xce"


_METHOD_FRAMES: dict[tuple[int, str, str, bool], bytes] = {}


def _method_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The ``basic.publish`` frame for ``channel`` (remembered: a few targets take most)."""
    key = (channel, exchange, routing_key, mandatory)
    frame = _METHOD_FRAMES.get(key)
    if frame is None:
        method = (
            _PUBLISH_HEAD
            + shortstr(exchange, "exchange name")
            + shortstr(routing_key, "routing key")
            + (b"\x01" if mandatory else b"\x00")
        )
        frame = _FRAME_HEAD(1, channel, len(method)) + method + _END
        if len(_METHOD_FRAMES) >= 1024:
            _METHOD_FRAMES.clear()
        _METHOD_FRAMES[key] = frame
    return frame


def message_frames(
    channel: int,
    frame_max: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: bytes,
    flags: int,
    body: bytes,
) -> bytes:
    """basic.publish, its content header and body frames, as bytes for ``channel``."""
    size = len(body)
    method = _method_frame(channel, exchange, routing_key, mandatory)
    header = _HEADER_AND_BODY(2, channel, 14 + len(properties), 60, 0, size, flags)
    if not size:
        return b"".join((method, header, properties, _END))
    if size <= frame_max:  # one body frame: its head packed with the header's frame end
        body_head = _END_AND_BODY_HEAD(FRAME_END, 3, channel, size)
        return b"".join((method, header, properties, body_head, body, _END))
    parts = [method, header, properties, _END]
    for start in range(0, size, frame_max):
        chunk = body[start : start + frame_max]
        parts += (_FRAME_HEAD(3, channel, len(chunk)), chunk, _END)
    return b"".join(parts)


_HEADER_AND_BODY = struct.Struct(">BHIHHQH").pack
_END_AND_BODY_HEAD = struct.Struct(">BBHI").pack
# Short strings that repeat from message to message (content type and encoding).
_SHORT: dict[str, bytes] = {}


def _shortstr_cached(text: str, what: str) -> bytes:
    encoded = _SHORT.get(text)
    if encoded is None:
        encoded = shortstr(text, what)
        if len(_SHORT) < 256:
            _SHORT[text] = encoded
    return encoded


def encode_properties(
    envelope: Envelope, headers: Mapping[str, Any], message_id: str
) -> tuple[int, bytes]:
    """Basic properties in wire order with their presence flags (``expiration`` s -> ms)."""
    flags = 0x1000 | 0x0080  # delivery mode and message id: always
    parts = []
    if envelope.content_type:
        flags |= 0x8000
        parts.append(_shortstr_cached(envelope.content_type, "content_type"))
    if envelope.content_encoding:
        flags |= 0x4000
        parts.append(_shortstr_cached(envelope.content_encoding, "content_encoding"))
    if headers:
        flags |= 0x2000
        parts.append(encode_table(headers))
    parts.append(b"\x02" if envelope.delivery_mode == 2 else bytes((envelope.delivery_mode,)))
    if envelope.priority is not None:
        flags |= 0x0800
        parts.append(bytes((envelope.priority,)))
    if envelope.correlation_id is not None:
        flags |= 0x0400
        parts.append(shortstr(envelope.correlation_id, "correlation_id"))
    if envelope.reply_to is not None:
        flags |= 0x0200
        parts.append(_shortstr_cached(envelope.reply_to, "reply_to"))
    if envelope.expiration is not None:
        flags |= 0x0100
        parts.append(shortstr(str(round(envelope.expiration * 1000)), "expiration"))
    parts.append(shortstr(message_id, "message_id"))
    if envelope.timestamp is not None:
        flags |= 0x0040
        parts.append(_PACK_Q(int(envelope.timestamp)))
    if envelope.type is not None:
        flags |= 0x0020
        parts.append(shortstr(envelope.type, "type"))
    if envelope.app_id is not None:
        flags |= 0x0008
        parts.append(shortstr(envelope.app_id, "app_id"))
    return flags, b"".join(parts)


class _DoubleTables:
    """Marshals a pamqp method frame with conveyor's field-table encoding."""

    def marshal(self) -> bytes:
        frame: Any = self
        frame.validate()
        byte, offset, output, in_bits = 0, 0, [], False
        for argument in frame.__slots__:
            data_type = frame.amqp_type(argument)
            value = getattr(frame, argument, 0)
            if data_type == "bit":
                if not in_bits:
                    byte, offset, in_bits = 0, 0, True
                byte = pamqp_encode.bit(value, byte, offset)
                offset += 1
                if offset == 8:
                    output.append(pamqp_encode.octet(byte))
                    in_bits = False
                continue
            if in_bits:
                output.append(pamqp_encode.octet(byte))
                in_bits = False
            if data_type == "table":
                output.append(encode_table(cast(Mapping[str, Any] | None, value)))
            else:
                output.append(pamqp_encode.by_type(value, data_type))
        if in_bits:
            output.append(pamqp_encode.octet(byte))
        return b"".join(output)


class ExchangeDeclare(_DoubleTables, spec.Exchange.Declare):
    pass


class QueueDeclare(_DoubleTables, spec.Queue.Declare):
    pass


class QueueBind(_DoubleTables, spec.Queue.Bind):
    pass


class QueueUnbind(_DoubleTables, spec.Queue.Unbind):
    pass


class ExchangeBind(_DoubleTables, spec.Exchange.Bind):
    pass
