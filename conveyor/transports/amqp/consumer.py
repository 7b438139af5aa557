"""Consuming from RabbitMQ: consumers, and deliveries made from the messages they receive.

Each consumer has its own channel with ``basic.qos`` per consumer (works for quorum queues,
which refuse global QoS); with several queues the consumer also holds back deliveries so no
more than ``prefetch`` are handed out unsettled. Acks are coalesced (up to 2 ms, or a quarter of
the prefetch) into one ``multiple`` ack for the settled prefix plus single acks for the rest
(see :mod:`.acks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from pamqp import commands as spec

from conveyor.errors import BrokerUnavailable, ConveyorError, ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.transports.amqp.acks import TAG_BITS, TAG_MASK, AckingChannel
from conveyor.transports.amqp.codec import Message
from conveyor.transports.amqp.delays import DELAY_EXPIRATION, DELAY_TARGET, delayed_to, strip_delay
from conveyor.transports.amqp.errors import is_channel_error, reply_text
from conveyor.transports.amqp.session import ChannelRole, Session
from conveyor.transports.base import Consumer, Delivery, Subscription
from conveyor.transports.unreadable import unreadable_envelope

__all__ = ["AMQPConsumer", "delivery_of", "envelope_of"]

log = logging.getLogger(__name__)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (which JSON cannot hold) replaced by None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def envelope_of(message: Message) -> tuple[Envelope, str | None]:
    """The envelope of a received message, and the exchange a delayed message was sent to.

    Never raises: a message no envelope can hold (headers nested too deeply, unreadable, or
    holding what headers cannot carry) comes as an unreadable envelope saying why (see
    :mod:`conveyor.transports.unreadable`), for the worker to dead-letter.
    """
    props = message.properties
    if props.unreadable is not None:
        return _unreadable(message, props.unreadable), None
    try:
        return _envelope_of(message)
    except (ProtocolError, ValueError, TypeError, OverflowError) as exc:
        return _unreadable(message, f"RabbitMQ message cannot be an envelope: {exc}"), None


def _unreadable(message: Message, reason: str) -> Envelope:
    props = message.properties
    return unreadable_envelope(
        message.body,
        reason,
        correlation_id=props.correlation_id,
        message_id=props.message_id,
        delivery_mode=2 if props.delivery_mode == 2 else 1,
    )


def _envelope_of(message: Message) -> tuple[Envelope, str | None]:
    props = message.properties
    headers: dict[str, Any] = props.headers or {}
    expiration: float | None = None
    if props.expiration:
        with contextlib.suppress(ValueError):
            expiration = int(props.expiration) / 1000
    target: str | None = None
    if headers and (DELAY_TARGET in headers or "x-death" in headers):
        target = delayed_to(headers)
        delayed_expiration = headers.get(DELAY_EXPIRATION)
        if isinstance(delayed_expiration, (int, float)) and expiration is None:
            expiration = delayed_expiration / 1000
        headers = strip_delay(headers)
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
        return Envelope(**fields), target  # type: ignore[arg-type]
    except ProtocolError:
        fields["headers"] = _finite(headers)
        return Envelope(**fields), target  # type: ignore[arg-type]


def _delivery_count(message: Message) -> int:
    """Quorum queues count returns in ``x-delivery-count``; classic ones only flag redelivery."""
    headers = message.properties.headers
    count = headers.get("x-delivery-count") if headers else None
    if isinstance(count, int) and not isinstance(count, bool):
        return count + 1
    return 2 if message.redelivered else 1


def delivery_of(channel: AckingChannel, queue: str, message: Message) -> Delivery:
    """The Delivery of ``message``, got from ``queue`` on ``channel`` (``basic.get``)."""
    envelope, target = envelope_of(message)
    return Delivery(
        envelope=envelope,
        queue=queue,
        exchange=message.exchange if target is None else target,
        routing_key=message.routing_key,
        redelivered=message.redelivered,
        delivery_count=_delivery_count(message),
        tag=(channel.serial << TAG_BITS) | message.delivery_tag,
    )


class AMQPConsumer(Consumer):
    """A subscription on its own channel; resubscribed by the session after a reconnect."""

    def __init__(
        self, session: Session, subscription: Subscription, tag: str, *, direct_reply: bool
    ) -> None:
        super().__init__(subscription, tag)
        self._session = session
        self._active = list(subscription.queues)
        self._direct_reply = direct_reply
        self._channel: AckingChannel | None = None
        self._buffer: deque[Delivery] = deque()
        self._handed: set[int] = set()
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._cancelled = False
        self._finished = False

    async def subscribe(self) -> None:
        """Open a channel and start consuming every active queue (NotFound if one is missing)."""
        session = self._session
        if self._direct_reply:
            channel = await session.shared_channel(ChannelRole.PUBLISH)
        else:
            channel = await session.open_channel(owner=self)
            channel.batch = max(1, self.prefetch // 4) if self.prefetch else 64
        raw = channel.raw
        self._channel = channel
        raw.closed.add_done_callback(lambda _: self._on_channel_closed(channel))
        try:
            if self.prefetch and not self.no_ack:
                await raw.qos(self.prefetch)
            raw.on_cancel = self._on_broker_cancel
            for index, queue in enumerate(self._active):
                await raw.consume(
                    queue,
                    self._consumer_tag(index),
                    self._callback(channel, queue),
                    no_ack=self.no_ack,
                )
        except BaseException:
            if not self._direct_reply:
                await channel.close()
            self._channel = None
            raise

    def _consumer_tag(self, index: int) -> str:
        return self.tag if index == 0 else f"{self.tag}.{index}"

    def _callback(self, channel: AckingChannel, queue: str) -> Callable[[Message], None]:
        def on_message(message: Message) -> None:
            self._on_message(channel, queue, message)

        return on_message

    def _on_message(self, channel: AckingChannel, queue: str, message: Message) -> None:
        delivery_tag = message.delivery_tag
        if self._cancelled or channel is not self._channel:
            if not self.no_ack and channel.alive:
                channel.hold(delivery_tag, queue)
                channel.settle(delivery_tag, True)
            return
        tag = (
            (channel.serial << TAG_BITS) | delivery_tag
            if self.no_ack
            else channel.hold(delivery_tag, queue)
        )
        delivery_count = _delivery_count(message)
        envelope, target = envelope_of(message)
        self._buffer.append(
            Delivery(
                envelope=envelope,
                queue=queue,
                exchange=message.exchange if target is None else target,
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

    def abandon(self) -> None:
        """End at once, cancelling nothing on RabbitMQ: the connection is closing."""
        self._cancelled = True
        self._finish()

    def settled(self, tag: int) -> None:
        self._handed.discard(tag)
        self._wakeup.set()

    def channel_lost(self) -> None:
        """Forget everything the dead channel delivered: RabbitMQ requeues it."""
        self._channel = None
        self._handed.clear()
        self._buffer.clear()
        self._wakeup.set()

    def _on_channel_closed(self, channel: AckingChannel) -> None:
        if channel is not self._channel:
            return
        self.channel_lost()
        if channel.raw.connection.closed.done():
            return  # the connection went: the supervisor resubscribes once reconnected
        if not (self._cancelled or self._finished or self._session.closed):
            # A channel error closed it: subscribe again on a new channel.
            self._session.spawn(self.resubscribe())

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
                if is_channel_error(exc):
                    log.error("consumer %r stops: %s", self.tag, reply_text(exc))
                    self._finish()
                else:
                    raise

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            if self._buffer and (
                self.no_ack or not self.prefetch or len(self._handed) < self.prefetch
            ):
                delivery = self._buffer.popleft()
                if not self.no_ack:
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
        self._session.consumers.pop(self.tag, None)
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
            if not self.no_ack:
                for delivery in self._buffer:
                    requeued |= channel.settle(cast(int, delivery.tag) & TAG_MASK, True)
            channel.send_pending()
            if not self._direct_reply:
                channel.close_when_idle = True
                if not channel.unsettled:
                    await channel.close()
                elif requeued:
                    # A round trip on this channel: RabbitMQ has requeued them when it returns.
                    with contextlib.suppress(Exception):
                        await channel.raw.rpc(
                            spec.Basic.Qos(prefetch_count=self.prefetch), timeout=10
                        )
        self._buffer.clear()
        self._finish()
