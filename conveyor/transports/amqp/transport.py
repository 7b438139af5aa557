"""RabbitMQ behind the Transport interface: the broker's own exchanges, queues and bindings.

The verbs, each over the part that does it: :mod:`.session` (the supervised connection and its
channels), :mod:`.declarations`, :mod:`.publishing`, :mod:`.delays` (delayed delivery),
:mod:`.consumer` and :mod:`.acks`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self, cast

from conveyor.errors import ConfigurationError, ConveyorError, NotFound
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, Queue, check_routing_key
from conveyor.routing.topology import BoundBinding
from conveyor.transports.amqp.acks import TAG_BITS, TAG_MASK, AckingChannel
from conveyor.transports.amqp.codec import Message, encode_properties, message_frames
from conveyor.transports.amqp.consumer import AMQPConsumer, delivery_of
from conveyor.transports.amqp.declarations import Declarations
from conveyor.transports.amqp.delays import DelayLevels
from conveyor.transports.amqp.options import Address, Options, parse_url
from conveyor.transports.amqp.publishing import (
    DIRECT_REPLY_TO,
    REPLY_PREFIX,
    WRITTEN,
    Publisher,
    ThreadPublished,
)
from conveyor.transports.amqp.session import ChannelRole, Session
from conveyor.transports.base import (
    Capabilities,
    Consumer,
    Delivery,
    Outgoing,
    Published,
    QueueStats,
    Subscription,
    Transport,
    Wakeup,
)

__all__ = ["AMQPTransport"]


class AMQPTransport(Transport):
    """RabbitMQ, natively: see the package docstring for how each guarantee is met."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        native_exchanges=True,
        max_priority=255,
        delayed_delivery=True,
        direct_reply_to=True,
        shared=True,
    )

    def __init__(self, url: str, address: Address, options: Options) -> None:
        self.url = url
        self._address = address
        self._display = address.display
        self._options = options
        self._session = Session(address, options)
        self._channels = self._session.channels  # the same dict, looked up on every ack
        self._declarations = Declarations(self._session)
        self._delays = DelayLevels(self._declarations)
        self._publisher = Publisher(self._session)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        """Parse ``amqp[s]://user:pass@host:port/vhost?option=value``; ConfigurationError if bad."""
        address, parsed = parse_url(url, options)
        return cls(url, address, parsed)

    async def connect(self) -> None:
        """Open the connection (idempotent); BrokerUnavailable if RabbitMQ can't be reached."""
        await self._session.connect()

    async def close(self) -> None:
        """Cancel every consumer, send pending acks, and close the connection (idempotent)."""
        await self._session.close()

    async def declare_exchange(self, exchange: Exchange, *, passive: bool = False) -> None:
        """Declare ``exchange`` on RabbitMQ; PreconditionFailed names both definitions."""
        await self._declarations.declare_exchange(exchange, passive=passive)

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete exchange ``name``; a missing one is not an error."""
        await self._declarations.delete_exchange(name, if_unused=if_unused)
        self._delays.forget_exchange(name)

    async def declare_queue(self, queue: Queue, *, passive: bool = False) -> QueueStats:
        """Declare ``queue`` and its bindings on RabbitMQ and return its stats.

        PreconditionFailed (queue exists with other arguments) names the queue, both argument
        sets as far as RabbitMQ tells them, and the fix.
        """
        return await self._declarations.declare_queue(queue, passive=passive)

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete queue ``name`` with its messages; return how many went (0 if missing)."""
        count = await self._declarations.delete_queue(name, if_unused=if_unused, if_empty=if_empty)
        self._delays.forget_queue(name)
        return count

    async def purge_queue(self, name: str) -> int:
        """Remove every ready message of ``name``; NotFound if it does not exist."""
        return await self._declarations.purge_queue(name)

    async def _bind(self, binding: BoundBinding) -> None:
        """Bind on RabbitMQ. Idempotent; NotFound if the queue or exchange does not exist."""
        await self._declarations.bind_queue(
            binding.queue, binding.exchange, binding.routing_key, binding.arguments
        )

    async def _unbind(self, binding: BoundBinding) -> None:
        """Remove the binding; one that does not exist is not an error."""
        await self._declarations.unbind_queue(
            binding.queue, binding.exchange, binding.routing_key, binding.arguments
        )

    async def queue_stats(self, name: str) -> QueueStats:
        """Ready and consumer counts from RabbitMQ; unacked counts this connection's deliveries.

        RabbitMQ reports unacknowledged messages only through its management API, which is
        often not enabled, so ``unacked`` counts the deliveries this transport holds.
        """
        return await self._declarations.queue_stats(name)

    async def _publish(self, message: Outgoing) -> int:
        """Publish with a confirm; return 1 if RabbitMQ routed it, 0 if it was returned.

        A reply to a direct reply-to address (``amq.rabbitmq.reply-to.*``) is done once it is
        written: RabbitMQ stores nothing for it, so its confirm would say no more.

        Raises NotFound for a missing exchange, Unroutable for a returned ``mandatory``
        message, BrokerUnavailable if the connection stays lost past ``reconnect_timeout``.
        """
        envelope, exchange, routing_key = message.envelope, message.exchange, message.routing_key
        mandatory, delay = message.mandatory, message.delay
        try:
            await self._declarations.ensure_exchange(exchange)
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
        return await self._publisher.publish(envelope, exchange, routing_key, mandatory, None)

    async def _publish_delayed(
        self, envelope: Envelope, exchange: str, routing_key: str, mandatory: bool, delay_ms: int
    ) -> int:
        delayed = await self._delays.prepare(envelope, exchange, routing_key, mandatory, delay_ms)
        if delayed is None:
            return 0
        envelope, level, headers = delayed
        return await self._publisher.publish(
            envelope, level, routing_key, mandatory, headers, target=(exchange, routing_key)
        )

    def _publish_from_thread(self, message: Outgoing, wakeup: Wakeup | None) -> Published | None:
        """Straight onto the connection from another thread (see ``Transport``), once the loop
        opened the channel it goes on: a direct reply-to reply on the ``REPLY`` channel, done
        once written; anything else on the ``PUBLISH`` channel, its confirm settled by the
        loop. Never for a delayed message, over TLS, or while RabbitMQ blocks publishers."""
        envelope, exchange, routing_key = message.envelope, message.exchange, message.routing_key
        mandatory = message.mandatory
        session = self._session
        reply = not exchange and routing_key.startswith(REPLY_PREFIX)
        if not reply and (
            envelope.message_id or (exchange and exchange not in session.known_exchanges)
        ):
            return None
        channel = session.shared.get(ChannelRole.REPLY if reply else ChannelRole.PUBLISH)
        if channel is None or not channel.alive:
            return None
        raw = channel.raw
        connection = raw.connection
        if connection is not session.connection:
            return None
        message_id = self._publisher.message_id(envelope)
        try:
            check_routing_key(routing_key)
            flags, properties = encode_properties(envelope, envelope.headers, message_id)
            frames = message_frames(
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
            return WRITTEN if connection.write_from_thread(frames) else None
        confirm = raw.publish_from_thread(frames, message_id, wakeup)
        if confirm is None:
            return None
        return ThreadPublished(confirm, message, self._options.confirm_timeout)

    async def _publish_many(self, messages: Sequence[Outgoing]) -> list[int]:
        """Publish all at once (confirms pipelined); the first failure, in order, raises."""
        results = await asyncio.gather(
            *(self._publish(message) for message in messages), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return cast(list[int], results)

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        """``basic.get`` one message from ``queue``; None if it is empty."""
        session = self._session
        session.send_pending()

        async def attempt(deadline: float) -> tuple[AckingChannel, Message | None]:
            channel = await session.shared_channel(ChannelRole.GET, deadline)
            return channel, await channel.raw.get(queue, no_ack=no_ack)

        channel, message = await session.retrying(f"getting from queue {queue!r}", attempt)
        if message is None:
            return None
        delivery = delivery_of(channel, queue, message)
        if not no_ack:
            channel.hold(message.delivery_tag, queue)
        return delivery

    async def _consume(self, subscription: Subscription) -> Consumer:
        """Subscribe on a channel of its own; NotFound if a queue does not exist.

        ``[DIRECT_REPLY_TO]`` with ``no_ack=True`` consumes RabbitMQ's direct reply-to on the
        publishing channel, so that messages published here with ``reply_to=DIRECT_REPLY_TO``
        get their replies.
        """
        names, no_ack = subscription.queues, subscription.no_ack
        if DIRECT_REPLY_TO in names and (names != (DIRECT_REPLY_TO,) or not no_ack):
            raise ConfigurationError(
                f"{DIRECT_REPLY_TO!r} must be consumed alone and with no_ack=True"
            )
        tag = subscription.tag or f"conveyor.{uuid.uuid4().hex}"
        session = self._session
        if tag in session.consumers:
            raise ConfigurationError(f"consumer tag {tag!r} is already in use on this transport")
        consumer = AMQPConsumer(
            session, subscription, tag, direct_reply=names == (DIRECT_REPLY_TO,)
        )

        async def attempt(deadline: float) -> None:
            await consumer.subscribe()

        await session.retrying(f"consuming {', '.join(names)}", attempt)
        session.consumers[tag] = consumer
        return consumer

    def _settle(self, delivery: Delivery, requeue: bool | None) -> None:
        tag = delivery.tag
        if not isinstance(tag, int):
            return
        channel = self._channels.get(tag >> TAG_BITS)
        if channel is None or not channel.alive:
            return
        if channel.settle(tag & TAG_MASK, requeue) and channel.owner is not None:
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
