"""AMQP 0-9-1 over asyncio: one connection, its channels, and the frames between them.

The RabbitMQ transport's wire layer. Rarely used methods (declarations, the handshake) are
encoded and decoded by pamqp; the per-message hot path (``basic.publish``, ``basic.deliver``,
content headers, acks and confirms) is framed here directly: frames are parsed straight from
the receive buffer and dispatched without a task per message, and everything written in one
event-loop turn leaves in one socket write.

Errors: :class:`ConnectionClosed` when the connection is gone (with RabbitMQ's reply code and
text when it closed it), :class:`ChannelClosed` when RabbitMQ closed a channel after an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import platform
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pamqp.frame
from pamqp import commands as spec
from pamqp.base import Frame
from pamqp.header import ProtocolHeader

__all__ = [
    "AMQPError",
    "Channel",
    "ChannelClosed",
    "Connection",
    "ConnectionClosed",
    "Message",
    "Properties",
    "ThreadConfirm",
]

if TYPE_CHECKING:
    from conveyor.transports.base import Wakeup

log = logging.getLogger(__name__)

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
_NEVER = math.inf
_FRAME_END = 0xCE
_HEAD = struct.Struct(">BHI")
_CLASS_METHOD = struct.Struct(">HH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# (class, method) ids of the frames handled on the hot path.
_DELIVER = (60, 60)
_GET_OK = (60, 71)
_GET_EMPTY = (60, 72)
_RETURN = (60, 50)
_ACK = (60, 80)
_NACK = (60, 120)


class AMQPError(Exception):
    """Base of the wire layer's errors; ``code`` and ``text`` are RabbitMQ's when it sent them."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}" if code else text)
        self.code = code
        self.text = text


class ConnectionClosed(AMQPError):
    """The connection is closed: by RabbitMQ (with its reason), by us, or lost."""


class ChannelClosed(AMQPError):
    """RabbitMQ closed the channel: 404 not found, 405 locked, 406 precondition, 403 refused."""


class Nacked(AMQPError):
    """RabbitMQ refused a published message (``basic.nack``)."""


@dataclass(slots=True)
class Properties:
    """Basic properties of a received message; ``headers`` holds JSON-ready values."""

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


