"""RabbitMQ behind the Transport interface: the broker's own exchanges, queues and bindings.

``amqp://user:pass@host:5672/vhost`` or ``amqps://...`` (TLS), over the lean AMQP 0-9-1 layer in
``amqp_protocol.py``. How it works:

- One connection. Declarations, deletes and stats go over a command channel; ``get`` over its own
  channel (so a failed declaration never requeues a message someone holds); publishes over one
  channel in confirm mode, pipelined: every publish waits for its own confirm, many are in flight.
  A channel that RabbitMQ closes after an error is reopened on next use.
- Every publish is sent ``mandatory``, so an unroutable message comes back: ``publish`` returns 0
  (or raises Unroutable when the caller asked for ``mandatory``) and 1 when RabbitMQ routed it.
  RabbitMQ does not say to how many queues, so 1 means "one or more".
- Each consumer has its own channel with ``basic.qos`` per consumer (works for quorum queues,
  which refuse global QoS); with several queues the transport also holds back deliveries so no
  more than ``prefetch`` are handed out unsettled. Acks are coalesced (up to 2 ms, or a quarter
  of the prefetch) into one ``multiple`` ack for the settled prefix plus single acks for the
  rest. Direct reply-to addresses are published without ``mandatory``: RabbitMQ returns such a
  message even when it delivered it.
- Delayed delivery uses no plugin and no consumer: a chain of delay levels, level n being a
  headers exchange ``conveyor.delay.NN`` and a queue of the same name whose queue-wide TTL is
  2**n ms. A message carries one header per bit of its delay; level n sends it through its queue
  when the bit is set and straight on to level n-1 when it is not, and each queue dead-letters to
  the next lower level. Every message in a level queue has the same TTL, so the queue expires
  strictly from its head: no head-of-line blocking, which per-message TTL would cause. After
  level 0 the exchange ``conveyor.delay.due`` hands the message to its target exchange (an
  exchange-to-exchange binding) or, for the default exchange, to its queue, with the original
  routing key. The delay headers and the delay queues' ``x-death`` entries are removed when the
  message is consumed. A delayed message's own ``expiration`` travels in a header and is put
  back on the envelope; RabbitMQ does not enforce it once the message is due.
- The connection is supervised: heartbeats detect a dead peer; when the connection is lost the
  transport reconnects with exponential backoff and jitter, declares again every exchange, queue
  and binding it declared, and resubscribes every consumer. Deliveries of the lost connection are
  dropped locally (RabbitMQ requeues them) and settling them is a no-op. Other calls wait for the
  connection, up to ``reconnect_timeout`` seconds, and retry.

Options (``broker_transport_options`` or URL query): ``heartbeat`` (s, 15), ``connect_timeout``
(s, 10), ``reconnect_timeout`` (s, 60: how long a call waits for a lost connection),
``reconnect_max_delay`` (s, 5), ``confirm_timeout`` (s, 60), ``client_name``, and for TLS
``ssl_context`` or ``cafile``/``certfile``/``keyfile``/``verify``/``server_hostname``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import math
import random
import re
import ssl
import struct
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Self, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from pamqp import commands as spec
from pamqp import encode as pamqp_encode

from conveyor.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    TopologyError,
    TransportError,
    Unroutable,
)
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import (
    Exchange,
    ExchangeType,
    FrozenMapping,
    Queue,
    check_routing_key,
)
from conveyor.transports.amqp_protocol import (
    AMQPError,
    Channel,
    ChannelClosed,
    Connection,
    ConnectionClosed,
    Message,
    Nacked,
    ThreadConfirm,
    _retrieve,
)
from conveyor.transports.base import (
    Capabilities,
    Consumer,
    Delivery,
    Outgoing,
    Published,
    QueueStats,
    Transport,
    Wakeup,
)

__all__ = ["DIRECT_REPLY_TO", "AMQPTransport"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
DELAY_PREFIX = "conveyor.delay"
DELAY_LEVELS = 32  # 2**32 ms: the longest delay is about 49.7 days
_DELAY_HEADER = "conveyor-delay-"
_DELAY_TARGET = "conveyor-delay-to"
_DELAY_EXPIRATION = "conveyor-delay-expiration"
_TAG_BITS = 48
_TAG_MASK = (1 << _TAG_BITS) - 1
_RECONNECT_BASE_DELAY = 0.2
_ACK_DELAY = 0.002
_NO_EXCHANGE = re.compile(r"no exchange '(.*)' in vhost")
# Set while the supervisor restores topology on a new connection, which is not "ready" yet.
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("_RESTORING", default=False)

_OPTION_DEFAULTS: dict[str, Any] = {
    "heartbeat": 15,
    "connect_timeout": 10.0,
    "reconnect_timeout": 60.0,
    "reconnect_max_delay": 5.0,
    "confirm_timeout": 60.0,
    "client_name": None,
    "ssl_context": None,
    "cafile": None,
    "certfile": None,
    "keyfile": None,
    "verify": True,
    "server_hostname": None,
}


# Field tables. pamqp encodes floats as 32-bit; headers must come back as they went, so
# conveyor encodes tables itself (doubles for floats) wherever it sends one, declarations too.


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
        return b"F" + _encode_table(value)
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


def _encode_table(table: Mapping[str, Any] | None) -> bytes:
    if not table:
        return b"\x00\x00\x00\x00"
    # A FrozenMapping's own items() goes through the Mapping mixins: a copy is cheaper.
    items = (table.to_dict() if isinstance(table, FrozenMapping) else table).items()
    keys = _KEYS
    pack = _PACK_I
    parts: list[bytes] = []
    append = parts.append
    for key, value in items:
        append(keys.get(key) or _encode_key(key))
        kind = type(value)
        if kind is str:
            data = value.encode("utf-8")
            append(b"S" + pack(len(data)) + data)
        elif value is None:
            append(b"V")
        elif kind is bool:
            append(b"t\x01" if value else b"t\x00")
        else:
            append(_encode_value(value))
    body = b"".join(parts)
    return pack(len(body)) + body


def _short(text: str, what: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 255:
        raise ProtocolError(f"{what} is over AMQP's 255 byte limit: {text[:40]!r}...")
    return bytes((len(data),)) + data


_FRAME_HEAD = struct.Struct(">BHI").pack
_PUBLISH_HEAD = struct.Struct(">HHH").pack(60, 40, 0)
_CONTENT_HEAD = struct.Struct(">HHQH").pack
_PACK_Q = struct.Struct(">Q").pack
_FRAME_END = b"\xce"


def _message_frames(
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
    method = (
        _PUBLISH_HEAD
        + _short(exchange, "exchange name")
        + _short(routing_key, "routing key")
        + (b"\x01" if mandatory else b"\x00")
    )
    header = _CONTENT_HEAD(60, 0, len(body), flags) + properties
    parts = [
        _FRAME_HEAD(1, channel, len(method)),
        method,
        _FRAME_END,
        _FRAME_HEAD(2, channel, len(header)),
        header,
        _FRAME_END,
    ]
    for start in range(0, len(body), frame_max):
        chunk = body[start : start + frame_max]
        parts += (_FRAME_HEAD(3, channel, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)


def _encode_properties(
    envelope: Envelope, headers: Mapping[str, Any], message_id: str
) -> tuple[int, bytes]:
    """Basic properties in wire order with their presence flags (``expiration`` s -> ms)."""
    flags = 0
    parts = []
    if envelope.content_type:
        flags |= 0x8000
        parts.append(_short(envelope.content_type, "content_type"))
    if envelope.content_encoding:
        flags |= 0x4000
        parts.append(_short(envelope.content_encoding, "content_encoding"))
    if headers:
        flags |= 0x2000
        parts.append(_encode_table(headers))
    flags |= 0x1000
    parts.append(bytes((envelope.delivery_mode,)))
    if envelope.priority is not None:
        flags |= 0x0800
        parts.append(bytes((envelope.priority,)))
    if envelope.correlation_id is not None:
        flags |= 0x0400
        parts.append(_short(envelope.correlation_id, "correlation_id"))
    if envelope.reply_to is not None:
        flags |= 0x0200
        parts.append(_short(envelope.reply_to, "reply_to"))
    if envelope.expiration is not None:
        flags |= 0x0100
        parts.append(_short(str(round(envelope.expiration * 1000)), "expiration"))
    flags |= 0x0080
    parts.append(_short(message_id, "message_id"))
    if envelope.timestamp is not None:
        flags |= 0x0040
        parts.append(_PACK_Q(int(envelope.timestamp)))
    if envelope.type is not None:
        flags |= 0x0020
        parts.append(_short(envelope.type, "type"))
    if envelope.app_id is not None:
        flags |= 0x0008
        parts.append(_short(envelope.app_id, "app_id"))
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
                output.append(_encode_table(cast(Mapping[str, Any] | None, value)))
            else:
                output.append(pamqp_encode.by_type(value, data_type))
        if in_bits:
            output.append(pamqp_encode.octet(byte))
        return b"".join(output)


class _ExchangeDeclare(_DoubleTables, spec.Exchange.Declare):
    pass


class _QueueDeclare(_DoubleTables, spec.Queue.Declare):
    pass


class _QueueBind(_DoubleTables, spec.Queue.Bind):
    pass


class _QueueUnbind(_DoubleTables, spec.Queue.Unbind):
    pass


class _ExchangeBind(_DoubleTables, spec.Exchange.Bind):
    pass


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (which JSON cannot hold) replaced by None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_delay_queue(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(DELAY_PREFIX + ".")


def _strip_delay(headers: dict[str, Any]) -> dict[str, Any]:
    """Remove the delay chain's traces: its headers and the delay queues' ``x-death`` entries."""
    cleaned = {k: v for k, v in headers.items() if not k.startswith(_DELAY_HEADER)}
    deaths = cleaned.get("x-death")
    if isinstance(deaths, list) and any(
        isinstance(d, dict) and _is_delay_queue(d.get("queue")) for d in deaths
    ):
        kept = [d for d in deaths if not (isinstance(d, dict) and _is_delay_queue(d.get("queue")))]
        if kept:
            cleaned["x-death"] = kept
        else:
            del cleaned["x-death"]
        for edge, entry in (
            ("x-first-death", kept[-1] if kept else None),
            ("x-last-death", kept[0] if kept else None),
        ):
            if not _is_delay_queue(cleaned.get(f"{edge}-queue")):
                continue
            for field in ("queue", "reason", "exchange"):
                cleaned.pop(f"{edge}-{field}", None)
                if entry is not None and field in entry:
                    cleaned[f"{edge}-{field}"] = entry[field]
    return cleaned


def _envelope(message: Message) -> tuple[Envelope, str | None]:
    """The envelope of a received message, and the exchange a delayed message was sent to."""
    props = message.properties
    headers: dict[str, Any] = props.headers or {}
    expiration: float | None = None
    if props.expiration:
        with contextlib.suppress(ValueError):
            expiration = int(props.expiration) / 1000
    delayed_to: str | None = None
    if headers and (_DELAY_TARGET in headers or "x-death" in headers):
        target = headers.get(_DELAY_TARGET)
        if isinstance(target, str):
            kind, _, name = target.partition(":")
            delayed_to = name if kind == "exchange" else ""
        delayed_expiration = headers.get(_DELAY_EXPIRATION)
        if isinstance(delayed_expiration, (int, float)) and expiration is None:
            expiration = delayed_expiration / 1000
        headers = _strip_delay(headers)
    priority = props.priority
    fields = dict(
        body=message.body,
        headers=headers,
        content_type=(
            props.content_type if props.content_type is not None else "application/octet-stream"
        ),
        content_encoding=(
            props.content_encoding
            if props.content_encoding is not None
            else ("" if props.content_type is not None else "binary")
        ),
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        priority=priority if isinstance(priority, int) and 0 <= priority <= 255 else None,
        expiration=expiration,
        message_id=props.message_id,
        timestamp=float(props.timestamp) if props.timestamp is not None else None,
        type=props.type,
        app_id=props.app_id,
        delivery_mode=2 if props.delivery_mode == 2 else 1,
    )
    try:
        return Envelope(**fields), delayed_to  # type: ignore[arg-type]
    except ProtocolError:
        fields["headers"] = _finite(headers)
        return Envelope(**fields), delayed_to  # type: ignore[arg-type]


def _nacked(exchange: str) -> TransportError:
    return TransportError(
        f"RabbitMQ refused the message for exchange {exchange!r} (basic.nack): a queue may be "
        "full with x-overflow reject-publish, or the broker is out of resources"
    )


def _unconfirmed(timeout: float) -> TransportError:
    return TransportError(
        f"RabbitMQ did not confirm a message within {timeout:g} s; it may be blocked (low "
        "memory or disk): check `rabbitmqctl status`"
    )


def _unroutable(exchange: str, routing_key: str) -> Unroutable:
    where = f"exchange {exchange!r}" if exchange else "the default exchange"
    return Unroutable(
        f"no queue took the message published to {where} with routing key {routing_key!r}: "
        "bind a queue that matches it, or give the exchange an alternate-exchange",
        exchange=exchange,
        routing_key=routing_key,
    )


class _Written(Published):
    """A message the broker does not store, written: done at once."""

    timeout = 0.0

    @property
    def done(self) -> bool:
        return True

    def result(self) -> int:
        return 1

    def expire(self) -> BaseException:
        return AssertionError("a written reply has nothing to wait for")


_WRITTEN = _Written()


class _ThreadPublished(Published):
    """A thread's publish on the ``publish`` channel, waiting for RabbitMQ's confirm."""

    def __init__(
        self,
        confirm: ThreadConfirm,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        timeout: float,
    ) -> None:
        self._confirm = confirm
        self._exchange = exchange
        self._routing_key = routing_key
        self._mandatory = mandatory
        self.timeout = timeout

    @property
    def done(self) -> bool:
        return self._confirm.settled

    def result(self) -> int | None:
        confirm = self._confirm
        if confirm.error is not None:
            if isinstance(confirm.error, Nacked):
                raise _nacked(self._exchange) from confirm.error
            return None  # channel or connection gone: publish again on the loop
        if confirm.value:
            return 1
        if not self._mandatory:
            return 0
        raise _unroutable(self._exchange, self._routing_key)

    def expire(self) -> BaseException:
        self._confirm.forget()
        return _unconfirmed(self.timeout)


def _reply_text(exc: BaseException) -> str:
    return exc.text if isinstance(exc, AMQPError) else str(exc)


def _is_channel_error(exc: BaseException) -> bool:
    """True for RabbitMQ's channel errors about what was asked (not a lost connection)."""
    return isinstance(exc, ChannelClosed) and exc.code in (403, 404, 405, 406)


