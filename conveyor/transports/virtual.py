"""AMQP semantics implemented once, over the storage primitives of :mod:`.storage`.

``VirtualTransport`` routes with :func:`conveyor.routing.matching.destinations` over a cached
:class:`~conveyor.routing.topology.Topology` (validated by the storage's topology version at
every write), and turns storage leases into AMQP deliveries: priorities, TTL, ``x-max-length``,
``x-expires``, exclusive and auto-delete queues, dead-lettering with RabbitMQ's ``x-death``
header, ``x-delivery-limit``, delayed delivery, prefetch, and at-least-once redelivery when a
connection dies (its lease, renewed by a background task while the transport lives, lapses).

Acks are batched: ``ack`` records the tag and returns; pending acks travel with the consumer's
next fetch, or are written within a few milliseconds, and always before ``close`` returns or
before this transport reads stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from conveyor.errors import (
    BrokerUnavailable,
    ConfigurationError,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    TopologyError,
    Unroutable,
)
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, FrozenMapping, Queue, check_routing_key
from conveyor.routing.matching import destinations
from conveyor.routing.topology import BoundBinding
from conveyor.transports.base import (
    Capabilities,
    Consumer,
    Delivery,
    DeliveryTag,
    Outgoing,
    QueueStats,
    Transport,
)
from conveyor.transports.storage import (
    Listener,
    NewMessage,
    Reaped,
    StaleTopology,
    Storage,
    StoredMessage,
    TopologySnapshot,
)

__all__ = ["VirtualTransport", "virtual_capabilities"]

log = logging.getLogger("conveyor.transports")

_FETCH_BATCH = 256
_ACK_BATCH = 512
_ACK_DELAY = 0.005
_MAX_ROUTE_ATTEMPTS = 20

# The queue arguments RabbitMQ compares when a queue is declared again.
_EQUIVALENCE_ARGUMENTS = (
    "x-max-priority",
    "x-message-ttl",
    "x-expires",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-delivery-limit",
    "x-queue-type",
    "x-overflow",
    "x-single-active-consumer",
    "x-max-length-bytes",
)


def virtual_capabilities(*, shared: bool) -> Capabilities:
    """What a VirtualTransport does on any storage; ``shared``: whether other processes see it."""
    return Capabilities(
        native_exchanges=False,
        max_priority=255,
        delayed_delivery=True,
        direct_reply_to=False,
        shared=shared,
    )


def _describe_queue(queue: Queue) -> str:
    args = {k: queue.arguments[k] for k in sorted(queue.arguments)}
    return (
        f"(durable={queue.durable}, exclusive={queue.exclusive}, "
        f"auto_delete={queue.auto_delete}, arguments={args})"
    )


def _describe_exchange(exchange: Exchange) -> str:
    return (
        f"(type={exchange.type.value}, durable={exchange.durable}, "
        f"auto_delete={exchange.auto_delete}, arguments={dict(exchange.arguments)})"
    )


def _queue_equivalent(a: Queue, b: Queue) -> bool:
    if (a.durable, a.exclusive, a.auto_delete) != (b.durable, b.exclusive, b.auto_delete):
        return False
    for key in _EQUIVALENCE_ARGUMENTS:
        va, vb = a.arguments.get(key), b.arguments.get(key)
        if key == "x-queue-type":
            va, vb = va or "classic", vb or "classic"
        if va != vb:
            return False
    return True


def _exchange_equivalent(a: Exchange, b: Exchange) -> bool:
    return (a.type, a.durable, a.auto_delete, a.alternate_exchange) == (
        b.type,
        b.durable,
        b.auto_delete,
        b.alternate_exchange,
    )


def _check_queue_arguments(queue: Queue) -> None:
    args = queue.arguments
    overflow = args.get("x-overflow", "drop-head")
    if overflow != "drop-head":
        raise TopologyError(
            f"queue {queue.name!r}: x-overflow {overflow!r} is not available on this broker; "
            "use 'drop-head' (the default) or RabbitMQ"
        )
    if "x-max-length-bytes" in args:
        raise TopologyError(
            f"queue {queue.name!r}: x-max-length-bytes is not available on this broker; "
            "limit the queue by count with x-max-length"
        )
    if args.get("x-single-active-consumer"):
        raise TopologyError(
            f"queue {queue.name!r}: x-single-active-consumer is not available on this broker; "
            "run one consumer, or use RabbitMQ"
        )
    if args.get("x-queue-type", "classic") not in ("classic", "quorum"):
        raise TopologyError(
            f"queue {queue.name!r}: x-queue-type {args['x-queue-type']!r} is not available on "
            "this broker; use 'classic' or 'quorum'"
        )
    for key in ("x-message-ttl", "x-expires", "x-max-length", "x-delivery-limit"):
        value = args.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TopologyError(f"queue {queue.name!r}: {key} must be an integer, got {value!r}")
        if value is not None and value < 0:
            raise TopologyError(f"queue {queue.name!r}: {key} must be zero or more, got {value}")


def _is_cycle(target: str, deaths: Sequence[Mapping[str, Any]]) -> bool:
    # RabbitMQ drops a dead letter that comes back to a queue it died in without any of the
    # deaths since being a rejection (an automatic loop).
    for death in deaths:
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == target:
            return True
    return False


def _with_death(
    message: StoredMessage, reason: str, now: float
) -> tuple[Envelope, list[dict[str, Any]]]:
    """The envelope as RabbitMQ dead-letters it: ``x-death`` updated, expiration removed."""
    env = message.envelope
    old = env.headers.get("x-death")
    deaths: list[dict[str, Any]] = (
        [dict(d) for d in old if isinstance(d, Mapping)] if isinstance(old, list) else []
    )
    entry: dict[str, Any] | None = None
    for i, death in enumerate(deaths):
        if death.get("queue") == message.queue and death.get("reason") == reason:
            entry = deaths.pop(i)
            break
    if entry is None:
        entry = {
            "count": 0,
            "reason": reason,
            "queue": message.queue,
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
        if env.expiration is not None:
            entry["original-expiration"] = str(round(env.expiration * 1000))
    entry["count"] = int(entry.get("count", 0)) + 1
    entry["time"] = int(now)
    deaths.insert(0, entry)
    headers: dict[str, Any] = {**env.headers, "x-death": deaths}
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", message.queue)
    headers.setdefault("x-first-death-exchange", message.exchange)
    new_env = Envelope(
        body=env.body,
        headers=FrozenMapping(headers),
        content_type=env.content_type,
        content_encoding=env.content_encoding,
        correlation_id=env.correlation_id,
        reply_to=env.reply_to,
        priority=env.priority,
        expiration=None,
        message_id=env.message_id,
        timestamp=env.timestamp,
        type=env.type,
        app_id=env.app_id,
        delivery_mode=env.delivery_mode,
    )
    return new_env, deaths


def _copy_for(
    queue: Queue, envelope: Envelope, exchange: str, routing_key: str, now: float, delay: float
) -> NewMessage:
    levels = queue.priority_levels
    priority = min(envelope.priority or 0, levels) if levels is not None else 0
    not_before = now + delay if delay > 0 else None
    ttl: float | None = None
    queue_ttl = queue.arguments.get("x-message-ttl")
    if queue_ttl is not None:
        ttl = queue_ttl / 1000
    if envelope.expiration is not None:
        ttl = envelope.expiration if ttl is None else min(ttl, envelope.expiration)
    expires_at = (not_before or now) + ttl if ttl is not None else None
    return NewMessage(
        queue=queue.name,
        envelope=envelope,
        exchange=exchange,
        routing_key=routing_key,
        priority=priority,
        not_before=not_before,
        expires_at=expires_at,
    )


class _VirtualConsumer(Consumer):
    """A consumer over storage leases: fetches in batches within its prefetch credit."""

    def __init__(
        self,
        transport: VirtualTransport,
        queues: tuple[str, ...],
        *,
        prefetch: int,
        no_ack: bool,
        tag: str,
        listener: Listener,
    ) -> None:
        self.tag = tag
        self.queues = queues
        self._transport = transport
        self._prefetch = prefetch
        self._no_ack = no_ack
        self._listener = listener
        self._buffer: deque[StoredMessage] = deque()
        self._unsettled: set[DeliveryTag] = set()
        self._settled = asyncio.Event()
        self._cancelled = False
        self._turn = 0
        self._inflight: asyncio.Future[tuple[list[StoredMessage], bool]] | None = None
        self._drained = False  # the last fetch got fewer than it asked for

    def __aiter__(self) -> _VirtualConsumer:
        return self

    def _credit(self) -> int:
        if self._no_ack or self._prefetch == 0:
            return _FETCH_BATCH
        return min(_FETCH_BATCH, self._prefetch - len(self._unsettled))

    def _rotated(self) -> list[str]:
        n = len(self.queues)
        self._turn = (self._turn + 1) % n
        return [*self.queues[self._turn :], *self.queues[: self._turn]]

    async def __anext__(self) -> Delivery:
        transport = self._transport
        waited = False
        while True:
            if self._cancelled or not transport.is_connected:
                await self._give_back()
                raise StopAsyncIteration
            if self._buffer:
                message = self._buffer.popleft()
                if self._no_ack:
                    transport._ack_tag(message.tag)
                else:
                    self._unsettled.add(message.tag)
                return transport._delivery(message, self.tag)
            credit = self._credit()
            if credit <= 0:
                self._settled.clear()
                await self._settled.wait()
                continue
            messages: list[StoredMessage] = []
            if self._inflight is None and self._drained and not waited:
                # The last fetch took all there was: a publish since then wakes the listener,
                # so wait for that instead of asking the storage again straight away.
                self._drained = False
            else:
                if self._inflight is None:
                    # acks ride along after a wait; a fetch straight after a delivery leaves
                    # them to the ack timer, so a trickle of messages costs one write each
                    self._inflight = asyncio.ensure_future(
                        transport._fetch(self._rotated(), credit, carry_acks=waited)
                    )
                # shielded: if this call is cancelled, the next one picks up what was leased
                messages, drained = await asyncio.shield(self._inflight)
                self._inflight = None
                self._drained = drained and bool(messages)
            if messages:
                self._buffer.extend(messages)
                continue
            if waited:
                # woken (or timed out) for nothing: maybe its queues were deleted
                await transport._check_consumer_queues(self)
                if self._cancelled:
                    continue
            timeout = transport._poll_interval
            due = await transport._storage.next_due(self.queues)
            if due is not None:
                timeout = max(0.0, min(timeout, due - time.time()))
            await self._listener.wait(timeout)
            waited = True

    def _settle(self, tag: DeliveryTag) -> None:
        self._unsettled.discard(tag)
        self._settled.set()

    def _forget_leases(self) -> None:
        self._buffer.clear()
        self._unsettled.clear()
        self._settled.set()

    async def _give_back(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            with contextlib.suppress(Exception):
                self._buffer.extend((await inflight)[0])
        if not self._buffer:
            return
        tags = [m.tag for m in self._buffer]
        self._buffer.clear()
        if self._transport.is_connected:
            await self._transport._storage.release(tags, connection=self._transport.connection_id)

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._settled.set()
        await self._listener.close()
        transport = self._transport
        transport._consumers.pop(self.tag, None)
        if transport.is_connected:
            await self._give_back()
            idle = await transport._storage.remove_consumer(transport.connection_id, self.tag)
            await transport._delete_auto_delete(idle)


class VirtualTransport(Transport):
    """A Transport that implements AMQP itself over a :class:`Storage`.

    Subclasses set ``capabilities`` (from :func:`virtual_capabilities`) and build the storage in
    ``from_url``. ``lease`` is how long this connection's deliveries stay leased without a
    renewal (renewed every quarter lease); ``poll_interval`` bounds how long an idle consumer
    trusts its wake-ups before looking.
    """

    capabilities: ClassVar[Capabilities]

    def __init__(
        self,
        url: str,
        storage: Storage,
        *,
        lease: float = 5.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.url = url
        self._storage = storage
        self._lease = lease
        self._poll_interval = poll_interval
        self.connection_id = f"{uuid.uuid4().hex}"
        self._connected = False
        self._snapshot: TopologySnapshot | None = None
        self._loading: asyncio.Future[TopologySnapshot] | None = None
        self._consumers: dict[str, _VirtualConsumer] = {}
        self._pending_acks: list[DeliveryTag] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_task: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._housekeeper_wake = asyncio.Event()
        self._queue_expiry_at: float | None = None

    @property
    def is_connected(self) -> bool:
        """True between a successful ``connect`` and ``close``."""
        return self._connected

    # lifecycle

    async def connect(self) -> None:
        if self._connected:
            return
        await self._storage.open()
        await self._storage.renew(self.connection_id, lease=self._lease)
        self._snapshot = await self._storage.load_topology()
        self._connected = True
        self._housekeeper_wake = asyncio.Event()
        self._housekeeper = asyncio.create_task(
            self._housekeep(), name=f"conveyor-housekeeper-{self.connection_id[:8]}"
        )

    async def close(self) -> None:
        if not self._connected:
            return
        housekeeper, self._housekeeper = self._housekeeper, None
        if housekeeper is not None:
            housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeper
        try:
            for consumer in list(self._consumers.values()):
                await consumer.cancel()
            if self._ack_task is not None:
                with contextlib.suppress(Exception):
                    await self._ack_task
            await self._flush_acks()
            idle = await self._storage.disconnect(self.connection_id)
            snap = await self._fresh_topology()
            for name, owner in snap.owners.items():
                if owner == self.connection_id:
                    await self._remove_queue(name)
            await self._delete_auto_delete(idle)
        finally:
            self._connected = False
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
            await self._storage.close()

    def _check_open(self) -> None:
        if not self._connected:
            raise BrokerUnavailable(
                f"transport {self.url!r} is not connected: call connect() (or use 'async with')"
            )

    # topology cache

    def _invalidate(self) -> None:
        """Forget the cached topology (and any load in flight): it changed."""
        self._snapshot = None
        self._loading = None

    async def _load_topology(self) -> TopologySnapshot:
        # one load at a time: a burst of concurrent publishes shares it
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._storage.load_topology())
        loading = self._loading
        snap = await asyncio.shield(loading)
        if self._loading is loading:
            self._snapshot = snap
        return snap

    async def _topology(self) -> TopologySnapshot:
        snap = self._snapshot
        if snap is None:
            snap = await self._load_topology()
        return snap

    async def _fresh_topology(self) -> TopologySnapshot:
        snap = self._snapshot
        if snap is None or await self._storage.topology_version() != snap.version:
            snap = await self._load_topology()
        return snap

    def _check_access(self, snap: TopologySnapshot, queue: str) -> None:
        owner = snap.owners.get(queue)
        if owner is not None and owner != self.connection_id:
            raise PreconditionFailed(
                f"queue {queue!r} is exclusive to another connection (RESOURCE_LOCKED): only "
                "the connection that declared it can use it"
            )

    async def _existing_queue(
        self, name: str, *, fresh: bool = False
    ) -> tuple[TopologySnapshot, Queue]:
        """The queue ``name`` (NotFound if missing, PreconditionFailed if another connection's
        exclusive queue); ``fresh`` checks the cached topology against storage first."""
        snap = await (self._fresh_topology() if fresh else self._topology())
        if name not in snap.topology.queues or (
            not fresh and snap.owners.get(name, self.connection_id) != self.connection_id
        ):
            snap = await self._fresh_topology()
        queue = snap.topology.queues.get(name)
        if queue is None:
            raise NotFound(f"queue {name!r} does not exist: declare it first")
        self._check_access(snap, name)
        return snap, queue

    # declarations

    async def declare_exchange(self, exchange: Exchange, *, passive: bool = False) -> None:
        self._check_open()
        if exchange.is_default:
            return
        if passive:
            snap = await self._fresh_topology()
            if exchange.name not in snap.topology.exchanges:
                raise NotFound(f"exchange {exchange.name!r} does not exist: declare it first")
            return
        stored = await self._storage.add_exchange(exchange)
        if not _exchange_equivalent(stored, exchange):
            raise PreconditionFailed(
                f"exchange {exchange.name!r} exists as {_describe_exchange(stored)}, not "
                f"{_describe_exchange(exchange)}: declare it as it is, or delete it first"
            )
        cached = self._snapshot
        if cached is not None and exchange.name not in cached.topology.exchanges:
            self._invalidate()

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        self._check_open()
        if name == "":
            raise PreconditionFailed("the default exchange cannot be deleted")
        snap = await self._fresh_topology()
        if name not in snap.topology.exchanges:
            return
        if if_unused and snap.topology.bindings_of(name):
            raise PreconditionFailed(
                f"exchange {name!r} still has queues bound to it: unbind them or drop if_unused"
            )
        await self._storage.remove_exchange(name)
        self._invalidate()

    async def declare_queue(self, queue: Queue, *, passive: bool = False) -> QueueStats:
        self._check_open()
        if passive:
            await self._existing_queue(queue.name, fresh=True)
            return await self._storage.stats(queue.name)
        _check_queue_arguments(queue)
        snap = await self._fresh_topology()
        for b in queue.all_bindings:
            if (
                isinstance(b.exchange, str)
                and b.exchange
                and not snap.topology.has_exchange(b.exchange)
            ):
                raise NotFound(
                    f"queue {queue.name!r} binds to exchange {b.exchange!r}, which does not "
                    "exist: declare the exchange first (or pass an Exchange object)"
                )
        plain = Queue(
            queue.name,
            queue_arguments=queue.arguments,
            durable=queue.durable,
            exclusive=queue.exclusive,
            auto_delete=queue.auto_delete,
        )
        owner = self.connection_id if queue.exclusive else None
        stored, stored_owner = await self._storage.add_queue(plain, owner=owner)
        if stored_owner is not None and stored_owner != self.connection_id:
            raise PreconditionFailed(
                f"queue {queue.name!r} is exclusive to another connection (RESOURCE_LOCKED): "
                "choose another name"
            )
        if not _queue_equivalent(stored, plain):
            raise PreconditionFailed(
                f"queue {queue.name!r} exists as {_describe_queue(stored)}, not "
                f"{_describe_queue(plain)}: declare it as it is, or delete it first"
            )
        for b in queue.all_bindings:
            if isinstance(b.exchange, Exchange):
                if b.exchange.is_default:
                    continue
                await self.declare_exchange(b.exchange)
            elif not b.exchange:
                continue
            await self._storage.add_binding(
                BoundBinding(b.exchange_name, queue.name, b.routing_key, b.arguments)
            )
        self._invalidate()
        if "x-expires" in queue.arguments:
            self._housekeeper_wake.set()  # it schedules the expiry
        return await self._storage.stats(queue.name)

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        self._check_open()
        await self._flush_acks()
        snap = await self._fresh_topology()
        if name not in snap.topology.queues:
            return 0
        self._check_access(snap, name)
        if if_unused or if_empty:
            stats = await self._storage.stats(name)
            if if_unused and stats.consumers:
                raise PreconditionFailed(
                    f"queue {name!r} has {stats.consumers} consumer(s): cancel them or drop "
                    "if_unused"
                )
            if if_empty and stats.ready:
                raise PreconditionFailed(
                    f"queue {name!r} has {stats.ready} message(s): purge it or drop if_empty"
                )
        return await self._remove_queue(name)

    async def purge_queue(self, name: str) -> int:
        self._check_open()
        await self._existing_queue(name, fresh=True)
        return await self._storage.purge(name)

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._check_open()
        check_routing_key(routing_key)
        if exchange == "":
            raise PreconditionFailed(
                "queues cannot be bound to the default exchange: it already routes to every "
                "queue by its name"
            )
        snap, _ = await self._existing_queue(queue)
        if exchange not in snap.topology.exchanges:
            snap = await self._fresh_topology()
            if exchange not in snap.topology.exchanges:
                raise NotFound(f"exchange {exchange!r} does not exist: declare it first")
        await self._storage.add_binding(BoundBinding(exchange, queue, routing_key, arguments or {}))
        self._invalidate()

    async def _remove_queue(self, name: str) -> int:
        """Remove queue ``name``, then the auto-delete exchanges it was the last binding of."""
        snap = await self._fresh_topology()
        sources = {b.exchange for b in snap.topology.bindings if b.queue == name}
        removed = await self._storage.remove_queue(name)
        self._invalidate()
        await self._drop_unbound_exchanges(sources)
        return removed

    async def _drop_unbound_exchanges(self, names: set[str]) -> None:
        """Delete the auto-delete exchanges among ``names`` that have no bindings left."""
        if not names:
            return
        snap = await self._fresh_topology()
        for name in sorted(names):
            exchange = snap.topology.exchanges.get(name)
            unbound = exchange is not None and not snap.topology.bindings_of(name)
            if unbound and exchange is not None and exchange.auto_delete:
                await self._storage.remove_exchange(name)
                self._invalidate()

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._check_open()
        if exchange == "":
            return
        await self._storage.remove_binding(
            BoundBinding(exchange, queue, routing_key, arguments or {})
        )
        self._invalidate()
        await self._drop_unbound_exchanges({exchange})

    # publishing

    async def publish(
        self,
        envelope: Envelope,
        *,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        delay: float | None = None,
    ) -> int:
        counts = await self.publish_many(
            [Outgoing(envelope, exchange, routing_key, mandatory, delay)]
        )
        return counts[0]

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[int]:
        """Route and store ``messages`` in one storage write; return each one's queue count.

        On the first message that cannot be published (unknown exchange, mandatory and
        unroutable) the messages before it are stored and the error is raised.
        """
        self._check_open()
        for m in messages:
            if not isinstance(m.envelope, Envelope):
                raise ProtocolError(
                    f"publish takes an Envelope, got {type(m.envelope).__name__}: wrap the body "
                    "in conveyor.Envelope(body=...)"
                )
            check_routing_key(m.routing_key)
            if m.delay is not None and not m.delay >= 0:
                raise ProtocolError(f"delay must be zero or more seconds, got {m.delay!r}")
        if not messages:
            return []
        for _ in range(_MAX_ROUTE_ATTEMPTS):
            now = time.time()
            validated = self._snapshot is None
            snap = await self._topology()
            copies: list[NewMessage] = []
            counts: list[int] = []
            failure: Exception | None = None
            for m in messages:
                try:
                    names = destinations(
                        snap.topology, m.exchange, m.routing_key, m.envelope.headers
                    )
                except NotFound as exc:
                    failure = exc
                    break
                if not names and m.mandatory:
                    failure = Unroutable(
                        f"message to exchange {m.exchange!r} with routing key "
                        f"{m.routing_key!r} reached no queue: bind a queue that matches it, "
                        "or publish without mandatory",
                        exchange=m.exchange,
                        routing_key=m.routing_key,
                    )
                    break
                counts.append(len(names))
                delay = m.delay or 0.0
                for name in sorted(names):
                    copies.append(
                        _copy_for(
                            snap.topology.queues[name],
                            m.envelope,
                            m.exchange,
                            m.routing_key,
                            now,
                            delay,
                        )
                    )
            if not validated and (failure is not None or 0 in counts):
                # A negative answer from a cached topology must be checked against storage.
                version = await self._storage.topology_version()
                if version != snap.version:
                    self._invalidate()
                    continue
            try:
                overflow = await self._storage.enqueue(
                    copies, topology_version=snap.version, connection=self.connection_id
                )
            except StaleTopology:
                self._invalidate()
                continue
            if overflow:
                await self._dead_letter([(o, "maxlen") for o in overflow])
            if any(c.expires_at is not None for c in copies):
                self._housekeeper_wake.set()
            if failure is not None:
                raise failure
            return counts
        raise BrokerUnavailable("the topology kept changing while publishing; retry the publish")

    async def _dead_letter(self, items: Sequence[tuple[StoredMessage, str]]) -> None:
        """Settle leased ``items``: move each to its queue's dead-letter exchange (or drop it
        when the queue has none), atomically with removing the original."""
        pending = list(items)
        for _ in range(_MAX_ROUTE_ATTEMPTS * 4):
            if not pending:
                return
            now = time.time()
            snap = await self._topology()
            copies: list[NewMessage] = []
            doubtful = False
            for message, reason in pending:
                queue = snap.topology.queues.get(message.queue)
                dlx = queue.dead_letter_exchange if queue is not None else None
                if queue is None or dlx is None:
                    doubtful = doubtful or queue is None
                    continue
                routing_key = queue.dead_letter_routing_key or message.routing_key
                envelope, deaths = _with_death(message, reason, now)
                try:
                    names = destinations(snap.topology, dlx, routing_key, envelope.headers)
                except NotFound:
                    names = frozenset()
                if not names:
                    doubtful = True
                for name in sorted(names):
                    if _is_cycle(name, deaths):
                        log.warning(
                            "dropping dead letter from queue %r: it would cycle back to %r",
                            message.queue,
                            name,
                        )
                        continue
                    copies.append(
                        _copy_for(snap.topology.queues[name], envelope, dlx, routing_key, now, 0)
                    )
            if doubtful and await self._storage.topology_version() != snap.version:
                self._invalidate()
                continue
            try:
                overflow = await self._storage.enqueue(
                    copies,
                    topology_version=snap.version,
                    connection=self.connection_id,
                    settle=[m.tag for m, _ in pending],
                )
            except StaleTopology:
                self._invalidate()
                continue
            if any(c.expires_at is not None for c in copies):
                self._housekeeper_wake.set()
            pending = [(o, "maxlen") for o in overflow]
        if pending:
            raise BrokerUnavailable("the topology kept changing while dead-lettering; retry")

    # consuming

    def _delivery(self, message: StoredMessage, consumer_tag: str | None) -> Delivery:
        return Delivery(
            envelope=message.envelope,
            queue=message.queue,
            exchange=message.exchange,
            routing_key=message.routing_key,
            redelivered=message.delivery_count > 1,
            delivery_count=message.delivery_count,
            tag=message.tag,
            consumer_tag=consumer_tag,
        )

    async def _fetch(
        self, queues: Sequence[str], limit: int, *, carry_acks: bool = True
    ) -> tuple[list[StoredMessage], bool]:
        """Lease up to ``limit`` deliverable messages, dead-lettering expired and over-limit
        ones on the way; with ``carry_acks`` pending acks travel with the same storage call.

        Also says whether the storage handed over fewer than asked: then nothing more was
        deliverable in ``queues`` at that moment, and only a publish (which wakes listeners) or
        a due time changes that.
        """
        while True:
            acks: list[DeliveryTag] = []
            if carry_acks:
                acks, self._pending_acks = self._pending_acks, []
            try:
                messages = await self._storage.dequeue(
                    queues, connection=self.connection_id, limit=limit, ack=acks
                )
            except BaseException:
                self._pending_acks[:0] = acks
                raise
            drained = len(messages) < limit
            if not messages:
                return [], True
            now = time.time()
            snap = await self._topology()
            if any(m.queue not in snap.topology.queues for m in messages):
                snap = await self._fresh_topology()
            good: list[StoredMessage] = []
            dead: list[tuple[StoredMessage, str]] = []
            for m in messages:
                if m.expires_at is not None and m.expires_at <= now:
                    dead.append((m, "expired"))
                    continue
                queue = snap.topology.queues.get(m.queue)
                limit_arg = queue.arguments.get("x-delivery-limit") if queue else None
                if limit_arg is not None and m.delivery_count - 1 > limit_arg:
                    dead.append((m, "delivery_limit"))
                    continue
                good.append(m)
            if dead:
                await self._dead_letter(dead)
            if good:
                return good, drained

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        self._check_open()
        await self._existing_queue(queue)
        messages, _ = await self._fetch([queue], 1)
        if not messages:
            return None
        if no_ack:
            self._ack_tag(messages[0].tag)
        return self._delivery(messages[0], None)

    async def consume(
        self,
        queues: Sequence[str],
        *,
        prefetch: int = 0,
        no_ack: bool = False,
        tag: str | None = None,
    ) -> Consumer:
        self._check_open()
        if isinstance(queues, str):
            queues = [queues]
        if not queues:
            raise ConfigurationError("consume needs at least one queue")
        if prefetch < 0:
            raise ConfigurationError(f"prefetch must be zero or more, got {prefetch}")
        for name in queues:
            await self._existing_queue(name)
        tag = tag or f"ctag-{uuid.uuid4().hex}"
        if tag in self._consumers:
            raise PreconditionFailed(f"consumer tag {tag!r} is already in use on this connection")
        names = tuple(dict.fromkeys(queues))
        listener = await self._storage.listen(names)
        consumer = _VirtualConsumer(
            self, names, prefetch=prefetch, no_ack=no_ack, tag=tag, listener=listener
        )
        self._consumers[tag] = consumer
        await self._storage.add_consumer(self.connection_id, tag, names)
        return consumer

    async def _check_consumer_queues(self, consumer: _VirtualConsumer) -> None:
        """End a consumer whose queues were all deleted (RabbitMQ cancels it)."""
        snap = await self._fresh_topology()
        if not any(q in snap.topology.queues for q in consumer.queues):
            await consumer.cancel()

    # settling

    def _note_settled(self, delivery: Delivery) -> None:
        if delivery.consumer_tag is not None:
            consumer = self._consumers.get(delivery.consumer_tag)
            if consumer is not None:
                consumer._settle(delivery.tag)

    def _ack_tag(self, tag: DeliveryTag) -> None:
        self._pending_acks.append(tag)
        if len(self._pending_acks) >= _ACK_BATCH:
            self._flush_acks_soon()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                _ACK_DELAY, self._flush_acks_soon
            )

    def _flush_acks_soon(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._pending_acks and self._connected and self._ack_task is None:
            self._ack_task = asyncio.create_task(self._background_flush())

    async def _background_flush(self) -> None:
        try:
            await self._flush_acks()
        except Exception:
            log.exception("could not write acks; the messages will be redelivered")
        finally:
            self._ack_task = None

    async def _flush_acks(self) -> None:
        while self._pending_acks:
            tags, self._pending_acks = self._pending_acks, []
            try:
                await self._storage.ack(tags, connection=self.connection_id)
            except BaseException:
                self._pending_acks[:0] = tags
                raise

    async def ack(self, delivery: Delivery) -> None:
        self._check_open()
        self._note_settled(delivery)
        self._ack_tag(delivery.tag)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack ``deliveries`` in one storage write (durable when this returns)."""
        self._check_open()
        for d in deliveries:
            self._note_settled(d)
            self._pending_acks.append(d.tag)
        await self._flush_acks()

    async def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        self._check_open()
        self._note_settled(delivery)
        message = StoredMessage(
            tag=delivery.tag,
            queue=delivery.queue,
            envelope=delivery.envelope,
            exchange=delivery.exchange,
            routing_key=delivery.routing_key,
            priority=0,
            delivery_count=delivery.delivery_count,
        )
        if requeue:
            snap = await self._topology()
            queue = snap.topology.queues.get(delivery.queue)
            limit = queue.arguments.get("x-delivery-limit") if queue is not None else None
            if limit is not None and delivery.delivery_count > limit:
                await self._dead_letter([(message, "delivery_limit")])
            else:
                await self._storage.release([delivery.tag], connection=self.connection_id)
        else:
            await self._dead_letter([(message, "rejected")])

    async def queue_stats(self, name: str) -> QueueStats:
        self._check_open()
        await self._flush_acks()
        await self._existing_queue(name, fresh=True)
        return await self._storage.stats(name)

    # housekeeping

    async def _delete_auto_delete(self, idle: Sequence[str]) -> None:
        if not idle:
            return
        snap = await self._fresh_topology()
        for name in idle:
            queue = snap.topology.queues.get(name)
            if queue is not None and queue.auto_delete:
                await self._remove_queue(name)

    async def _after_reap(self, reaped: Reaped) -> None:
        if not reaped.connections:
            return
        log.info("connections %s stopped renewing; their deliveries are back", reaped.connections)
        dead = set(reaped.connections)
        snap = await self._fresh_topology()
        for name, owner in snap.owners.items():
            if owner in dead:
                await self._remove_queue(name)
        await self._delete_auto_delete(reaped.idle_queues)

    async def _revive(self) -> None:
        log.warning(
            "connection %s was declared dead; registering its consumers again", self.connection_id
        )
        for consumer in self._consumers.values():
            consumer._forget_leases()
            await self._storage.add_consumer(self.connection_id, consumer.tag, consumer.queues)

    async def _expire_messages(self) -> None:
        while True:
            claimed = await self._storage.claim_expired(
                connection=self.connection_id, limit=_FETCH_BATCH
            )
            if not claimed:
                return
            await self._dead_letter([(m, "expired") for m in claimed])

    async def _expire_queues(self, now: float) -> float | None:
        snap = await self._fresh_topology()
        limits = {
            name: q.arguments["x-expires"] / 1000
            for name, q in snap.topology.queues.items()
            if "x-expires" in q.arguments
        }
        if not limits:
            return None
        soonest: float | None = None
        for name, act in (await self._storage.activity(list(limits))).items():
            if act.consumers:
                continue
            deadline = act.used_at + limits[name]
            if deadline <= now:
                log.info("queue %r unused for %ss (x-expires): deleting it", name, limits[name])
                await self._remove_queue(name)
            elif soonest is None or deadline < soonest:
                soonest = deadline
        return soonest

    async def _housekeep(self) -> None:
        interval = self._lease / 4
        next_renew = 0.0
        while True:
            # cleared before looking, so a wake-up that arrives while we look is kept
            self._housekeeper_wake.clear()
            try:
                now = time.time()
                if now >= next_renew:
                    if not await self._storage.renew(self.connection_id, lease=self._lease):
                        await self._revive()
                    next_renew = now + interval
                    await self._after_reap(await self._storage.reap())
                wake = next_renew
                message_expiry = await self._storage.next_expiry()
                if message_expiry is not None and message_expiry <= time.time():
                    await self._expire_messages()
                    message_expiry = await self._storage.next_expiry()
                if message_expiry is not None:
                    wake = min(wake, message_expiry)
                queue_expiry = await self._expire_queues(time.time())
                if queue_expiry is not None:
                    wake = min(wake, queue_expiry)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("broker housekeeping failed; retrying in %.1fs", interval)
                wake = time.time() + interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.001, wake - time.time())):
                    await self._housekeeper_wake.wait()
