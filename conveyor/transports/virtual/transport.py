"""The transport that implements AMQP itself over a :class:`~conveyor.transports.storage.Storage`.

``VirtualTransport`` routes over a cached topology (:mod:`.topology_cache`, :mod:`.publishing`)
and turns storage leases into AMQP deliveries (:mod:`.consumer`, acks batched by
:mod:`.acks`), while :mod:`.housekeeping` keeps its connection alive and expires what must
expire; :mod:`.dead_letters` says where dead messages go and :mod:`.declarations` which
declarations agree.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

from conveyor.errors import (
    BrokerUnavailable,
    NotFound,
    PreconditionFailed,
    ProtocolError,
)
from conveyor.routing.entities import Exchange, Queue
from conveyor.routing.topology import BoundBinding, Topology
from conveyor.transports.base import (
    Capabilities,
    Consumer,
    Delivery,
    DeliveryTag,
    Outgoing,
    QueueStats,
    Subscription,
    Transport,
)
from conveyor.transports.storage import Storage, StoredMessage, TopologySnapshot
from conveyor.transports.virtual.acks import AckBatcher
from conveyor.transports.virtual.connection import VirtualConnection
from conveyor.transports.virtual.consumer import VirtualConsumer, delivery_of
from conveyor.transports.virtual.dead_letters import DeadLetter
from conveyor.transports.virtual.declarations import (
    check_exchange_equivalent,
    check_queue_arguments,
    check_queue_equivalent,
)
from conveyor.transports.virtual.housekeeping import Housekeeper
from conveyor.transports.virtual.publishing import Publisher, route_outgoing
from conveyor.transports.virtual.redeclare import Declared
from conveyor.transports.virtual.topology_cache import TopologyCache
from conveyor.urls import redacted

__all__ = ["VirtualTransport", "virtual_capabilities"]

log = logging.getLogger("conveyor.transports")


def virtual_capabilities(*, shared: bool) -> Capabilities:
    """What a VirtualTransport does on any storage; ``shared``: whether other processes see it."""
    return Capabilities(
        native_exchanges=False,
        max_priority=255,
        delayed_delivery=True,
        direct_reply_to=False,
        shared=shared,
    )


def _deliverable(
    messages: list[StoredMessage], topology: Topology, now: float
) -> tuple[list[StoredMessage], list[DeadLetter]]:
    """Split leased ``messages`` into those to deliver and those dead of TTL or of too many
    deliveries (their queue's ``x-delivery-limit``)."""
    good: list[StoredMessage] = []
    dead: list[DeadLetter] = []
    for m in messages:
        if m.expires_at is not None and m.expires_at <= now:
            dead.append((m, "expired"))
            continue
        queue = topology.queues.get(m.queue)
        limit_arg = queue.arguments.get("x-delivery-limit") if queue else None
        if limit_arg is not None and m.delivery_count - 1 > limit_arg:
            dead.append((m, "delivery_limit"))
            continue
        good.append(m)
    return good, dead


class VirtualTransport(Transport):
    """A Transport that implements AMQP itself over a :class:`Storage`.

    Subclasses set ``capabilities`` (from :func:`virtual_capabilities`) and build the storage in
    ``from_url``. ``lease`` is how long this connection's deliveries stay leased without a
    renewal (renewed every quarter lease); ``poll_interval`` bounds how long an idle consumer
    trusts its wake-ups before looking.

    Acks are batched: ``ack`` records the tag and returns; pending acks travel with the
    consumer's next fetch, or are written within a few milliseconds, and always before
    ``close`` returns or before this transport reads stats.
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
        self._consumers: dict[str, VirtualConsumer] = {}
        self._declared = Declared()
        self._topology = TopologyCache(storage, on_lost=self._declare_again)
        connection = VirtualConnection(storage, self._topology, self.connection_id)
        self._acks = AckBatcher(connection)
        self._publisher = Publisher(connection, self._wake_housekeeper)
        self._housekeeper = Housekeeper(
            connection, self._publisher, lease=lease, revive=self._register_consumers_again
        )

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
        await self._topology.load()
        self._connected = True
        self._acks.start()
        self._housekeeper.start()

    async def close(self) -> None:
        if not self._connected:
            return
        await self._housekeeper.stop()
        try:
            for consumer in list(self._consumers.values()):
                await consumer.cancel()
            await self._acks.close()
            idle = await self._storage.disconnect(self.connection_id)
            await self._housekeeper.remove_exclusive_queues({self.connection_id})
            await self._housekeeper.delete_auto_delete(idle)
        except BrokerUnavailable as exc:
            # Closing still closes: what was not said goodbye to comes back when the lease lapses.
            log.warning("closing %s without a goodbye to its storage: %s", redacted(self.url), exc)
        finally:
            self._connected = False
            self._acks.stop()
            await self._storage.close()

    def _check_open(self) -> None:
        if not self._connected:
            raise BrokerUnavailable(
                f"transport {self.url!r} is not connected: call connect() (or use 'async with')"
            )

    def _wake_housekeeper(self) -> None:
        self._housekeeper.wake()

    async def _declare_again(self) -> None:
        """Storage lost everything (a new epoch): declare this connection's topology again,
        and make the connection and its consumers known again."""
        await self._declared.restore(self._storage, f"the broker at {redacted(self.url)}")
        await self._storage.renew(self.connection_id, lease=self._lease)
        await self._register_consumers_again()

    async def _register_consumers_again(self) -> None:
        """Storage declared this connection dead: its leases and consumers are gone."""
        for consumer in self._consumers.values():
            consumer.forget_leases()
            await self._storage.add_consumer(self.connection_id, consumer.tag, consumer.queues)

    # topology

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
        topology = self._topology
        snap = await (topology.fresh() if fresh else topology.get())
        if name not in snap.topology.queues or (
            not fresh and snap.owners.get(name, self.connection_id) != self.connection_id
        ):
            snap = await topology.fresh()
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
            snap = await self._topology.fresh()
            if exchange.name not in snap.topology.exchanges:
                raise NotFound(f"exchange {exchange.name!r} does not exist: declare it first")
            return
        stored = await self._storage.add_exchange(exchange)
        check_exchange_equivalent(stored, exchange)
        self._declared.exchange(stored)
        cached = self._topology.snapshot
        if cached is not None and exchange.name not in cached.topology.exchanges:
            self._topology.invalidate()

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        self._check_open()
        if name == "":
            raise PreconditionFailed("the default exchange cannot be deleted")
        snap = await self._topology.fresh()
        if name not in snap.topology.exchanges:
            return
        if if_unused and snap.topology.bindings_of(name):
            raise PreconditionFailed(
                f"exchange {name!r} still has queues bound to it: unbind them or drop if_unused"
            )
        await self._storage.remove_exchange(name)
        self._declared.forget_exchange(name)
        self._topology.invalidate()

    async def declare_queue(self, queue: Queue, *, passive: bool = False) -> QueueStats:
        self._check_open()
        if passive:
            await self._existing_queue(queue.name, fresh=True)
            return await self._storage.stats(queue.name)
        check_queue_arguments(queue)
        snap = await self._topology.fresh()
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
        check_queue_equivalent(stored, plain)
        self._declared.queue(plain, owner)
        await self._declare_bindings(queue, self._store_binding)
        self._topology.invalidate()
        if "x-expires" in queue.arguments:
            self._housekeeper.wake()  # it schedules the expiry
        return await self._storage.stats(queue.name)

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        self._check_open()
        await self._acks.flush()
        snap = await self._topology.fresh()
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
        self._declared.forget_queue(name)
        return await self._housekeeper.remove_queue(name)

    async def purge_queue(self, name: str) -> int:
        self._check_open()
        await self._existing_queue(name, fresh=True)
        return await self._storage.purge(name)

    async def _bind(self, binding: BoundBinding) -> None:
        self._check_open()
        exchange = binding.exchange
        if exchange == "":
            raise PreconditionFailed(
                "queues cannot be bound to the default exchange: it already routes to every "
                "queue by its name"
            )
        snap, _ = await self._existing_queue(binding.queue)
        if exchange not in snap.topology.exchanges:
            snap = await self._topology.fresh()
            if exchange not in snap.topology.exchanges:
                raise NotFound(f"exchange {exchange!r} does not exist: declare it first")
        await self._store_binding(binding)
        self._topology.invalidate()

    async def _store_binding(self, binding: BoundBinding) -> None:
        await self._storage.add_binding(binding)
        self._declared.binding(binding)

    async def _unbind(self, binding: BoundBinding) -> None:
        self._check_open()
        if binding.exchange == "":
            return
        await self._storage.remove_binding(binding)
        self._declared.forget_binding(binding)
        self._topology.invalidate()
        await self._housekeeper.drop_unbound_exchanges({binding.exchange})

    # publishing

    async def _publish(self, message: Outgoing) -> int:
        counts = await self._publish_many([message])
        return counts[0]

    async def _publish_many(self, messages: Sequence[Outgoing]) -> list[int]:
        """Route and store ``messages`` in one storage write; return each one's queue count.

        On the first message that cannot be published (unknown exchange, mandatory and
        unroutable) the messages before it are stored and the error is raised.
        """
        self._check_open()
        for m in messages:
            if m.delay is not None and not m.delay >= 0:
                raise ProtocolError(f"delay must be zero or more seconds, got {m.delay!r}")
        if not messages:
            return []
        routed, overflow = await self._publisher.store(route_outgoing, messages)
        if overflow:
            await self._publisher.dead_letter([(o, "maxlen") for o in overflow])
        if routed.failure is not None:
            raise routed.failure
        return routed.counts

    # consuming

    async def fetch(
        self, queues: Sequence[str], limit: int, *, carry_acks: bool = True
    ) -> tuple[list[StoredMessage], bool]:
        """Lease up to ``limit`` deliverable messages, dead-lettering expired and over-limit
        ones on the way; with ``carry_acks`` pending acks travel with the same storage call.

        Also says whether the storage handed over fewer than asked: then nothing more was
        deliverable in ``queues`` at that moment, and only a publish (which wakes listeners) or
        a due time changes that.
        """
        while True:
            acks = self._acks.take() if carry_acks else []
            try:
                messages = await self._storage.dequeue(
                    queues, connection=self.connection_id, limit=limit, ack=acks
                )
            except BaseException:
                self._acks.put_back(acks)
                raise
            drained = len(messages) < limit
            if not messages:
                return [], True
            now = time.time()
            snap = await self._topology.get()
            if any(m.queue not in snap.topology.queues for m in messages):
                snap = await self._topology.fresh()
            good, dead = _deliverable(messages, snap.topology, now)
            if dead:
                await self._publisher.dead_letter(dead)
            if good:
                return good, drained

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        self._check_open()
        await self._existing_queue(queue)
        messages, _ = await self.fetch([queue], 1)
        if not messages:
            return None
        if no_ack:
            self._acks.add(messages[0].tag)
        return delivery_of(messages[0], None)

    async def _consume(self, subscription: Subscription) -> Consumer:
        self._check_open()
        names = subscription.queues
        for name in names:
            await self._existing_queue(name)
        tag = subscription.tag or f"ctag-{uuid.uuid4().hex}"
        if tag in self._consumers:
            raise PreconditionFailed(f"consumer tag {tag!r} is already in use on this connection")
        listener = await self._storage.listen(names)
        consumer = VirtualConsumer(self, subscription, tag, listener)
        self._consumers[tag] = consumer
        await self._storage.add_consumer(self.connection_id, tag, names)
        return consumer

    def ack_later(self, tag: DeliveryTag) -> None:
        """Ack ``tag`` with the next batch (for consumers that settle on delivery)."""
        self._acks.add(tag)

    async def release(self, tags: Sequence[DeliveryTag]) -> None:
        """Give leased messages back to their queues unsettled (for consumers that stop)."""
        await self._storage.release(tags, connection=self.connection_id)

    async def idle_timeout(self, queues: Sequence[str]) -> float:
        """How long an idle consumer of ``queues`` waits for a wake-up before looking again:
        ``poll_interval``, or less when a delayed message falls due sooner."""
        timeout = self._poll_interval
        due = await self._storage.next_due(queues)
        if due is not None:
            timeout = max(0.0, min(timeout, due - time.time()))
        return timeout

    async def any_queue_exists(self, queues: Sequence[str]) -> bool:
        """Whether any of ``queues`` still exists (checked against storage)."""
        snap = await self._topology.fresh()
        return any(q in snap.topology.queues for q in queues)

    async def end_consumer(self, tag: str, give_back: Callable[[], Awaitable[None]]) -> None:
        """Forget consumer ``tag``; while connected, await ``give_back``, then unregister it
        and delete the auto-delete queues it leaves without consumers."""
        self._consumers.pop(tag, None)
        if self._connected:
            await give_back()
            idle = await self._storage.remove_consumer(self.connection_id, tag)
            await self._housekeeper.delete_auto_delete(idle)

    # settling

    def _note_settled(self, delivery: Delivery) -> None:
        if delivery.consumer_tag is not None:
            consumer = self._consumers.get(delivery.consumer_tag)
            if consumer is not None:
                consumer.settled(delivery.tag)

    async def ack(self, delivery: Delivery) -> None:
        self._check_open()
        self._note_settled(delivery)
        self._acks.add(delivery.tag)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack ``deliveries`` in one storage write (durable when this returns)."""
        self._check_open()
        for d in deliveries:
            self._note_settled(d)
        await self._acks.flush([d.tag for d in deliveries])

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
            snap = await self._topology.get()
            queue = snap.topology.queues.get(delivery.queue)
            limit = queue.arguments.get("x-delivery-limit") if queue is not None else None
            if limit is not None and delivery.delivery_count > limit:
                await self._publisher.dead_letter([(message, "delivery_limit")])
            else:
                await self._storage.release([delivery.tag], connection=self.connection_id)
        else:
            await self._publisher.dead_letter([(message, "rejected")])

    async def queue_stats(self, name: str) -> QueueStats:
        self._check_open()
        await self._acks.flush()
        await self._existing_queue(name, fresh=True)
        return await self._storage.stats(name)