def _map_channel_error(exc: BaseException, what: str) -> TransportError | TopologyError:
    """The conveyor error for a channel error RabbitMQ raised while doing ``what``."""
    text = _reply_text(exc)
    code = exc.code if isinstance(exc, ChannelClosed) else 0
    if code == 404:
        return NotFound(f"{what}: {text}")
    if code == 405:
        return PreconditionFailed(
            f"{what}: {text}; an exclusive queue belongs to the connection that declared it"
        )
    if code == 406:
        if "invalid arg" in text or "invalid property" in text:
            return TopologyError(
                f"{what}: RabbitMQ refuses the definition: {text} (x-delivery-limit needs "
                "'x-queue-type': 'quorum', and quorum queues must be durable, not exclusive "
                "and not auto-delete)"
            )
        return PreconditionFailed(f"{what}: {text}")
    if code == 403:
        return TransportError(f"{what}: RabbitMQ refused: {text}")
    return TransportError(f"{what}: {text}")


_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for .*?received (.*?) but current is (.*)$")
_TYPED_VALUE = re.compile(r"the value '(.*)' of type '(\w+)'$")


def _printed_value(text: str) -> tuple[bool, Any]:
    """``(present, value)`` for a value as RabbitMQ prints it in an "inequivalent arg" error."""
    text = text.strip()
    if text == "none":
        return False, None
    typed = _TYPED_VALUE.match(text)
    if typed:
        raw, kind = typed.groups()
    elif len(text) >= 2 and text[0] == text[-1] == "'":
        raw, kind = text[1:-1], ""
    else:
        raise ValueError(text)
    if kind in ("longstr", "shortstr"):
        return True, raw
    if kind == "bool" or (not kind and raw in ("true", "false")):
        return True, raw == "true"
    for parse in (int, float):
        with contextlib.suppress(ValueError):
            return True, parse(raw)
    if kind:
        raise ValueError(text)
    return True, raw


