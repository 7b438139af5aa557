"""The one interface every broker sits behind.

A Transport stores and moves messages; it never decides task routes (that is
``conveyor.routing``). The contract, which the conformance suite in ``tests/transports/`` checks
on every implementation:

- Declarations are idempotent: declaring an entity that exists with the same definition does
  nothing; with a different definition it raises PreconditionFailed naming both.
- ``publish`` routes by AMQP rules (direct, topic, fanout, headers, the default exchange,
  alternate exchanges) and returns how many queues took the message. A ``mandatory`` message that
  reaches no queue raises Unroutable; a non-mandatory one is dropped, and 0 is returned.
  RabbitMQ tells a publisher only whether a message was routed, so transports with
  ``native_exchanges`` return 1 for "one or more".
- Delivery is at least once. A delivery stays unacked until ``ack``/``nack``/``reject``; if its
  consumer cancels without settling it, closes, or dies, it returns to its queue with
  ``redelivered=True`` and ``delivery_count`` one higher.
- Priority queues (``x-max-priority`` N) deliver higher priorities first and FIFO within a level;
  priorities above N count as N. Queues without it are FIFO.
- ``delay`` holds a message out of its queues until it is due; no consumer holds it meanwhile.
- Dead-lettering (``x-dead-letter-exchange``) happens on reject without requeue, on expiry, on
  ``x-max-length`` overflow and on ``x-delivery-limit``, with RabbitMQ's ``x-death`` header.
- Errors are conveyor errors (``conveyor.errors``); client-library exceptions never escape.
- Every method may be cancelled; a cancelled publish may or may not have been stored.

The verbs that take several keyword options (``publish``, ``publish_many``,
``publish_from_thread``, ``consume``, ``bind_queue``, ``unbind_queue``) check them here, once,
and hand an implementation one record (:class:`Outgoing`, :class:`Subscription`,
:class:`~conveyor.routing.topology.BoundBinding`) through a primitive it writes: ``_publish``
(and ``_publish_many`` to batch), ``_publish_from_thread``, ``_consume``, ``_bind``, ``_unbind``.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from conveyor._frozen import fast_init
from conveyor.errors import ConfigurationError, ProtocolError
from conveyor.lifecycle import Connectable, Scoped
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, Queue, check_routing_key
from conveyor.routing.topology import BoundBinding

__all__ = [
    "Capabilities",
    "Consumer",
    "Delivery",
    "DeliveryTag",
    "Outgoing",
    "Published",
    "QueueStats",
    "Subscription",
    "Transport",
    "Wakeup",
]

DeliveryTag = int | str


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport can do, declared up front so callers never probe.

    ``native_exchanges``: the broker routes itself (RabbitMQ); otherwise conveyor's matchers do.
    ``max_priority``: the highest priority level ordered exactly (255 everywhere today).
    ``delayed_delivery``: ``publish(delay=...)`` works without a consumer holding the message.
    ``direct_reply_to``: replies can use RabbitMQ's ``amq.rabbitmq.reply-to`` pseudo-queue.
    ``shared``: several processes can use the same broker (false only for ``memory://``).
    ``lowest_priority_first``: priority 0 is the most urgent (kombu's Redis layout, as the
    routing guide says of Redis); elsewhere the highest priority goes first.
    """

    native_exchanges: bool
    max_priority: int
    delayed_delivery: bool
    direct_reply_to: bool
    shared: bool
    lowest_priority_first: bool = False


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue's counters at one moment: messages ready, delivered but unacked, and consumers."""

    name: str
    ready: int
    unacked: int
    consumers: int


@fast_init
@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to a consumer (or returned by ``get``), waiting to be settled.

    ``tag`` identifies the delivery to ``ack``/``nack``/``reject`` on the transport that made it.
    ``delivery_count`` is 1 on the first delivery and grows by one each time the message comes back.
    """

    envelope: Envelope
    queue: str
    exchange: str
    routing_key: str
    redelivered: bool
    delivery_count: int
    tag: DeliveryTag
    consumer_tag: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :meth:`Transport.publish_many`; the fields mean what ``publish``'s do."""

    envelope: Envelope
    exchange: str = ""
    routing_key: str = ""
    mandatory: bool = False
    delay: float | None = None

    def check(self) -> None:
        """Raise ProtocolError unless the envelope is an Envelope, TopologyError unless the
        routing key is one AMQP allows: what every transport refuses before publishing."""
        if not isinstance(self.envelope, Envelope):
            raise ProtocolError(
                f"publish takes an Envelope, got {type(self.envelope).__name__}: wrap the body "
                "in conveyor.Envelope(body=...)"
            )
        check_routing_key(self.routing_key)