class _Reader:
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
        (value,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def long(self) -> int:
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def longlong(self) -> int:
        (value,) = _U64.unpack_from(self.data, self.pos)
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

    def table(self) -> dict[str, Any]:
        end = self.long() + self.pos
        result: dict[str, Any] = {}
        while self.pos < end:
            key = self.shortstr()
            result[key] = self.value()
        return result

    def value(self) -> Any:
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
        if kind == 70:  # F
            return self.table()
        if kind == 65:  # A
            end = self.long() + self.pos
            items = []
            while self.pos < end:
                items.append(self.value())
            return items
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
        raise ValueError(f"unknown field type {chr(kind)!r} in a field table")


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


_UNPACK_U32 = _U32.unpack_from
_UNPACK_I32 = struct.Struct(">i").unpack_from


def _shortstr(data: bytes, pos: int) -> tuple[str, int]:
    end = pos + 1 + data[pos]
    return data[pos + 1 : end].decode("utf-8", errors="replace"), end


def _table(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
    """A field table at ``pos``, as JSON-ready values, and the position after it."""
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
            result[key], pos = _value(data, key_end)
    return result, pos


_KEY_NAMES: dict[bytes, str] = {}


def _value(data: bytes, pos: int) -> tuple[Any, int]:
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
    if kind == 70:  # F
        return _table(data, pos)
    if kind == 65:  # A
        (size,) = _UNPACK_U32(data, pos)
        pos += 4
        end = pos + size
        items = []
        while pos < end:
            item, pos = _value(data, pos)
            items.append(item)
        return items, pos
    reader = _Reader(data, pos - 1)
    return reader.value(), reader.pos


def _properties(data: bytes) -> tuple[int, Properties]:
    """Decode a content header frame: the body size and the properties."""
    (size,) = _U64.unpack_from(data, 4)
    (flags,) = _U16.unpack_from(data, 12)
    pos = 14
    extra = flags
    while extra & 1:  # continuation flag words (RabbitMQ sends none)
        (extra,) = _U16.unpack_from(data, pos)
        pos += 2
    props = Properties()
    if flags & 0x8000:
        props.content_type, pos = _shortstr(data, pos)
    if flags & 0x4000:
        props.content_encoding, pos = _shortstr(data, pos)
    if flags & 0x2000:
        props.headers, pos = _table(data, pos)
    if flags & 0x1000:
        props.delivery_mode = data[pos]
        pos += 1
    if flags & 0x0800:
        props.priority = data[pos]
        pos += 1
    if flags & 0x0400:
        props.correlation_id, pos = _shortstr(data, pos)
    if flags & 0x0200:
        props.reply_to, pos = _shortstr(data, pos)
    if flags & 0x0100:
        props.expiration, pos = _shortstr(data, pos)
    if flags & 0x0080:
        props.message_id, pos = _shortstr(data, pos)
    if flags & 0x0040:
        (props.timestamp,) = _U64.unpack_from(data, pos)
        pos += 8
    if flags & 0x0020:
        props.type, pos = _shortstr(data, pos)
    if flags & 0x0010:
        props.user_id, pos = _shortstr(data, pos)
    if flags & 0x0008:
        props.app_id, pos = _shortstr(data, pos)
    return size, props


def _unmarshal(channel: int, payload: bytes) -> Any:
    """A method frame's payload decoded by pamqp (the rarely used methods)."""
    return pamqp.frame.unmarshal(
        _HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + b"\xce"
    )[2]


def method_frame(channel: int, frame: Frame) -> bytes:
    """``frame`` marshalled for ``channel`` (pamqp; frames may override ``marshal``)."""
    return bytes(pamqp.frame.marshal(frame, channel))


Callback = Callable[[Message], None]


class ThreadConfirm:
    """The confirm of a message a thread published (:meth:`Channel.publish_from_thread`).

    The event loop settles it as it settles a publish's future (``set_result``: True routed,
    False returned; ``set_exception``), then sets the publisher's wakeup; the publishing
    thread reads :attr:`value` / :attr:`error` once :attr:`settled`.
    """

    __slots__ = ("channel", "error", "settled", "tag", "value", "wakeup")

    def __init__(self, channel: Channel, tag: int, wakeup: Wakeup | None) -> None:
        self.channel = channel
        self.tag = tag
        self.wakeup = wakeup
        self.settled = False
        self.value = False
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.settled

    def set_result(self, value: bool) -> None:
        self.value = value
        self._settle()

    def set_exception(self, error: BaseException) -> None:
        self.error = error
        self._settle()

    def _settle(self) -> None:
        self.settled = True
        if self.wakeup is not None:
            self.wakeup.set()

    def forget(self) -> None:
        """Stop waiting: the channel drops it (an answer coming later is ignored). Any thread."""
        with self.channel.connection._write_lock:
            self.channel._forget(self.tag)


class Channel:
    """One AMQP channel. Synchronous methods go one at a time through :meth:`rpc`.

    With ``confirms`` (``confirm.select``) every :meth:`publish` returns a future that
    resolves when RabbitMQ confirms the message: True if it was routed, False if it came back
    unroutable (mandatory); Nacked or ChannelClosed/ConnectionClosed otherwise.
    """

    def __init__(self, connection: Connection, number: int) -> None:
        self.connection = connection
        self.number = number
        self.closed: asyncio.Future[None] = connection.loop.create_future()
        self.closed.add_done_callback(_retrieve)
        self.confirms = False
        self.consumers: dict[str, Callback] = {}
        self.on_cancel: Callable[[str], None] | None = None
        self._lock = asyncio.Lock()
        self._waiter: asyncio.Future[Any] | None = None
        self._next_tag = 0
        # tag -> (confirm future, message id, loop time by which the confirm must come). A
        # thread's publish puts a ThreadConfirm there, under the connection's write lock.
        self._unconfirmed: dict[int, tuple[asyncio.Future[bool] | ThreadConfirm, str, float]] = {}
        self._by_message_id: dict[str, int] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._incoming: Message | None = None
        self._incoming_kind = 0
        self._props: Properties | None = None
        self._remaining = 0
        self._body: list[bytes] = []

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    def _fail(self, exc: BaseException) -> None:
        if not self.closed.done():
            self.closed.set_exception(exc)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        # Under the write lock: a thread publishing checks ``closed`` under it, so it either
        # registered its confirm before this (and is failed here) or sees the channel closed.
        with self.connection._write_lock:
            unconfirmed = list(self._unconfirmed.values())
            self._unconfirmed.clear()
            self._by_message_id.clear()
        for future, _, _ in unconfirmed:
            if not future.done():
                future.set_exception(exc)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def rpc(self, frame: Frame, *, timeout: float | None = None) -> Any:
        """Send a synchronous method and return RabbitMQ's reply frame.

        Raises ChannelClosed if RabbitMQ closes the channel instead, ConnectionClosed if the
        connection goes. A method sent with ``nowait`` returns None at once.
        """
        async with self._lock:
            if self.closed.done():
                raise self.closed.exception() or ChannelClosed(0, "channel closed")
            self.connection.write(method_frame(self.number, frame))
            if not frame.synchronous or getattr(frame, "nowait", False):
                return None
            waiter = self._waiter = self.connection.loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    return await waiter
            finally:
                self._waiter = None

    def _reply(self, frame: Any) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(frame)

    async def open(self) -> None:
        await self.rpc(spec.Channel.Open())

    async def close(self) -> None:
        """Close the channel (idempotent). Unacked deliveries go back to their queues."""
        if self.closed.done():
            return
        with contextlib.suppress(AMQPError, TimeoutError):
            await self.rpc(
                spec.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0),
                timeout=10,
            )
        self._fail(ChannelClosed(200, "closed by the client"))
        self.connection._release(self)

    async def select_confirms(self) -> None:
        await self.rpc(spec.Confirm.Select())
        self.confirms = True

    async def qos(self, prefetch: int) -> None:
        await self.rpc(spec.Basic.Qos(prefetch_count=prefetch))

    async def consume(
        self,
        queue: str,
        tag: str,
        callback: Callback,
        *,
        no_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Subscribe ``callback`` to ``queue``; it is called for every delivery, in order."""
        self.consumers[tag] = callback
        try:
            await self.rpc(
                spec.Basic.Consume(
                    queue=queue, consumer_tag=tag, no_ack=no_ack, arguments=arguments
                )
            )
        except BaseException:
            self.consumers.pop(tag, None)
            raise

    async def cancel(self, tag: str, *, timeout: float | None = None) -> None:
        try:
            await self.rpc(spec.Basic.Cancel(consumer_tag=tag), timeout=timeout)
        finally:
            self.consumers.pop(tag, None)

    async def get(self, queue: str, *, no_ack: bool = False) -> Message | None:
        result = await self.rpc(spec.Basic.Get(queue=queue, no_ack=no_ack))
        return result if isinstance(result, Message) else None

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        self.connection.write(_settle_frame(self.number, 80, delivery_tag, 1 if multiple else 0))

    def nack(self, delivery_tag: int, *, requeue: bool, multiple: bool = False) -> None:
        bits = (1 if multiple else 0) | (2 if requeue else 0)
        self.connection.write(_settle_frame(self.number, 120, delivery_tag, bits))

    def publish(
        self, frames: bytes, message_id: str, confirm_by: float | None = None
    ) -> asyncio.Future[bool]:
        """Write an encoded message (see :func:`message_frames`); in confirm mode, the future
        resolves with RabbitMQ's confirm, or fails with TimeoutError if none came by the loop
        time ``confirm_by``. Messages must have distinct ids while in flight."""
        if self.closed.done():
            raise self.closed.exception() or ChannelClosed(0, "channel closed")
        connection = self.connection
        loop = connection.loop
        future: asyncio.Future[bool] = loop.create_future()
        if not self.confirms:
            future.set_result(True)
            connection.write(frames)
            return future
        # Tag and write under one lock: RabbitMQ numbers messages in the order they arrive,
        # and threads may publish on this channel too (publish_from_thread).
        with connection._write_lock:
            self._next_tag += 1
            deadline = _NEVER if confirm_by is None else confirm_by
            self._unconfirmed[self._next_tag] = (future, message_id, deadline)
            self._by_message_id[message_id] = self._next_tag
            connection._write_locked(frames)
        # One timer for every confirm awaited, armed at the earliest deadline.
        watchdog = self._watchdog
        if confirm_by is not None and (watchdog is None or confirm_by < watchdog.when()):
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog = loop.call_at(confirm_by, self._expire)
        return future

    def publish_from_thread(
        self, frames: bytes, message_id: str, wakeup: Wakeup | None
    ) -> ThreadConfirm | None:
        """Write an encoded message from a thread other than the event loop's, in confirm
        mode, straight to the socket (see :meth:`Connection.write_from_thread`, whose
        conditions apply); the returned confirm is settled by the loop. None if nothing was
        written: the channel is closed or not in confirm mode, a message with this id is in
        flight, or the connection cannot take the frames from a thread now."""
        connection = self.connection
        with connection._write_lock:
            if not self.confirms or self.closed.done() or message_id in self._by_message_id:
                return None
            tag = self._next_tag + 1
            confirm = ThreadConfirm(self, tag, wakeup)
            # Registered before the frames leave, so the loop finds it when the answer comes.
            self._unconfirmed[tag] = (confirm, message_id, _NEVER)
            self._by_message_id[message_id] = tag
            if not connection._write_from_thread_locked(frames):
                del self._unconfirmed[tag], self._by_message_id[message_id]
                return None
            self._next_tag = tag
        return confirm

    def _expire(self) -> None:
        """Fail the confirms whose deadline passed; arm the timer for the next deadline."""
        self._watchdog = None
        now = self.connection.loop.time()
        late: list[int] = []
        earliest = _NEVER
        for tag, (_, _, deadline) in list(self._unconfirmed.items()):  # threads may add
            if deadline <= now:
                late.append(tag)
            elif deadline < earliest:
                earliest = deadline
        for tag in late:
            future = self._forget(tag)
            if future is not None and not future.done():
                future.set_exception(TimeoutError("no publisher confirm in time"))
        if earliest != _NEVER:
            self._watchdog = self.connection.loop.call_at(earliest, self._expire)

    def in_flight(self, message_id: str) -> asyncio.Future[bool] | None:
        """The confirm still awaited for a message published on the loop with this id, if
        any (threads publish only messages with ids of their own)."""
        tag = self._by_message_id.get(message_id)
        entry = self._unconfirmed.get(tag) if tag is not None else None
        return entry[0] if entry is not None and isinstance(entry[0], asyncio.Future) else None

    def _forget(self, tag: int) -> asyncio.Future[bool] | ThreadConfirm | None:
        entry = self._unconfirmed.pop(tag, None)
        if entry is None:
            return None
        future, message_id, _ = entry
        if self._by_message_id.get(message_id) == tag:
            self._by_message_id.pop(message_id, None)
        return future

    def _settled(self, tag: int, ok: bool) -> None:
        future = self._forget(tag)
        if future is None:
            return
        if not future.done():
            if ok:
                future.set_result(True)
            else:
                future.set_exception(Nacked(0, "RabbitMQ refused the message (basic.nack)"))

    def _confirmed(self, tag: int, multiple: bool, ok: bool) -> None:
        if not multiple:
            self._settled(tag, ok)
            return
        pending = self._unconfirmed
        while pending:
            first = next(iter(pending))
            if first > tag:
                break
            self._settled(first, ok)

    def _returned(self, message: Message) -> None:
        tag = self._by_message_id.get(message.properties.message_id or "")
        entry = self._unconfirmed.get(tag) if tag is not None else None
        if entry is not None and not entry[0].done():
            entry[0].set_result(False)

    # frames from the connection

    def _method(self, key: tuple[int, int], payload: bytes) -> None:
        if key == _DELIVER:
            tag, pos = _shortstr(payload, 4)
            (delivery_tag,) = _U64.unpack_from(payload, pos)
            redelivered = payload[pos + 8] & 1 == 1
            exchange, pos = _shortstr(payload, pos + 9)
            routing_key, _ = _shortstr(payload, pos)
            self._incoming = Message(
                b"", Properties(), exchange, routing_key, delivery_tag, redelivered, tag
            )
            self._incoming_kind = 1
        elif key in (_ACK, _NACK):
            (delivery_tag,) = _U64.unpack_from(payload, 4)
            self._confirmed(delivery_tag, payload[12] & 1 == 1, key == _ACK)
        elif key == _GET_OK:
            r = _Reader(payload, 4)
            delivery_tag = r.longlong()
            redelivered = r.octet() & 1 == 1
            exchange = r.shortstr()
            self._incoming = Message(
                b"", Properties(), exchange, r.shortstr(), delivery_tag, redelivered
            )
            self._incoming_kind = 2
        elif key == _GET_EMPTY:
            self._reply(None)
        elif key == _RETURN:
            r = _Reader(payload, 4)
            code = r.short()
            text = r.shortstr()
            exchange = r.shortstr()
            self._incoming = Message(
                b"", Properties(), exchange, r.shortstr(), reply_code=code, reply_text=text
            )
            self._incoming_kind = 3
        else:
            self._other(_unmarshal(self.number, payload))

    def _other(self, frame: Any) -> None:
        if isinstance(frame, spec.Channel.Close):
            self.connection.write(method_frame(self.number, spec.Channel.CloseOk()))
            self._fail(ChannelClosed(frame.reply_code or 0, frame.reply_text or ""))
            self.connection._release(self)
        elif isinstance(frame, spec.Channel.CloseOk):
            self._reply(frame)
        elif isinstance(frame, spec.Basic.Cancel):
            tag = frame.consumer_tag or ""
            self.consumers.pop(tag, None)
            if self.on_cancel is not None:
                try:
                    self.on_cancel(tag)
                except Exception:
                    log.exception("consumer cancel callback failed for %r", tag)
        elif isinstance(frame, spec.Channel.Flow):
            self.connection.write(method_frame(self.number, spec.Channel.FlowOk(frame.active)))
        else:
            self._reply(frame)

    def _header(self, payload: bytes) -> None:
        size, props = _properties(payload)
        if self._incoming is None:
            return
        self._incoming.properties = props
        self._remaining = size
        self._body = []
        if size == 0:
            self._complete()

    def _content(self, payload: bytes) -> None:
        self._body.append(payload)
        self._remaining -= len(payload)
        if self._remaining <= 0:
            self._complete()

    def _complete(self) -> None:
        message, kind = self._incoming, self._incoming_kind
        self._incoming = None
        if message is None:
            return
        body = self._body
        message.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        if kind == 1:
            callback = self.consumers.get(message.consumer_tag)
            if callback is not None:
                try:
                    callback(message)
                except Exception:
                    # A failing consumer must not stop the connection's reader.
                    log.exception("consumer %r failed on a delivery", message.consumer_tag)
        elif kind == 2:
            self._reply(message)
        else:
            self._returned(message)


def _settle_frame(channel: int, method: int, delivery_tag: int, bits: int) -> bytes:
    return _SETTLE.pack(1, channel, 13, 60, method, delivery_tag, bits, _FRAME_END)


_SETTLE = struct.Struct(">BHIHHQBB")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Connection(asyncio.Protocol):
    """One AMQP connection. Open with :meth:`open`; ``closed`` resolves when it ends (with
    ConnectionClosed as its exception unless we closed it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.closed: asyncio.Future[None] = loop.create_future()
        self.closed.add_done_callback(_retrieve)
        self.channels: dict[int, Channel] = {}
        self.frame_max = 131072
        self.channel_max = 2047
        self.heartbeat = 0
        self.server_properties: dict[str, Any] = {}
        self.blocked = asyncio.Event()
        self.blocked.set()  # set while *not* blocked
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flushing = False
        self._write_lock = threading.Lock()  # write, flush and write_from_thread
        self._lost = False  # connection_lost ran: the socket is about to close
        self._writable = asyncio.Event()
        self._writable.set()
        self._handshake: asyncio.Queue[Any] = asyncio.Queue()
        self._opened = False
        self._last_received = loop.time()
        self._last_sent = loop.time()
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._close_ok: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        vhost: str,
        user: str,
        password: str,
        heartbeat: int,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        client_name: str | None = None,
    ) -> Connection:
        """Connect, authenticate (PLAIN) and open ``vhost``.

        Raises ConnectionClosed (RabbitMQ refused: bad login, unknown vhost) or OSError.
        """
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: cls(loop),
            host,
            port,
            ssl=ssl_context,
            server_hostname=(server_hostname or host) if ssl_context else None,
        )
        try:
            await protocol._start(vhost, user, password, heartbeat, client_name)
        except BaseException:
            protocol.abort()
            raise
        return protocol

    async def _start(
        self, vhost: str, user: str, password: str, heartbeat: int, client_name: str | None
    ) -> None:
        assert self._transport is not None
        self._transport.write(ProtocolHeader().marshal())
        start = await self._handshake_frame(spec.Connection.Start)
        self.server_properties = dict(start.server_properties or {})
        properties: dict[str, Any] = {
            "product": "conveyor",
            "platform": f"Python {platform.python_version()}",
            "capabilities": {
                "authentication_failure_close": True,
                "basic.nack": True,
                "connection.blocked": True,
                "consumer_cancel_notify": True,
                "publisher_confirms": True,
            },
        }
        if client_name:
            properties["connection_name"] = client_name
        self._transport.write(
            method_frame(
                0,
                spec.Connection.StartOk(
                    client_properties=properties,
                    mechanism="PLAIN",
                    response=f"\0{user}\0{password}",
                ),
            )
        )
        tune = await self._handshake_frame(spec.Connection.Tune)
        self.channel_max = min(tune.channel_max or 2047, 2047)
        self.frame_max = tune.frame_max or 131072
        server_heartbeat = tune.heartbeat or 0
        self.heartbeat = (
            min(heartbeat, server_heartbeat) if heartbeat and server_heartbeat else heartbeat
        )
        self._transport.write(
            method_frame(
                0,
                spec.Connection.TuneOk(
                    channel_max=self.channel_max,
                    frame_max=self.frame_max,
                    heartbeat=self.heartbeat,
                ),
            )
        )
        self._transport.write(method_frame(0, spec.Connection.Open(virtual_host=vhost)))
        await self._handshake_frame(spec.Connection.OpenOk)
        self._opened = True
        if self.heartbeat:
            self._schedule_heartbeat()

    async def _handshake_frame(self, kind: type[Frame]) -> Any:
        frame = await self._handshake.get()
        if isinstance(frame, BaseException):
            raise frame
        if isinstance(frame, spec.Connection.Close):
            raise ConnectionClosed(frame.reply_code or 0, frame.reply_text or "")
        if not isinstance(frame, kind):
            raise ConnectionClosed(0, f"expected {kind.name}, got {frame!r}")
        return frame

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        # asyncio closes the socket right after this returns: a thread still writing to it
        # finishes first, and none starts after (see write_from_thread).
        with self._write_lock:
            self._lost = True
        reason = ConnectionClosed(0, f"connection lost: {exc!r}" if exc else "connection closed")
        self._shutdown(reason)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._last_received = self.loop.time()
        buffer = self._buffer
        if buffer:
            buffer += data
            data = bytes(buffer)  # slices of bytes are bytes: one copy per frame, not two
        pos, size = 0, len(data)
        channels = self.channels
        try:
            while size - pos >= 8:
                kind, channel, length = _HEAD.unpack_from(data, pos)
                end = pos + 7 + length
                if end >= size:
                    break
                if data[end] != _FRAME_END:
                    raise ConnectionClosed(501, "malformed frame from the broker")
                payload = data[pos + 7 : end]
                if kind == FRAME_METHOD:
                    self._on_method(channel, payload)
                elif kind == FRAME_HEADER:
                    target = channels.get(channel)
                    if target is not None:
                        target._header(payload)
                elif kind == FRAME_BODY:
                    target = channels.get(channel)
                    if target is not None:
                        target._content(payload)
                pos = end + 1
        except ConnectionClosed as exc:
            self._shutdown(exc)
            self.abort()
            return
        if buffer:
            del buffer[:pos]
        elif pos < size:
            buffer += data[pos:]

    def _on_method(self, channel: int, payload: bytes) -> None:
        key = _CLASS_METHOD.unpack_from(payload)
        if channel:
            target = self.channels.get(channel)
            if target is not None:
                target._method(key, payload)
            return
        frame = _unmarshal(0, payload)
        if not self._opened:
            self._handshake.put_nowait(frame)
        elif isinstance(frame, spec.Connection.Close):
            self.write(method_frame(0, spec.Connection.CloseOk()))
            self._shutdown(ConnectionClosed(frame.reply_code or 0, frame.reply_text or ""))
            self.flush()
            if self._transport is not None:
                self._transport.close()
        elif isinstance(frame, spec.Connection.CloseOk):
            if self._close_ok is not None and not self._close_ok.done():
                self._close_ok.set_result(None)
        elif isinstance(frame, spec.Connection.Blocked):
            self.blocked.clear()
        elif isinstance(frame, spec.Connection.Unblocked):
            self.blocked.set()

    # writing

    def write(self, data: bytes) -> None:
        """Send bytes: the first write of an event-loop turn goes out at once (latency), later
        ones in the same turn are gathered into one write at its end (throughput)."""
        with self._write_lock:
            self._write_locked(data)

    def _write_locked(self, data: bytes) -> None:
        """:meth:`write`, with ``_write_lock`` held by the caller (on the event loop)."""
        if self._flushing:
            self._out.append(data)
            return
        self._flushing = True
        self.loop.call_soon(self.flush)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self._last_sent = self.loop.time()

    def flush(self) -> None:
        with self._write_lock:
            self._flushing = False
            if not self._out:
                return
            data = b"".join(self._out)
            self._out.clear()
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(data)
                self._last_sent = self.loop.time()

    def write_from_thread(self, data: bytes) -> bool:
        """Send whole frames from a thread other than the event loop's, straight to the socket.

        Only when nothing is ahead of them: a plain TCP connection (not TLS), RabbitMQ not
        blocking publishers, nothing gathered or buffered for sending. Otherwise nothing is
        written and the result is False: send through the loop instead. Holds the lock every
        write takes, so frames never interleave, and never waits on the socket: what it does
        not take at once goes first in the loop's next flush, and writes meanwhile queue behind
        it.
        """
        with self._write_lock:
            return self._write_from_thread_locked(data)

    def _write_from_thread_locked(self, data: bytes) -> bool:
        """:meth:`write_from_thread`, with ``_write_lock`` held by the caller."""
        transport = self._transport
        if (
            transport is None
            or self._lost
            or transport.is_closing()
            or not self.blocked.is_set()
            or self._out
            or transport.get_write_buffer_size()
            or transport.get_extra_info("sslcontext") is not None
        ):
            return False
        try:
            sent = os.write(transport.get_extra_info("socket").fileno(), data)
        except OSError:  # would block, or the connection is going (the loop will see)
            return False
        if sent < len(data):
            self._out.append(data[sent:])
            if not self._flushing:
                self._flushing = True
                with contextlib.suppress(RuntimeError):  # a closed loop: the socket is gone
                    self.loop.call_soon_threadsafe(self.flush)
        self._last_sent = time.monotonic()  # the loop's clock
        return True

    @property
    def can_write(self) -> bool:
        """True unless the socket's write buffer is full or RabbitMQ blocks publishers."""
        return self._writable.is_set() and self.blocked.is_set()

    async def writable(self) -> None:
        """Wait while the socket's write buffer is full or RabbitMQ blocks publishers."""
        if not self._writable.is_set():
            await self._writable.wait()
        if not self.blocked.is_set():
            await self.blocked.wait()

    async def drain(self) -> None:
        """Wait until everything queued so far has left the socket's write buffer."""
        self.flush()
        transport = self._transport
        while transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size() == 0:
                return
            await asyncio.sleep(0.001)

    # channels

    async def channel(self, *, confirms: bool = False) -> Channel:
        """Open a new channel (with ``confirm.select`` if ``confirms``)."""
        if self.closed.done():
            raise self.closed.exception() or ConnectionClosed(0, "connection closed")
        number = next(n for n in range(1, self.channel_max + 1) if n not in self.channels)
        channel = Channel(self, number)
        self.channels[number] = channel
        try:
            await channel.open()
            if confirms:
                await channel.select_confirms()
        except BaseException:
            self.channels.pop(number, None)
            raise
        return channel

    def _release(self, channel: Channel) -> None:
        if self.channels.get(channel.number) is channel:
            del self.channels[channel.number]

    # heartbeats and closing

    def _schedule_heartbeat(self) -> None:
        self._heartbeat_timer = self.loop.call_later(self.heartbeat / 2, self._beat)

    def _beat(self) -> None:
        if self.closed.done():
            return
        now = self.loop.time()
        if now - self._last_received > self.heartbeat * 2.5:
            self._shutdown(
                ConnectionClosed(0, f"no heartbeat from the broker for {self.heartbeat * 2.5:g} s")
            )
            self.abort()
            return
        if now - self._last_sent >= self.heartbeat / 2:
            self.write(_HEARTBEAT)
        self._schedule_heartbeat()

    def _shutdown(self, reason: ConnectionClosed) -> None:
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        if not self._opened:
            self._handshake.put_nowait(reason)
        for channel in list(self.channels.values()):
            channel._fail(reason)
        self.channels.clear()
        if not self.closed.done():
            self.closed.set_exception(reason)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        """Close gracefully (idempotent): pending writes go first, then ``connection.close``."""
        if self.closed.done():
            return
        self._close_ok = self.loop.create_future()
        self.write(
            method_frame(
                0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
            )
        )
        with contextlib.suppress(TimeoutError, AMQPError):
            await asyncio.wait_for(asyncio.shield(self._close_ok), 5)
        self._shutdown(ConnectionClosed(200, "closed by the client"))
        if self._transport is not None:
            self._transport.close()