def _describe(definition: tuple[dict[str, Any], dict[str, Any]] | None) -> str:
    if definition is None:
        return "a definition it does not fully report (see its message)"
    flags, arguments = definition
    return ", ".join(f"{k}={v!r}" for k, v in flags.items()) + f", arguments={arguments}"


def _is_lost(exc: BaseException) -> bool:
    """True for errors that mean the channel or connection went away under the call."""
    return isinstance(
        exc, (ConnectionClosed, ChannelClosed, OSError, asyncio.CancelledError)
    ) and not _is_channel_error(exc)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(frozen=True, slots=True)
class _Address:
    host: str
    port: int
    vhost: str
    user: str
    password: str
    display: str
    server_hostname: str | None


@dataclass(frozen=True, slots=True)
class _Options:
    heartbeat: int
    connect_timeout: float
    reconnect_timeout: float
    reconnect_max_delay: float
    confirm_timeout: float
    client_name: str | None
    ssl_context: ssl.SSLContext | None


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"broker option {name}={value!r} must be true or false")


def _as_number(name: str, value: Any, *, minimum: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"broker option {name}={value!r} must be a number") from None
    if number < minimum or number != number:
        raise ConfigurationError(f"broker option {name}={value!r} must be at least {minimum}")
    return number


def _ssl_context(tls: bool, values: Mapping[str, Any]) -> ssl.SSLContext | None:
    context = values["ssl_context"]
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise ConfigurationError("broker option ssl_context must be an ssl.SSLContext")
        return context
    if not tls:
        return None
    try:
        context = ssl.create_default_context(cafile=values["cafile"])
        if values["certfile"]:
            context.load_cert_chain(values["certfile"], values["keyfile"])
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS files for amqps://: {exc}") from exc
    if not _as_bool("verify", values["verify"]):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Channel:
    """One channel, with the deliveries it holds unsettled and the settles not yet sent.

    Settles are coalesced: acks wait up to ``_ACK_DELAY`` seconds, or until ``batch`` of them are
    pending (nacks: one event-loop turn), then the settled prefix of the unsettled deliveries
    goes as one ``multiple`` ack and the rest one by one. Fewer, larger writes matter: every
    socket write wakes the broker.
    """

    __slots__ = (
        "acks",
        "batch",
        "close_when_idle",
        "flushing",
        "nacks",
        "owner",
        "paused",
        "raw",
        "serial",
        "timer",
        "unsettled",
    )

    def __init__(self, serial: int, raw: Channel, owner: _AMQPConsumer | None) -> None:
        self.serial = serial
        self.raw = raw
        self.owner = owner
        self.unsettled: dict[int, str] = {}
        self.acks: set[int] = set()
        self.nacks: list[tuple[int, bool]] = []
        self.flushing = False
        self.close_when_idle = False
        self.paused = False
        self.batch = 1
        self.timer: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return not self.raw.is_closed

    def hold(self, delivery_tag: int, queue: str) -> int:
        self.unsettled[delivery_tag] = queue
        return (self.serial << _TAG_BITS) | delivery_tag

    def settle(self, delivery_tag: int, requeue: bool | None) -> bool:
        """Queue an ack (``requeue`` None) or a nack; False if the delivery is not held here."""
        if delivery_tag not in self.unsettled or delivery_tag in self.acks:
            return False
        if requeue is None:
            self.acks.add(delivery_tag)
        else:
            del self.unsettled[delivery_tag]
            self.nacks.append((delivery_tag, requeue))
        if self.flushing:
            return True
        loop = asyncio.get_running_loop()
        if requeue is None and len(self.acks) < self.batch:
            if self.timer is None:
                self.timer = loop.call_later(_ACK_DELAY, self._flush)
        else:
            self.flushing = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            loop.call_soon(self._flush)
        return True

    def send_pending(self) -> None:
        """Write the queued acks and nacks now, ahead of anything sent on this channel later."""
        raw = self.raw
        if raw.is_closed:
            self.acks.clear()
            self.nacks.clear()
            return
        for tag, requeue in self.nacks:
            raw.nack(tag, requeue=requeue)
        self.nacks.clear()
        acks = self.acks
        if not acks:
            return
        last, count = 0, 0
        for tag in self.unsettled:
            if tag not in acks:
                break
            last, count = tag, count + 1
        for _ in range(count):
            tag = next(iter(self.unsettled))
            del self.unsettled[tag]
            acks.discard(tag)
        if count:
            raw.ack(last, multiple=count > 1)
        for tag in sorted(acks):
            del self.unsettled[tag]
            raw.ack(tag)
        acks.clear()

    def _flush(self) -> None:
        self.flushing = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.paused:
            return
        self.send_pending()
        if self.close_when_idle and not self.unsettled and self.alive:
            asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.raw.close()


def _delivery_count(message: Message) -> int:
    """Quorum queues count returns in ``x-delivery-count``; classic ones only flag redelivery."""
    headers = message.properties.headers
    count = headers.get("x-delivery-count") if headers else None
    if isinstance(count, int) and not isinstance(count, bool):
        return count + 1
    return 2 if message.redelivered else 1