@dataclass(frozen=True, slots=True)
class Subscription:
    """What :meth:`Transport.consume` was asked for, checked: at least one queue, each named
    once in the order given; ``prefetch``, ``no_ack`` and ``tag`` as ``consume`` takes them
    (``tag`` None: the transport picks one)."""

    queues: tuple[str, ...]
    prefetch: int = 0
    no_ack: bool = False
    tag: str | None = None

    @classmethod
    def of(
        cls, queues: Sequence[str], prefetch: int, no_ack: bool, tag: str | None
    ) -> Subscription:
        """Check ``consume``'s arguments (ConfigurationError) and gather them; a lone queue
        name given as a string counts as one queue."""
        names = (queues,) if isinstance(queues, str) else tuple(dict.fromkeys(queues))
        if not names:
            raise ConfigurationError("consume needs at least one queue")
        if prefetch < 0:
            raise ConfigurationError(f"prefetch must be zero or more, got {prefetch}")
        return cls(names, prefetch, no_ack, tag)


class Consumer(Scoped):
    """A subscription to one or more queues, iterated with ``async for``.

    At most ``prefetch`` deliveries are outstanding (handed out and not yet settled) at a time;
    0 means no limit. Iteration ends after :meth:`cancel` or when the transport closes.
    """

    tag: str
    queues: tuple[str, ...]
    prefetch: int
    no_ack: bool

    def __init__(self, subscription: Subscription, tag: str) -> None:
        """Consume as ``subscription`` says, under consumer tag ``tag``."""
        self.tag = tag
        self.queues = subscription.queues
        self.prefetch = subscription.prefetch
        self.no_ack = subscription.no_ack

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Delivery]:
        """Yield deliveries as they arrive, waiting while there are none."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving. Idempotent.

        Deliveries already yielded stay unacked and can still be settled; deliveries the
        transport had prefetched but not yielded go back to their queues at once.
        """

    async def _exit(self) -> None:
        # Leaving ``async with consumer:`` cancels it.
        await self.cancel()


