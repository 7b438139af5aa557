"""One AMQP channel: its synchronous methods, publisher confirms, and the messages it receives.

Synchronous methods go one at a time through :meth:`Channel.rpc`. Publishes in confirm mode are
pipelined: each gets a future (or, from a thread, a :class:`ThreadConfirm`) that RabbitMQ's
``basic.ack``/``nack``/``return`` settles. Deliveries are assembled from their method, header
and body frames as the connection hands them over, and passed to the consumer's callback
without a task per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pamqp import commands as spec
from pamqp.base import Frame

from conveyor.transports.amqp.codec import (
    ACK,
    DELIVER,
    GET_EMPTY,
    GET_OK,
    NACK,
    RETURN,
    U64,
    Message,
    Properties,
    Reader,
    decode_properties,
    method_frame,
    settle_frame,
    shortstr_at,
    unmarshal,
)
from conveyor.transports.amqp.errors import AMQPError, ChannelClosed, Nacked, retrieve

if TYPE_CHECKING:
    from conveyor.transports.amqp.connection import Connection
    from conveyor.transports.base import Wakeup

__all__ = ["Callback", "Channel", "ThreadConfirm"]

log = logging.getLogger(__name__)

_NEVER = math.inf

Callback = Callable[[Message], None]


@dataclass(slots=True, eq=False)
class ThreadConfirm:
    """The confirm of a message a thread published (:meth:`Channel.publish_from_thread`).

    The event loop settles it as it settles a publish's future (``set_result``: True routed,
    False returned; ``set_exception``), then sets the publisher's wakeup; the publishing
    thread reads :attr:`value` / :attr:`error` once :attr:`settled`.
    """

    channel: Channel
    tag: int
    wakeup: Wakeup | None
    settled: bool = False
    value: bool = False
    error: BaseException | None = None

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
        self.channel.abandon(self.tag)


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
        self.closed.add_done_callback(retrieve)
        self.confirms = False
        self.consumers: dict[str, Callback] = {}
        self.on_cancel: Callable[[str], None] | None = None
        self._lock = asyncio.Lock()
        self._waiter: asyncio.Future[Any] | None = None
        self._next_tag = 0
        self._answered_up_to = 0  # every tag up to this one was answered by a ``multiple``
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

    def fail(self, exc: BaseException) -> None:
        if not self.closed.done():
            self.closed.set_exception(exc)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        # Under the write lock: a thread publishing checks ``closed`` under it, so it either
        # registered its confirm before this (and is failed here) or sees the channel closed.
        with self.connection.write_lock:
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
        self.fail(ChannelClosed(200, "closed by the client"))
        self.connection.release(self)

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
        self.connection.write(settle_frame(self.number, 80, delivery_tag, 1 if multiple else 0))

    def nack(self, delivery_tag: int, *, requeue: bool, multiple: bool = False) -> None:
        bits = (1 if multiple else 0) | (2 if requeue else 0)
        self.connection.write(settle_frame(self.number, 120, delivery_tag, bits))

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
        with connection.write_lock:
            self._next_tag += 1
            deadline = _NEVER if confirm_by is None else confirm_by
            self._unconfirmed[self._next_tag] = (future, message_id, deadline)
            self._by_message_id[message_id] = self._next_tag
            connection.write_locked(frames)
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
        mode (see :meth:`Connection.write_from_thread`, whose conditions apply): straight to
        the socket when no other confirm is awaited on this channel, else gathered for the
        loop's next flush; the returned confirm is settled by the loop. None if nothing was
        written: the channel is closed or not in confirm mode, a message with this id is in
        flight, or the connection cannot take the frames from a thread now."""
        connection = self.connection
        confirm = ThreadConfirm(self, 0, wakeup)  # made before the lock: held briefly
        with connection.write_lock:
            if not self.confirms or self.closed.done() or message_id in self._by_message_id:
                return None
            confirm.tag = tag = self._next_tag + 1
            # Registered before the frames leave, so the loop finds it when the answer comes.
            # Others awaiting their confirm: more sends are on their way, gather them.
            gather = bool(self._unconfirmed)
            self._unconfirmed[tag] = (confirm, message_id, _NEVER)
            self._by_message_id[message_id] = tag
            if not connection.write_from_thread_locked(frames, gather=gather):
                del self._unconfirmed[tag], self._by_message_id[message_id]
                return None
            self._next_tag = tag
        connection.wake_from_thread()
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

    def abandon(self, tag: int) -> None:
        """Stop waiting for the confirm of ``tag`` (a later answer is ignored). Any thread."""
        with self.connection.write_lock:
            self._forget(tag)

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
        # Tags up to ``tag`` not met by an earlier ``multiple`` answer, each looked up once
        # (iterating the dict from its start would step over every entry deleted before).
        pending = self._unconfirmed
        for each in range(self._answered_up_to + 1, tag + 1):
            if each in pending:
                self._settled(each, ok)
        if tag > self._answered_up_to:
            self._answered_up_to = tag

    def _returned(self, message: Message) -> None:
        tag = self._by_message_id.get(message.properties.message_id or "")
        entry = self._unconfirmed.get(tag) if tag is not None else None
        if entry is not None and not entry[0].done():
            entry[0].set_result(False)

    # frames from the connection

    def on_method(self, key: tuple[int, int], payload: bytes) -> None:
        if key == DELIVER:
            tag, pos = shortstr_at(payload, 4)
            (delivery_tag,) = U64.unpack_from(payload, pos)
            redelivered = payload[pos + 8] & 1 == 1
            exchange, pos = shortstr_at(payload, pos + 9)
            routing_key, _ = shortstr_at(payload, pos)
            self._incoming = Message(
                b"", Properties(), exchange, routing_key, delivery_tag, redelivered, tag
            )
            self._incoming_kind = 1
        elif key in (ACK, NACK):
            (delivery_tag,) = U64.unpack_from(payload, 4)
            self._confirmed(delivery_tag, payload[12] & 1 == 1, key == ACK)
        elif key == GET_OK:
            r = Reader(payload, 4)
            delivery_tag = r.longlong()
            redelivered = r.octet() & 1 == 1
            exchange = r.shortstr()
            self._incoming = Message(
                b"", Properties(), exchange, r.shortstr(), delivery_tag, redelivered
            )
            self._incoming_kind = 2
        elif key == GET_EMPTY:
            self._reply(None)
        elif key == RETURN:
            r = Reader(payload, 4)
            code = r.short()
            text = r.shortstr()
            exchange = r.shortstr()
            self._incoming = Message(
                b"", Properties(), exchange, r.shortstr(), reply_code=code, reply_text=text
            )
            self._incoming_kind = 3
        else:
            self._other(unmarshal(self.number, payload))

    def _other(self, frame: Any) -> None:
        if isinstance(frame, spec.Channel.Close):
            self.connection.write(method_frame(self.number, spec.Channel.CloseOk()))
            self.fail(ChannelClosed(frame.reply_code or 0, frame.reply_text or ""))
            self.connection.release(self)
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

    def on_header(self, payload: bytes) -> None:
        size, props = decode_properties(payload)
        if self._incoming is None:
            return
        self._incoming.properties = props
        self._remaining = size
        self._body = []
        if size == 0:
            self._complete()

    def on_body(self, payload: bytes) -> None:
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