class _AMQPConsumer(Consumer):
    """A subscription on its own channel; resubscribed by the transport after a reconnect."""

    def __init__(
        self,
        transport: AMQPTransport,
        queues: tuple[str, ...],
        *,
        prefetch: int,
        no_ack: bool,
        tag: str,
    ) -> None:
        self.tag = tag
        self.queues = queues
        self._transport = transport
        self._active = list(queues)
        self._prefetch = prefetch
        self._no_ack = no_ack
        self._direct_reply = queues == (DIRECT_REPLY_TO,)
        self._channel: _Channel | None = None
        self._buffer: deque[Delivery] = deque()
        self._handed: set[int] = set()
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._cancelled = False
        self._finished = False

    async def subscribe(self) -> None:
        """Open a channel and start consuming every active queue (NotFound if one is missing)."""
        transport = self._transport
        if self._direct_reply:
            channel = await transport._shared_channel("publish")
        else:
            raw = await transport._open_raw_channel(confirms=False)
            channel = transport._register(raw, owner=self)
            channel.batch = max(1, self._prefetch // 4) if self._prefetch else 64
        raw = channel.raw
        self._channel = channel
        raw.closed.add_done_callback(lambda _: self._on_channel_closed(channel))
        try:
            if self._prefetch and not self._no_ack:
                await raw.qos(self._prefetch)
            raw.on_cancel = self._on_broker_cancel
            for index, queue in enumerate(self._active):
                await raw.consume(
                    queue,
                    self._consumer_tag(index),
                    self._callback(channel, queue),
                    no_ack=self._no_ack,
                )
        except BaseException:
            if not self._direct_reply:
                await channel.close()
            self._channel = None
            raise

    def _consumer_tag(self, index: int) -> str:
        return self.tag if index == 0 else f"{self.tag}.{index}"

    def _callback(self, channel: _Channel, queue: str) -> Callable[[Message], None]:
        def on_message(message: Message) -> None:
            self._on_message(channel, queue, message)

        return on_message

    def _on_message(self, channel: _Channel, queue: str, message: Message) -> None:
        delivery_tag = message.delivery_tag
        if self._cancelled or channel is not self._channel:
            if not self._no_ack and channel.alive:
                channel.hold(delivery_tag, queue)
                channel.settle(delivery_tag, True)
            return
        tag = (
            (channel.serial << _TAG_BITS) | delivery_tag
            if self._no_ack
            else channel.hold(delivery_tag, queue)
        )
        delivery_count = _delivery_count(message)
        try:
            envelope, delayed_to = _envelope(message)
        except ConveyorError:
            log.exception("dropping an undecodable message from queue %r (rejected)", queue)
            if not self._no_ack:
                channel.settle(delivery_tag, False)
            return
        self._buffer.append(
            Delivery(
                envelope=envelope,
                queue=queue,
                exchange=message.exchange if delayed_to is None else delayed_to,
                routing_key=message.routing_key,
                redelivered=message.redelivered,
                delivery_count=delivery_count,
                tag=tag,
                consumer_tag=self.tag,
            )
        )
        self._wakeup.set()

    def _on_broker_cancel(self, tag: str) -> None:
        for index, queue in enumerate(self._active):
            if self._consumer_tag(index) == tag:
                log.warning("RabbitMQ cancelled consumer %r of queue %r", self.tag, queue)
                self._active[index] = ""
        if not any(self._active):
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        self._wakeup.set()

    def settled(self, tag: int) -> None:
        self._handed.discard(tag)
        self._wakeup.set()

    def channel_lost(self) -> None:
        """Forget everything the dead channel delivered: RabbitMQ requeues it."""
        self._channel = None
        self._handed.clear()
        self._buffer.clear()
        self._wakeup.set()

    def _on_channel_closed(self, channel: _Channel) -> None:
        if channel is not self._channel:
            return
        self.channel_lost()
        transport = self._transport
        if channel.raw.connection.closed.done():
            return  # the connection went: the supervisor resubscribes once reconnected
        if not (self._cancelled or self._finished or transport._closed):
            # A channel error closed it: subscribe again on a new channel.
            transport._spawn(self.resubscribe())

    async def resubscribe(self) -> None:
        """Subscribe again unless already subscribed; a queue gone for good ends the consumer."""
        async with self._lock:
            if self._channel is not None and self._channel.alive:
                return
            self._active = [q for q in self._active if q]
            if not self._active or self._cancelled:
                self._finish()
                return
            try:
                await self.subscribe()
            except BrokerUnavailable:
                raise
            except ConveyorError as exc:
                log.error("consumer %r stops: %s", self.tag, exc)
                self._finish()
            except Exception as exc:
                if _is_channel_error(exc):
                    log.error("consumer %r stops: %s", self.tag, _reply_text(exc))
                    self._finish()
                else:
                    raise

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            if self._buffer and (
                self._no_ack or not self._prefetch or len(self._handed) < self._prefetch
            ):
                delivery = self._buffer.popleft()
                if not self._no_ack:
                    self._handed.add(cast(int, delivery.tag))
                yield delivery
                continue
            if self._finished:
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._transport._consumers.pop(self.tag, None)
        channel = self._channel
        if channel is not None and channel.alive:
            # Requeues wait until RabbitMQ stops delivering here; else it hands them straight back.
            channel.paused = True
            try:
                for index, queue in enumerate(self._active):
                    if queue:
                        with contextlib.suppress(Exception):
                            await channel.raw.cancel(self._consumer_tag(index), timeout=10)
            finally:
                channel.paused = False
            requeued = False
            if not self._no_ack:
                for delivery in self._buffer:
                    requeued |= channel.settle(cast(int, delivery.tag) & _TAG_MASK, True)
            channel.send_pending()
            if not self._direct_reply:
                channel.close_when_idle = True
                if not channel.unsettled:
                    await channel.close()
                elif requeued:
                    # A round trip on this channel: RabbitMQ has requeued them when it returns.
                    with contextlib.suppress(Exception):
                        await channel.raw.rpc(
                            spec.Basic.Qos(prefetch_count=self._prefetch), timeout=10
                        )
        self._buffer.clear()
        self._finish()


class AMQPTransport(Transport):
    """RabbitMQ, natively: see the module docstring for how each guarantee is met."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        native_exchanges=True,
        max_priority=255,
        delayed_delivery=True,
        direct_reply_to=True,
        shared=True,
    )

    def __init__(self, url: str, address: _Address, options: _Options) -> None:
        self.url = url
        self._address = address
        self._display = address.display
        self._options = options
        self._connection: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it connected on
        self._ready = asyncio.Event()
        self._opened = False
        self._closed = False
        self._last_error: BaseException | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._serials = itertools.count(1)
        self._channels: dict[int, _Channel] = {}
        self._shared: dict[str, _Channel] = {}
        self._shared_locks: dict[str, asyncio.Lock] = {}
        self._consumers: dict[str, _AMQPConsumer] = {}
        self._topology: dict[tuple[Any, ...], Callable[[], Awaitable[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._known_exchanges: set[str] = set()
        self._delay_levels = 0
        self._delay_targets: set[str] = set()
        self._delay_lock = asyncio.Lock()
        # Message ids for publishes that carry none (returns are matched by id): unique, cheap.
        self._message_ids_prefix = f"{uuid.uuid4().hex}."
        self._message_ids = itertools.count(1)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        """Parse ``amqp[s]://user:pass@host:port/vhost?option=value``; ConfigurationError if bad."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"{url!r} is not an amqp:// or amqps:// URL")
        try:
            port = parts.port or (5671 if scheme == "amqps" else 5672)
        except ValueError:
            raise ConfigurationError(f"broker URL {url!r} has an invalid port") from None
        host = parts.hostname or "localhost"
        user = unquote(parts.username) if parts.username else "guest"
        password = unquote(parts.password) if parts.password else "guest"
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        vhost = unquote(path) or "/"
        values = dict(_OPTION_DEFAULTS)
        supplied = {**dict(parse_qsl(parts.query)), **dict(options or {})}
        for name, value in supplied.items():
            if name not in values:
                known = ", ".join(sorted(_OPTION_DEFAULTS))
                raise ConfigurationError(
                    f"unknown RabbitMQ transport option {name!r}: use one of {known}"
                )
            values[name] = value
        opts = _Options(
            heartbeat=int(_as_number("heartbeat", values["heartbeat"])),
            connect_timeout=_as_number("connect_timeout", values["connect_timeout"], minimum=0.1),
            reconnect_timeout=_as_number("reconnect_timeout", values["reconnect_timeout"]),
            reconnect_max_delay=_as_number(
                "reconnect_max_delay", values["reconnect_max_delay"], minimum=0.01
            ),
            confirm_timeout=_as_number("confirm_timeout", values["confirm_timeout"], minimum=0.1),
            client_name=values["client_name"],
            ssl_context=_ssl_context(scheme == "amqps", values),
        )
        netloc_host = f"[{host}]" if ":" in host else host
        display = f"{scheme}://{user}@{netloc_host}:{port}/{vhost if vhost != '/' else ''}"
        server_hostname = values["server_hostname"]
        address = _Address(
            host, port, vhost, user, password, display, str(server_hostname or host) or None
        )
        return cls(url, address, opts)

    # connection supervision

    async def _open_connection(self) -> Connection:
        address = self._address
        async with asyncio.timeout(self._options.connect_timeout):
            return await Connection.open(
                address.host,
                address.port,
                vhost=address.vhost,
                user=address.user,
                password=address.password,
                heartbeat=self._options.heartbeat,
                ssl_context=self._options.ssl_context,
                server_hostname=address.server_hostname,
                client_name=self._options.client_name,
            )

    def _unavailable(self, exc: BaseException | None) -> BrokerUnavailable:
        if isinstance(exc, ConnectionClosed) and exc.code == 403:
            return BrokerUnavailable(
                f"RabbitMQ at {self._display} refused the login ({_reply_text(exc)}): check "
                "the user, password and virtual host in the broker URL"
            )
        reason = f": {exc!r}" if exc is not None else ""
        return BrokerUnavailable(
            f"cannot reach RabbitMQ at {self._display}{reason}; check that it is running and "
            "that the URL is right"
        )

    async def connect(self) -> None:
        """Open the connection (idempotent); BrokerUnavailable if RabbitMQ can't be reached."""
        if self._closed:
            raise BrokerUnavailable("this transport was closed; open a new one")
        if self._opened:
            return
        try:
            self._connection = await self._open_connection()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._unavailable(exc) from exc
        self._opened = True
        self._ready.set()
        self._loop = asyncio.get_running_loop()
        self._supervisor = self._loop.create_task(self._supervise())

    async def _supervise(self) -> None:
        while not self._closed:
            connection = self._connection
            assert connection is not None
            try:
                await asyncio.shield(connection.closed)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
            except Exception as exc:
                self._last_error = exc
            if self._closed:
                return
            log.warning(
                "lost the connection to RabbitMQ at %s (%r); reconnecting",
                self._display,
                self._last_error,
            )
            self._connection_lost()
            await self._reconnect()

    def _connection_lost(self) -> None:
        self._ready.clear()
        for task in list(self._tasks):
            # Resubscribing after a channel error: the supervisor resubscribes every consumer
            # now, and one still waiting would hold its consumer's lock against it.
            task.cancel()
        self._channels.clear()
        self._shared.clear()
        self._known_exchanges.clear()
        for consumer in list(self._consumers.values()):
            consumer.channel_lost()

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closed:
            delay = min(self._options.reconnect_max_delay, _RECONNECT_BASE_DELAY * 2**attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            attempt += 1
            try:
                self._connection = await self._open_connection()
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                continue
            except Exception as exc:
                self._last_error = exc
                log.info("RabbitMQ at %s is still unreachable: %r", self._display, exc)
                continue
            token = _RESTORING.set(True)
            try:
                await self._restore()
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                continue
            except Exception as exc:
                self._last_error = exc
                log.warning("could not restore the topology on RabbitMQ: %r", exc)
                if self._connection.closed.done():
                    continue
            finally:
                _RESTORING.reset(token)
            log.warning("reconnected to RabbitMQ at %s", self._display)
            self._ready.set()
            return

    async def _restore(self) -> None:
        """Declare again what this transport declared, then resubscribe every consumer."""
        for key, declare in list(self._topology.items()):
            try:
                await declare()
            except BrokerUnavailable:
                raise
            except ConveyorError as exc:
                log.error("could not declare %s again after reconnecting: %s", key, exc)
        for consumer in list(self._consumers.values()):
            await consumer.resubscribe()

    async def close(self) -> None:
        """Cancel every consumer, send pending acks, and close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        for task in list(self._tasks):
            task.cancel()
        for consumer in list(self._consumers.values()):
            consumer._cancelled = True
            consumer._finish()
        self._consumers.clear()
        for channel in list(self._channels.values()):
            channel.send_pending()  # written before connection.close, which RabbitMQ reads after
        self._channels.clear()
        self._shared.clear()
        connection, self._connection = self._connection, None
        self._ready.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _connected(self, deadline: float) -> Connection:
        if self._closed:
            raise BrokerUnavailable("this transport is closed; open a new one")
        if not self._opened:
            raise BrokerUnavailable("the transport is not connected: call connect() first")
        if _RESTORING.get():
            if self._connection is None or self._connection.closed.done():
                raise self._unavailable(self._last_error)
            return self._connection
        while True:
            connection = self._connection
            if connection is not None and connection.closed.done():
                # Lost, and the supervisor has not run yet (it sets this again once
                # reconnected): wait for it rather than retry on the dead connection.
                self._ready.clear()
            if self._ready.is_set():
                assert connection is not None
                return connection
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    await self._ready.wait()
            except TimeoutError:
                raise BrokerUnavailable(
                    f"RabbitMQ at {self._display} has been unreachable for "
                    f"{self._options.reconnect_timeout:g} s (last error: {self._last_error!r}); "
                    "check that it is running"
                ) from None
            if self._closed:
                raise BrokerUnavailable("this transport is closed; open a new one")

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coroutine
            except Exception:
                log.warning("background work on RabbitMQ failed", exc_info=True)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._options.reconnect_timeout

    def _register(self, raw: Channel, owner: _AMQPConsumer | None) -> _Channel:
        channel = _Channel(next(self._serials), raw, owner)
        self._channels[channel.serial] = channel
        raw.closed.add_done_callback(lambda _: self._channels.pop(channel.serial, None))
        return channel

    async def _open_raw_channel(self, *, confirms: bool) -> Channel:
        connection = await self._connected(self._deadline())
        return await connection.channel(confirms=confirms)

    async def _shared_channel(self, kind: str, deadline: float | None = None) -> _Channel:
        """The open ``command``, ``get``, ``publish`` or ``reply`` channel, opened (again) if
        needed. Only ``publish`` is in confirm mode: ``reply`` carries replies to direct
        reply-to addresses, which RabbitMQ does not store (a confirm would say nothing)."""
        deadline = deadline or self._deadline()
        while True:
            channel = self._shared.get(kind)
            if channel is not None and channel.alive:
                return channel
            # Wait for the connection outside the lock: the supervisor needs channels to restore.
            connection = await self._connected(deadline)
            async with self._shared_locks.setdefault(kind, asyncio.Lock()):
                channel = self._shared.get(kind)
                if channel is not None and channel.alive:
                    return channel
                if connection is not self._connection or connection.closed.done():
                    continue
                raw = await connection.channel(confirms=kind == "publish")
                channel = self._register(raw, owner=None)
                self._shared[kind] = channel
                return channel

    async def _call(self, kind: str, what: str, operation: Callable[[Channel], Awaitable[T]]) -> T:
        """Run ``operation`` on a shared channel; retry after a lost connection, map errors."""
        deadline = self._deadline()
        while True:
            channel = await self._shared_channel(kind, deadline)
            try:
                return await operation(channel.raw)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
            except Exception as exc:
                if _is_channel_error(exc):
                    raise _map_channel_error(exc, what) from exc
                if not _is_lost(exc):
                    raise TransportError(f"{what}: {exc!r}") from exc
                self._last_error = exc
            if asyncio.get_running_loop().time() >= deadline:
                raise self._unavailable(self._last_error)
            await asyncio.sleep(0.01)

    # topology

    def _remember(self, key: tuple[Any, ...], declare: Callable[[], Awaitable[Any]]) -> None:
        self._topology[key] = declare

    async def declare_exchange(self, exchange: Exchange, *, passive: bool = False) -> None:
        """Declare ``exchange`` on RabbitMQ; PreconditionFailed names both definitions."""
        if exchange.is_default:
            return
        name = exchange.name
        passive = passive or name.startswith("amq.")
        arguments = dict(exchange.arguments)

        async def declare(raw: Channel) -> None:
            await raw.rpc(
                _ExchangeDeclare(
                    exchange=name,
                    exchange_type=exchange.type.value,
                    passive=passive,
                    durable=exchange.durable,
                    auto_delete=exchange.auto_delete,
                    arguments=arguments or None,
                )
            )

        try:
            await self._call("command", f"declaring exchange {name!r}", declare)
        except NotFound:
            raise NotFound(
                f"exchange {name!r} does not exist on RabbitMQ: declare it first"
            ) from None
        except PreconditionFailed as exc:
            ours = {
                "type": exchange.type.value,
                "durable": exchange.durable,
                "auto_delete": exchange.auto_delete,
            }

            def declare_with(
                flags: dict[str, Any], args: dict[str, Any]
            ) -> Callable[[Channel], Awaitable[Any]]:
                return lambda raw: raw.rpc(
                    _ExchangeDeclare(
                        exchange=name,
                        exchange_type=str(flags["type"]),
                        durable=bool(flags["durable"]),
                        auto_delete=bool(flags["auto_delete"]),
                        arguments=args or None,
                    )
                )

            theirs = await self._existing_definition(str(exc), ours, arguments, declare_with)
            raise PreconditionFailed(
                f"exchange {name!r} already exists on RabbitMQ with another definition. "
                f"RabbitMQ has {_describe(theirs)}; this declaration asks for "
                f"{_describe((ours, arguments))}. RabbitMQ said: {exc}. Delete the exchange "
                "(Transport.delete_exchange) so it is created again, or declare it with the "
                "definition it already has."
            ) from exc
        self._known_exchanges.add(name)
        if not passive:
            self._remember(("exchange", name), lambda: self._call("command", name, declare))

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete exchange ``name``; a missing one is not an error."""
        if not name:
            raise TopologyError("the default exchange cannot be deleted")
        await self._call(
            "command",
            f"deleting exchange {name!r}",
            lambda raw: raw.rpc(spec.Exchange.Delete(exchange=name, if_unused=if_unused)),
        )
        self._known_exchanges.discard(name)
        self._delay_targets.discard(f"exchange:{name}")
        self._topology.pop(("exchange", name), None)
        for key in [k for k in self._topology if k[0] == "binding" and k[2] == name]:
            del self._topology[key]

    async def declare_queue(self, queue: Queue, *, passive: bool = False) -> QueueStats:
        """Declare ``queue`` and its bindings on RabbitMQ and return its stats.

        PreconditionFailed (queue exists with other arguments) names the queue, both argument
        sets as far as RabbitMQ tells them, and the fix.
        """
        name = queue.name
        arguments = dict(queue.arguments)
        if not passive:
            for b in queue.all_bindings:
                if isinstance(b.exchange, Exchange):
                    await self.declare_exchange(b.exchange)

        async def declare(raw: Channel) -> spec.Queue.DeclareOk:
            ok: spec.Queue.DeclareOk = await raw.rpc(
                _QueueDeclare(
                    queue=name,
                    passive=passive,
                    durable=queue.durable,
                    exclusive=queue.exclusive,
                    auto_delete=queue.auto_delete,
                    arguments=arguments or None,
                )
            )
            return ok

        try:
            ok = await self._call("command", f"declaring queue {name!r}", declare)
        except NotFound:
            raise NotFound(f"queue {name!r} does not exist on RabbitMQ: declare it first") from None
        except PreconditionFailed as exc:
            if "inequivalent arg" not in str(exc):
                raise
            ours = {"durable": queue.durable, "auto_delete": queue.auto_delete}

            def declare_with(
                flags: dict[str, Any], args: dict[str, Any]
            ) -> Callable[[Channel], Awaitable[Any]]:
                return lambda raw: raw.rpc(
                    _QueueDeclare(
                        queue=name,
                        durable=bool(flags["durable"]),
                        exclusive=queue.exclusive,
                        auto_delete=bool(flags["auto_delete"]),
                        arguments=args or None,
                    )
                )

            theirs = await self._existing_definition(str(exc), ours, arguments, declare_with)
            raise PreconditionFailed(
                f"queue {name!r} already exists on RabbitMQ with other arguments or flags. "
                f"RabbitMQ has {_describe(theirs)}; this declaration asks for "
                f"{_describe((ours, arguments))}. RabbitMQ said: {exc}. Delete the queue "
                f"(`rabbitmqctl delete_queue {name}` or Transport.delete_queue; its messages "
                "go with it) so it is created again, or declare it with the arguments it "
                "already has."
            ) from exc
        actual = ok.queue or name
        if passive:
            return self._stats(actual, ok)
        self._remember(("queue", actual), lambda: self._call("command", actual, declare))
        for b in queue.all_bindings:
            if b.exchange_name == "" and b.routing_key == actual:
                continue  # every queue is bound to the default exchange by its name already
            await self.bind_queue(actual, b.exchange_name, b.routing_key, b.arguments)
        return self._stats(actual, ok)

    async def _existing_definition(
        self,
        error: str,
        flags: dict[str, Any],
        arguments: dict[str, Any],
        declare_with: Callable[
            [dict[str, Any], dict[str, Any]], Callable[[Channel], Awaitable[Any]]
        ],
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """What RabbitMQ already has, learnt from its "inequivalent arg" errors, or None.

        RabbitMQ names one differing value per error, with its current value; taking that value
        and declaring again finds the next, until the declaration matches and is a no-op.
        """
        flags, arguments = dict(flags), dict(arguments)
        for _ in range(16):
            found = _INEQUIVALENT.search(error)
            if found is None:
                return None
            key, _, current = found.groups()
            try:
                present, value = _printed_value(current)
            except ValueError:
                return None
            if key in flags:
                flags[key] = value
            elif present:
                arguments[key] = value
            else:
                arguments.pop(key, None)
            try:
                await self._call("command", "declaring", declare_with(flags, arguments))
            except PreconditionFailed as exc:
                error = str(exc)
                continue
            except ConveyorError:
                return None
            return flags, arguments
        return None

    def _unacked(self, queue: str) -> int:
        return sum(
            1
            for channel in self._channels.values()
            for tag, held in channel.unsettled.items()
            if held == queue and tag not in channel.acks
        )

    async def _send_pending(self) -> None:
        """Put every queued ack and nack on the wire before a call that should see them."""
        for channel in list(self._channels.values()):
            if channel.acks or channel.nacks:
                channel.send_pending()

    def _stats(self, name: str, ok: spec.Queue.DeclareOk) -> QueueStats:
        return QueueStats(
            name=name,
            ready=ok.message_count or 0,
            unacked=self._unacked(name),
            consumers=ok.consumer_count or 0,
        )

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete queue ``name`` with its messages; return how many went (0 if missing)."""
        await self._send_pending()
        ok = await self._call(
            "command",
            f"deleting queue {name!r}",
            lambda raw: raw.rpc(
                spec.Queue.Delete(queue=name, if_unused=if_unused, if_empty=if_empty)
            ),
        )
        self._topology.pop(("queue", name), None)
        self._delay_targets.discard(f"queue:{name}")
        for key in [k for k in self._topology if k[0] == "binding" and k[1] == name]:
            del self._topology[key]
        return ok.message_count or 0

    async def purge_queue(self, name: str) -> int:
        """Remove every ready message of ``name``; NotFound if it does not exist."""
        await self._send_pending()
        ok = await self._call(
            "command", f"purging queue {name!r}", lambda raw: raw.rpc(spec.Queue.Purge(queue=name))
        )
        return ok.message_count or 0

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Bind on RabbitMQ. Idempotent; NotFound if the queue or exchange does not exist."""
        check_routing_key(routing_key)
        if exchange == "":
            raise TopologyError(
                f"cannot bind queue {queue!r} to the default exchange: it routes to every queue "
                "by its name already; bind to a named exchange instead"
            )
        args = dict(arguments or {})

        async def bind(raw: Channel) -> None:
            await raw.rpc(
                _QueueBind(
                    queue=queue, exchange=exchange, routing_key=routing_key, arguments=args or None
                )
            )

        await self._call("command", f"binding queue {queue!r} to exchange {exchange!r}", bind)
        key = ("binding", queue, exchange, routing_key, FrozenMapping(args))
        self._remember(key, lambda: self._call("command", str(key), bind))

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Remove the binding; one that does not exist is not an error."""
        args = dict(arguments or {})

        async def unbind(raw: Channel) -> None:
            await raw.rpc(
                _QueueUnbind(
                    queue=queue, exchange=exchange, routing_key=routing_key, arguments=args or None
                )
            )

        with contextlib.suppress(NotFound):
            await self._call(
                "command", f"unbinding queue {queue!r} from exchange {exchange!r}", unbind
            )
        self._topology.pop(("binding", queue, exchange, routing_key, FrozenMapping(args)), None)

    async def queue_stats(self, name: str) -> QueueStats:
        """Ready and consumer counts from RabbitMQ; unacked counts this connection's deliveries.

        RabbitMQ reports unacknowledged messages only through its management API, which is
        often not enabled, so ``unacked`` counts the deliveries this transport holds.
        """

        async def passive(raw: Channel) -> spec.Queue.DeclareOk:
            result: spec.Queue.DeclareOk = await raw.rpc(
                spec.Queue.Declare(queue=name, passive=True)
            )
            return result

        await self._send_pending()
        try:
            ok = await self._call("command", f"reading queue {name!r}", passive)
        except NotFound:
            raise NotFound(f"queue {name!r} does not exist on RabbitMQ") from None
        return self._stats(name, ok)

    # publishing

    async def _ensure_exchange(self, name: str) -> None:
        if not name or name in self._known_exchanges:
            return
        await self._call(
            "command",
            f"checking exchange {name!r}",
            lambda raw: raw.rpc(spec.Exchange.Declare(exchange=name, passive=True)),
        )
        self._known_exchanges.add(name)

    async def publish(
        self,
        envelope: Envelope,
        *,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        delay: float | None = None,
    ) -> int:
        """Publish with a confirm; return 1 if RabbitMQ routed it, 0 if it was returned.

        A reply to a direct reply-to address (``amq.rabbitmq.reply-to.*``) is done once it is
        written: RabbitMQ stores nothing for it, so its confirm would say no more.

        Raises NotFound for a missing exchange, Unroutable for a returned ``mandatory``
        message, BrokerUnavailable if the connection stays lost past ``reconnect_timeout``.
        """
        if not isinstance(envelope, Envelope):
            raise ProtocolError(
                f"publish takes an Envelope, got {type(envelope).__name__}: wrap the body in "
                "Envelope(body=...)"
            )
        check_routing_key(routing_key)
        try:
            await self._ensure_exchange(exchange)
        except NotFound:
            raise NotFound(
                f"exchange {exchange!r} does not exist: declare it (or a queue bound to it) "
                "before publishing to it"
            ) from None
        if delay is not None and delay > 0:
            delay_ms = round(delay * 1000)
            if delay_ms > 0:
                return await self._publish_delayed(
                    envelope, exchange, routing_key, mandatory, delay_ms
                )
        return await self._publish(envelope, exchange, routing_key, mandatory, None)

    async def _publish(
        self,
        envelope: Envelope,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        headers: Mapping[str, Any] | None,
        *,
        target: tuple[str, str] | None = None,
    ) -> int:
        message_id = self._message_id(envelope)
        flags, properties = _encode_properties(
            envelope, envelope.headers if headers is None else headers, message_id
        )
        # RabbitMQ returns a mandatory message to a direct reply-to address even when it
        # delivers it, so replies go without mandatory (and count as routed).
        reply = not exchange and routing_key.startswith(DIRECT_REPLY_TO + ".")
        loop = self._loop or asyncio.get_running_loop()
        deadline = loop.time() + self._options.reconnect_timeout
        retried = False
        while True:
            channel = await self._shared_channel("reply" if reply else "publish", deadline)
            raw = channel.raw
            connection = raw.connection
            confirm_by = loop.time() + self._options.confirm_timeout
            try:
                if raw.in_flight(message_id) is not None or not connection.can_write:
                    async with asyncio.timeout_at(confirm_by):
                        # Returns are matched by message id: never two with one id in flight.
                        while (waiting := raw.in_flight(message_id)) is not None:
                            await asyncio.wait([waiting])
                        await connection.writable()
                frames = _message_frames(
                    raw.number,
                    connection.frame_max - 8,
                    exchange,
                    routing_key,
                    not reply,
                    properties,
                    flags,
                    envelope.body,
                )
                confirmed = raw.publish(frames, message_id, confirm_by)
                if reply:
                    # Direct reply-to stores nothing: RabbitMQ passes the message to the
                    # caller's connection or drops it, so it goes on a channel without
                    # confirms. Anything written after this on the connection (the task's
                    # ack) reaches RabbitMQ after it, which is all a reply needs.
                    confirmed.add_done_callback(_retrieve)
                    return 1
                if await confirmed:
                    return 1
                break
            except Nacked as exc:
                raise _nacked(exchange) from exc
            except TimeoutError:
                raise _unconfirmed(self._options.confirm_timeout) from None
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
            except Exception as exc:
                if _is_channel_error(exc):
                    missing = _NO_EXCHANGE.search(_reply_text(exc))
                    if missing and missing.group(1) == exchange:
                        self._known_exchanges.discard(exchange)
                        raise NotFound(
                            f"exchange {exchange!r} does not exist: declare it before "
                            "publishing to it"
                        ) from exc
                    if retried:
                        raise _map_channel_error(exc, f"publishing to {exchange!r}") from exc
                    retried = True  # another publish broke the shared channel: try once more
                elif not _is_lost(exc):
                    raise TransportError(f"publishing to {exchange!r}: {exc!r}") from exc
                self._last_error = exc
            if asyncio.get_running_loop().time() >= deadline:
                raise self._unavailable(self._last_error)
            await asyncio.sleep(0.01)
        if not mandatory:
            return 0
        raise _unroutable(*(target or (exchange, routing_key)))

    def _message_id(self, envelope: Envelope) -> str:
        """The envelope's own id, or a new one from this transport's counter (any thread)."""
        return envelope.message_id or f"{self._message_ids_prefix}{next(self._message_ids)}"

    def publish_from_thread(
        self,
        envelope: Envelope,
        *,
        exchange: str = "",
        routing_key: str,
        mandatory: bool = False,
        wakeup: Wakeup | None = None,
    ) -> Published | None:
        """Straight onto the connection from another thread (see ``Transport``), once the loop
        opened the channel it goes on: a direct reply-to reply on the ``reply`` channel, done
        once written; anything else on the ``publish`` channel, its confirm settled by the
        loop. Never for a delayed message, over TLS, or while RabbitMQ blocks publishers."""
        reply = not exchange and routing_key.startswith(DIRECT_REPLY_TO + ".")
        if not reply and (
            envelope.message_id or (exchange and exchange not in self._known_exchanges)
        ):
            return None
        channel = self._shared.get("reply" if reply else "publish")
        if channel is None or not channel.alive:
            return None
        raw = channel.raw
        connection = raw.connection
        if connection is not self._connection:
            return None
        message_id = self._message_id(envelope)
        try:
            check_routing_key(routing_key)
            flags, properties = _encode_properties(envelope, envelope.headers, message_id)
            frames = _message_frames(
                raw.number,
                connection.frame_max - 8,
                exchange,
                routing_key,
                mandatory and not reply,
                properties,
                flags,
                envelope.body,
            )
        except ConveyorError:
            return None  # the loop's publish says what is wrong
        if reply:
            return _WRITTEN if connection.write_from_thread(frames) else None
        confirm = raw.publish_from_thread(frames, message_id, wakeup)
        if confirm is None:
            return None
        return _ThreadPublished(
            confirm, exchange, routing_key, mandatory, self._options.confirm_timeout
        )

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[int]:
        """Publish all at once (confirms pipelined); the first failure, in order, raises."""
        results = await asyncio.gather(
            *(
                self.publish(
                    m.envelope,
                    exchange=m.exchange,
                    routing_key=m.routing_key,
                    mandatory=m.mandatory,
                    delay=m.delay,
                )
                for m in messages
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return cast(list[int], results)

    # delayed delivery

    async def _ensure_delay_levels(self, levels: int) -> None:
        if levels <= self._delay_levels:
            return
        async with self._delay_lock:
            due = f"{DELAY_PREFIX}.due"
            if self._delay_levels == 0:
                await self.declare_exchange(Exchange(due, ExchangeType.HEADERS))
            for level in range(self._delay_levels, levels):
                name = f"{DELAY_PREFIX}.{level:02d}"
                lower = f"{DELAY_PREFIX}.{level - 1:02d}" if level else due
                bit = f"{_DELAY_HEADER}{level:02d}"
                await self.declare_exchange(Exchange(name, ExchangeType.HEADERS))
                await self.declare_queue(
                    Queue(
                        name,
                        queue_arguments={
                            "x-message-ttl": 2**level,
                            "x-dead-letter-exchange": lower,
                        },
                    )
                )
                await self.bind_queue(name, name, "", {"x-match": "all", bit: True})
                await self._bind_exchange(lower, name, {"x-match": "all", bit: False})
                self._delay_levels = level + 1

    async def _bind_exchange(
        self, destination: str, source: str, arguments: Mapping[str, Any]
    ) -> None:
        args = dict(arguments)

        async def bind(raw: Channel) -> None:
            await raw.rpc(
                _ExchangeBind(
                    destination=destination, source=source, routing_key="", arguments=args
                )
            )

        await self._call("command", f"binding exchange {destination!r} to {source!r}", bind)
        key = ("exchange-binding", destination, source, FrozenMapping(args))
        self._remember(key, lambda: self._call("command", str(key), bind))

    async def _ensure_delay_target(self, exchange: str, routing_key: str) -> str | None:
        """Bind the due exchange to the target; the target's route header, None if no queue."""
        target = f"exchange:{exchange}" if exchange else f"queue:{routing_key}"
        if target in self._delay_targets:
            return target
        due = f"{DELAY_PREFIX}.due"
        arguments = {"x-match": "all", _DELAY_TARGET: target}
        if exchange:
            await self._bind_exchange(exchange, due, arguments)
        else:
            try:
                await self.bind_queue(routing_key, due, "", arguments)
            except NotFound:
                return None
        self._delay_targets.add(target)
        return target

    async def _publish_delayed(
        self, envelope: Envelope, exchange: str, routing_key: str, mandatory: bool, delay_ms: int
    ) -> int:
        if delay_ms >= 2**DELAY_LEVELS:
            days = 2**DELAY_LEVELS / 86_400_000
            raise ConfigurationError(
                f"a delay of {delay_ms / 1000:g} s is longer than RabbitMQ delays reach "
                f"({days:.1f} days); schedule it later instead"
            )
        top = delay_ms.bit_length() - 1
        await self._ensure_delay_levels(top + 1)
        target = await self._ensure_delay_target(exchange, routing_key)
        if target is None:
            if mandatory:
                raise Unroutable(
                    f"no queue named {routing_key!r} takes the delayed message from the default "
                    "exchange: declare the queue first",
                    exchange=exchange,
                    routing_key=routing_key,
                )
            return 0
        headers = _strip_delay(dict(envelope.headers))
        for level in range(top + 1):
            headers[f"{_DELAY_HEADER}{level:02d}"] = bool(delay_ms >> level & 1)
        headers[_DELAY_TARGET] = target
        if envelope.expiration is not None:
            headers[_DELAY_EXPIRATION] = round(envelope.expiration * 1000)
            envelope = replace(envelope, expiration=None)
        return await self._publish(
            envelope,
            f"{DELAY_PREFIX}.{top:02d}",
            routing_key,
            mandatory,
            headers,
            target=(exchange, routing_key),
        )

    # consuming

    def _delivery(self, channel: _Channel, queue: str, message: Message) -> Delivery:
        envelope, delayed_to = _envelope(message)
        return Delivery(
            envelope=envelope,
            queue=queue,
            exchange=message.exchange if delayed_to is None else delayed_to,
            routing_key=message.routing_key,
            redelivered=message.redelivered,
            delivery_count=_delivery_count(message),
            tag=(channel.serial << _TAG_BITS) | message.delivery_tag,
        )

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        """``basic.get`` one message from ``queue``; None if it is empty."""
        await self._send_pending()
        deadline = self._deadline()
        while True:
            channel = await self._shared_channel("get", deadline)
            try:
                message = await channel.raw.get(queue, no_ack=no_ack)
                break
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
            except Exception as exc:
                if _is_channel_error(exc):
                    raise _map_channel_error(exc, f"getting from queue {queue!r}") from exc
                if not _is_lost(exc):
                    raise TransportError(f"getting from queue {queue!r}: {exc!r}") from exc
                self._last_error = exc
            if asyncio.get_running_loop().time() >= deadline:
                raise self._unavailable(self._last_error)
            await asyncio.sleep(0.01)
        if message is None:
            return None
        delivery = self._delivery(channel, queue, message)
        if not no_ack:
            channel.hold(message.delivery_tag, queue)
        return delivery

    async def consume(
        self,
        queues: Sequence[str],
        *,
        prefetch: int = 0,
        no_ack: bool = False,
        tag: str | None = None,
    ) -> Consumer:
        """Subscribe on a channel of its own; NotFound if a queue does not exist.

        ``[DIRECT_REPLY_TO]`` with ``no_ack=True`` consumes RabbitMQ's direct reply-to on the
        publishing channel, so that messages published here with ``reply_to=DIRECT_REPLY_TO``
        get their replies.
        """
        names = tuple(queues)
        if not names:
            raise ConfigurationError("consume needs at least one queue name")
        if DIRECT_REPLY_TO in names and (names != (DIRECT_REPLY_TO,) or not no_ack):
            raise ConfigurationError(
                f"{DIRECT_REPLY_TO!r} must be consumed alone and with no_ack=True"
            )
        if prefetch < 0:
            raise ConfigurationError(f"prefetch must be 0 or more, got {prefetch}")
        tag = tag or f"conveyor.{uuid.uuid4().hex}"
        if tag in self._consumers:
            raise ConfigurationError(f"consumer tag {tag!r} is already in use on this transport")
        consumer = _AMQPConsumer(self, names, prefetch=prefetch, no_ack=no_ack, tag=tag)
        deadline = self._deadline()
        while True:
            try:
                await consumer.subscribe()
                break
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
            except ConveyorError:
                raise
            except Exception as exc:
                if _is_channel_error(exc):
                    raise _map_channel_error(exc, f"consuming {', '.join(names)}") from exc
                if not _is_lost(exc):
                    raise TransportError(f"consuming {', '.join(names)}: {exc!r}") from exc
                self._last_error = exc
            if asyncio.get_running_loop().time() >= deadline:
                raise self._unavailable(self._last_error)
            await asyncio.sleep(0.01)
        self._consumers[tag] = consumer
        return consumer

    # settling

    def _settle(self, delivery: Delivery, requeue: bool | None) -> None:
        tag = delivery.tag
        if not isinstance(tag, int):
            return
        channel = self._channels.get(tag >> _TAG_BITS)
        if channel is None or not channel.alive:
            return
        if channel.settle(tag & _TAG_MASK, requeue) and channel.owner is not None:
            channel.owner.settled(tag)

    async def ack(self, delivery: Delivery) -> None:
        """Ack (coalesced with others of the same turn). A lapsed or repeated ack is a no-op."""
        self._settle(delivery, None)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several; contiguous ones go as one ``multiple`` ack."""
        for delivery in deliveries:
            self._settle(delivery, None)

    async def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        """Nack: requeue, or dead-letter/drop as the queue says. Lapsed deliveries: no-op."""
        self._settle(delivery, requeue)