class Wakeup:
    """A one-shot signal one thread blocks on and any thread (or several sources) may set.

    Lighter than ``threading.Event`` (one lock, no condition): the sync API waits on one for
    "the broker confirmed my message or its reply came, whichever is first".
    """

    __slots__ = ("_flag", "_lock", "_set", "on_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._flag = threading.Lock()
        self._set = False
        self.on_set: Callable[[], None] | None = None
        """Called (in the setting thread) when set: lets a waiter that runs an event loop
        instead of blocking on :meth:`wait` hear of it."""

    def set(self) -> None:
        """Release the waiter; later calls do nothing. Any thread."""
        with self._flag:
            if self._set:
                return
            self._set = True
            hook = self.on_set
        self._lock.release()
        if hook is not None:
            hook()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`set` (True) or ``timeout`` seconds pass (False). One waiter."""
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._lock.release()  # stays set: a second wait returns at once
            return True
        return self._set


class Published(abc.ABC):
    """A message written by :meth:`Transport.publish_from_thread`, its broker's answer pending.

    The transport's event loop settles it (and sets the :class:`Wakeup` given to the publish)
    when the broker answers; the thread that published reads it with :meth:`result` once
    :attr:`done`, or gives up after :attr:`timeout` seconds with :meth:`expire`.
    """

    timeout: float
    """Seconds the publisher waits for the broker's answer, as ``publish`` would."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """True once the broker answered (or the connection was lost)."""

    @abc.abstractmethod
    def result(self) -> int | None:
        """Once :attr:`done`: what ``publish`` would return (1 routed; 0 returned, not
        mandatory), or raise what it would (Unroutable, TransportError). None: the
        connection or channel went before the broker answered; the message may or may not be
        stored, so publish it again through the loop, as ``publish`` itself would retry."""

    @abc.abstractmethod
    def expire(self) -> BaseException:
        """Stop waiting for the answer and return the error to raise (no answer in time)."""


class Transport(Connectable):
    """A connection to one broker. Create with :func:`conveyor.transports.open_transport`.

    Use as ``async with transport:`` or call :meth:`connect` and :meth:`close`. Methods other than
    ``connect`` raise BrokerUnavailable when the transport is not connected.
    """

    capabilities: ClassVar[Capabilities]
    url: str

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        """Build an unconnected transport; raise ConfigurationError for a malformed URL."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection (idempotent); BrokerUnavailable if the broker can't be reached."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel every consumer and close (idempotent).

        Unsettled deliveries return to their queues; exclusive queues of this connection are
        deleted; pending acks are flushed first.
        """

    @abc.abstractmethod
    async def declare_exchange(self, exchange: Exchange, *, passive: bool = False) -> None:
        """Declare ``exchange``. Idempotent.

        ``passive``: only check that it exists (NotFound if not). An exchange that exists with a
        different type or arguments raises PreconditionFailed. The default exchange needs no
        declaring.
        """

    @abc.abstractmethod
    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete exchange ``name`` and its bindings. Deleting a missing exchange is not an error.

        ``if_unused``: raise PreconditionFailed if queues are still bound to it.
        """

    @abc.abstractmethod
    async def declare_queue(self, queue: Queue, *, passive: bool = False) -> QueueStats:
        """Declare ``queue`` with its arguments and bindings, and return its stats. Idempotent.

        Exchanges named in its bindings by an Exchange object are declared first; exchanges
        named by a string must exist (NotFound otherwise). A queue that exists with different
        arguments raises PreconditionFailed naming both argument sets. ``passive``: only check
        that it exists (NotFound if not). An ``exclusive`` queue belongs to this connection and is
        deleted when it closes or dies.
        """

    async def _declare_bindings(
        self, queue: Queue, store: Callable[[BoundBinding], Awaitable[None]]
    ) -> None:
        """``declare_queue``'s last step where the broker does not do it: declare the exchanges
        that ``queue``'s bindings give as Exchange objects, and hand each binding (but those to
        the default exchange, which binds every queue already) to ``store``."""
        for b in queue.all_bindings:
            if isinstance(b.exchange, Exchange):
                if b.exchange.is_default:
                    continue
                await self.declare_exchange(b.exchange)
            elif not b.exchange:
                continue
            await store(BoundBinding(b.exchange_name, queue.name, b.routing_key, b.arguments))

    @abc.abstractmethod
    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete queue ``name`` with its bindings and messages; return how many messages went.

        Deleting a missing queue returns 0. ``if_unused``/``if_empty``: raise PreconditionFailed
        if it has consumers / messages.
        """

    @abc.abstractmethod
    async def purge_queue(self, name: str) -> int:
        """Remove every ready message of queue ``name``; return how many. Unacked ones stay."""

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Bind ``queue`` to ``exchange``. Idempotent. NotFound if either does not exist;
        TopologyError for a routing key AMQP does not allow."""
        await self._bind(BoundBinding(exchange, queue, routing_key, arguments or {}))

    @abc.abstractmethod
    async def _bind(self, binding: BoundBinding) -> None:
        """Store ``binding`` (its routing key checked): the primitive behind ``bind_queue``."""

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Remove that binding. Removing a binding that does not exist is not an error."""
        await self._unbind(BoundBinding(exchange, queue, routing_key, arguments or {}))

    @abc.abstractmethod
    async def _unbind(self, binding: BoundBinding) -> None:
        """Remove ``binding`` if it exists: the primitive behind ``unbind_queue``."""

    async def publish(
        self,
        envelope: Envelope,
        *,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        delay: float | None = None,
    ) -> int:
        """Route ``envelope`` and store a copy in each destination queue; return how many.

        Returns once the broker has the message safely (confirmed, committed). ``delay`` seconds
        keep it invisible until due. NotFound if ``exchange`` does not exist; Unroutable if
        ``mandatory`` and no queue took it; ProtocolError if ``envelope`` is not an Envelope.
        All copies are written or none.
        """
        message = Outgoing(envelope, exchange, routing_key, mandatory, delay)
        message.check()
        return await self._publish(message)

    @abc.abstractmethod
    async def _publish(self, message: Outgoing) -> int:
        """Publish one checked message (see :meth:`Outgoing.check`) as ``publish`` says."""

    def publish_from_thread(
        self,
        envelope: Envelope,
        *,
        exchange: str = "",
        routing_key: str,
        mandatory: bool = False,
        wakeup: Wakeup | None = None,
    ) -> Published | None:
        """Publish from a thread other than this transport's event loop, without a trip
        through it: the frames go straight onto the connection and the loop only settles the
        broker's answer (setting ``wakeup``). None if this transport cannot do that there and
        then (the default): nothing was written; publish on the loop instead, which also
        reports what is wrong with a message it refuses.

        The exchange must be known to exist on this connection (published to before) and the
        envelope must carry no ``message_id`` of its own. A message the broker does not store
        (a reply to a RabbitMQ direct reply-to address, ``amq.rabbitmq.reply-to.*``) is done
        once written. Anything the loop writes afterwards goes out after it.

        The sync API sends tasks this way, and a worker's pool thread a task's reply.
        """
        return self._publish_from_thread(
            Outgoing(envelope, exchange, routing_key, mandatory), wakeup
        )

    def _publish_from_thread(self, message: Outgoing, wakeup: Wakeup | None) -> Published | None:
        """The primitive behind ``publish_from_thread`` (``message`` not checked yet, its
        ``delay`` None); this default cannot, and returns None."""
        return None

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[int]:
        """Publish several messages; return each one's queue count, in order.

        Each is checked as ``publish`` checks it before any is published. The first failure
        raises; messages before it may have been stored.
        """
        for message in messages:
            message.check()
        return await self._publish_many(messages)

    async def _publish_many(self, messages: Sequence[Outgoing]) -> list[int]:
        """Publish checked messages, one after another; transports override this to batch
        (one transaction, pipelined confirms)."""
        return [await self._publish(message) for message in messages]

    @abc.abstractmethod
    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        """Take one ready message from ``queue`` (highest priority first), or None if empty.

        With ``no_ack`` the message is settled on delivery; otherwise settle it with ``ack``,
        ``nack`` or ``reject``. NotFound if the queue does not exist.
        """

    async def consume(
        self,
        queues: Sequence[str],
        *,
        prefetch: int = 0,
        no_ack: bool = False,
        tag: str | None = None,
    ) -> Consumer:
        """Subscribe to ``queues``; NotFound if any does not exist, ConfigurationError if none
        is named or ``prefetch`` is negative.

        ``prefetch`` bounds unsettled deliveries (0: no bound). With ``no_ack`` deliveries are
        settled as they are handed out.
        """
        return await self._consume(Subscription.of(queues, prefetch, no_ack, tag))

    @abc.abstractmethod
    async def _consume(self, subscription: Subscription) -> Consumer:
        """Subscribe as ``subscription`` (checked) says: the primitive behind ``consume``."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Settle ``delivery`` as done; the message is gone for good.

        May be batched with other acks, but is durable by the time ``close`` returns. Acking a
        delivery twice, or one whose consumer's lease has lapsed, is a no-op.
        """

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries; transports override this to batch."""
        for delivery in deliveries:
            await self.ack(delivery)

    @abc.abstractmethod
    async def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        """Settle ``delivery`` as not done.

        ``requeue``: the message returns to its queue, redelivered (or is dead-lettered with
        reason ``delivery_limit`` past ``x-delivery-limit``). Otherwise it is dead-lettered with
        reason ``rejected`` if the queue has a dead-letter exchange, else dropped.
        """

    async def reject(self, delivery: Delivery, *, requeue: bool = False) -> None:
        """Reject ``delivery``; the same as ``nack`` but requeue defaults to False."""
        await self.nack(delivery, requeue=requeue)

    @abc.abstractmethod
    async def queue_stats(self, name: str) -> QueueStats:
        """Ready, unacked and consumer counts of queue ``name``; NotFound if it does not exist.

        On RabbitMQ ``unacked`` counts the deliveries this connection holds: the broker reports
        the rest only through its management API.
        """
