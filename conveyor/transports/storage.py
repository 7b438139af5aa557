"""The storage primitives that transports without native exchanges implement.

``virtual.VirtualTransport`` implements AMQP's semantics once (routing, priorities, TTL,
dead-lettering, delays, leases, exclusive and auto-delete queues) on top of a :class:`Storage`.
``memory``, ``sqlite`` and ``redis`` implement only this interface: they keep records and
messages and move messages between states, atomically where a docstring says so. They decide
nothing: which queue a message goes to, when it is dead-lettered and with which headers, when a
queue expires, all of that is the caller's.

A stored message is in one of three states:

- *ready*: in its queue, deliverable once its ``not_before`` has passed (a delayed message is
  ready but not *due*; it takes its place at the tail of the queue when it becomes due);
- *leased*: handed to a connection, until it is acked, released, or the connection's lease
  lapses (then it is ready again, at its old place, and its next delivery counts one more);
- gone.

Leases belong to *connections* (one per transport instance, identified by a string the caller
makes up). A connection keeps itself alive with :meth:`Storage.renew`; when it stops renewing,
:meth:`Storage.reap` (called by any live connection) gives its messages back and drops its
consumers.

Order within a queue: highest priority first, then the order in which messages became due.
Times are seconds since the epoch from ``time.time()``; every process sharing a storage shares a
clock. Tags are unique for the life of the storage and never reused.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, Queue
from conveyor.routing.topology import BoundBinding, Topology
from conveyor.transports.base import DeliveryTag, QueueStats

__all__ = [
    "EventListener",
    "Listener",
    "NewMessage",
    "QueueActivity",
    "Reaped",
    "StaleTopology",
    "Storage",
    "StoredMessage",
    "TopologySnapshot",
    "Writer",
]


class StaleTopology(Exception):
    """Raised by :meth:`Storage.enqueue` when the topology changed since the caller loaded it."""


@dataclass(frozen=True, slots=True)
class TopologySnapshot:
    """The topology at ``version``, and the owning connection of each exclusive queue.

    ``epoch`` names the storage's life: it changes only when the storage lost everything it
    held (a Redis restarted without persistence), so a connection that sees a new epoch knows
    its declarations are gone and declares them again. Storage that cannot lose its data
    silently leaves it empty.
    """

    version: int
    topology: Topology
    owners: Mapping[str, str] = field(default_factory=dict)
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class Writer:
    """Who writes messages with :meth:`Storage.enqueue`, and against which topology.

    ``connection`` holds the leases the write settles and the overflow it takes;
    ``topology_version`` is the version of the topology the messages were routed by.
    """

    connection: str
    topology_version: int


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One copy of a published message, bound for ``queue``.

    ``priority`` is already clamped to the queue's levels (0 for a queue without priorities);
    ``not_before`` holds a delayed message back; ``expires_at`` is when it dies of TTL.
    """

    queue: str
    envelope: Envelope
    exchange: str
    routing_key: str
    priority: int = 0
    not_before: float | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message leased to a connection: from :meth:`Storage.dequeue`, an overflow or a claim.

    ``delivery_count`` counts deliveries including this one (1 the first time) for messages
    from ``dequeue``; overflowed and claimed messages keep the count they had (they are not
    being delivered).
    """

    tag: DeliveryTag
    queue: str
    envelope: Envelope
    exchange: str
    routing_key: str
    priority: int
    delivery_count: int
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Reaped:
    """What :meth:`Storage.reap` cleaned up.

    ``connections``: the connections found dead (their leases are back to ready, their
    consumers gone). ``idle_queues``: queues that had consumers and now have none because of it.
    """

    connections: tuple[str, ...] = ()
    idle_queues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueActivity:
    """When a queue was last used (declared, read from, or a consumer left) and its consumers."""

    used_at: float
    consumers: int


class Listener(abc.ABC):
    """Wake-ups for a set of queues, from :meth:`Storage.listen`.

    A wake-up that arrives while nobody waits is kept, so the caller can check for messages
    and then wait without missing one that arrived in between.
    """

    @abc.abstractmethod
    async def wait(self, timeout: float) -> bool:
        """Return True at once if woken since the last wait, else when woken (True) or after
        ``timeout`` seconds (False). Spurious wake-ups are allowed; missed ones are not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop listening (idempotent); a pending :meth:`wait` returns at once."""


class EventListener(Listener):
    """A :class:`Listener` woken by setting an :class:`asyncio.Event` of the waiting loop.

    Subclasses set ``_event`` from that loop's thread when woken, and stop their source of
    wake-ups in :meth:`_stop_listening`.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._closed = False

    async def wait(self, timeout: float) -> bool:
        if self._closed:
            return False
        if not self._event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                return False
        self._event.clear()
        return not self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_listening()
        self._event.set()

    @abc.abstractmethod
    def _stop_listening(self) -> None:
        """Stop the wake-ups (called once, by the first :meth:`close`)."""


class Storage(abc.ABC):
    """Where a virtual broker keeps its topology and messages; one instance per connection.

    Topology writes bump a version number; :meth:`enqueue` checks that number atomically with
    its write, so a publish never lands in a queue deleted since the caller routed it. Every
    method raises BrokerUnavailable when the backing store fails, and is safe to call from
    several connections (processes, for shared storages) at once.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, creating the store if needed (idempotent).

        Raises ConfigurationError for a store that is not conveyor's (or is of a newer schema)
        without touching it, BrokerUnavailable when it cannot be reached.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources (idempotent). Leases are not released here; see ``disconnect``."""

    # topology

    @abc.abstractmethod
    async def load_topology(self) -> TopologySnapshot:
        """The current topology, its version and the owners of exclusive queues."""

    @abc.abstractmethod
    async def topology_version(self) -> int:
        """The current topology version (cheap: used to validate a cached snapshot)."""

    @abc.abstractmethod
    async def add_exchange(self, exchange: Exchange) -> Exchange:
        """Store ``exchange`` unless one of that name exists; return the stored definition."""

    @abc.abstractmethod
    async def remove_exchange(self, name: str) -> None:
        """Remove an exchange record and every binding from it (no-op if absent)."""

    @abc.abstractmethod
    async def add_queue(
        self, queue: Queue, *, owner: str | None = None
    ) -> tuple[Queue, str | None]:
        """Store ``queue`` (bindings aside) unless one of that name exists; mark it used.

        ``owner`` is the connection of an exclusive queue. Returns the stored definition and
        owner, which differ from the arguments if the queue already existed.
        """

    @abc.abstractmethod
    async def remove_queue(self, name: str) -> int:
        """Remove a queue, its bindings, consumers and messages; return how many messages
        were ready (delayed ones included; leased ones go too, uncounted, as RabbitMQ counts).

        Removing a missing queue returns 0.
        """

    @abc.abstractmethod
    async def add_binding(self, bound: BoundBinding) -> None:
        """Store a binding (no-op if present)."""

    @abc.abstractmethod
    async def remove_binding(self, bound: BoundBinding) -> None:
        """Remove a binding (no-op if absent)."""

    # messages

    @abc.abstractmethod
    async def enqueue(
        self, messages: Sequence[NewMessage], writer: Writer, *, settle: Sequence[DeliveryTag] = ()
    ) -> list[StoredMessage]:
        """Store every message and remove the ``settle`` messages leased to ``connection``,
        all in one atomic step, then wake listeners of the queues that got messages. The
        ``writer`` gives the ``connection`` and the ``topology_version`` routed by.

        A storage may skip the wake-up for a queue that already had ready messages: a
        listener waits only on queues it found empty, so nobody is waiting there.

        Raises StaleTopology (having changed nothing) if the topology version is no longer
        ``topology_version``. A queue with ``x-max-length`` N keeps at most N ready, due
        messages: those pushed out of its head are leased to ``connection`` and returned, for
        the caller to dead-letter or ack.
        """

    @abc.abstractmethod
    async def dequeue(
        self, queues: Sequence[str], *, connection: str, limit: int, ack: Sequence[DeliveryTag] = ()
    ) -> list[StoredMessage]:
        """Ack ``ack`` (as :meth:`ack` does), then lease up to ``limit`` ready, due messages
        to ``connection``, in one atomic step; return them in delivery order.

        Takes from ``queues`` in the order given (the caller rotates it so none starves);
        within a queue highest priority first, then oldest. Each message's delivery count
        grows by one; the queues are marked used. Expired messages are returned like any
        other: the caller dead-letters them.
        """

    @abc.abstractmethod
    async def claim_expired(self, *, connection: str, limit: int) -> list[StoredMessage]:
        """Lease up to ``limit`` ready messages of any queue whose ``expires_at`` has passed."""

    @abc.abstractmethod
    async def ack(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        """Remove messages leased to ``connection``; return how many. Other tags are ignored."""

    @abc.abstractmethod
    async def release(self, tags: Sequence[DeliveryTag], *, connection: str) -> int:
        """Return messages leased to ``connection`` to ready at their old place; wake listeners.

        Other tags are ignored; returns how many were released.
        """

    @abc.abstractmethod
    async def next_due(self, queues: Sequence[str]) -> float | None:
        """The earliest ``not_before`` still in the future among ready messages of ``queues``."""

    @abc.abstractmethod
    async def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` among ready messages of any queue, or None."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Remove the ready messages (due or not) of ``queue``; return how many."""

    @abc.abstractmethod
    async def stats(self, queue: str) -> QueueStats:
        """Ready (including delayed), leased, and live-connection consumer counts of ``queue``."""

    # connections and consumers

    @abc.abstractmethod
    async def renew(self, connection: str, *, lease: float) -> bool:
        """Register or keep alive ``connection``: its leases hold until now + ``lease``.

        Returns False if the connection had been reaped (its leases and consumers are gone:
        the caller registers its consumers again), True otherwise, including the first call.
        """

    @abc.abstractmethod
    async def disconnect(self, connection: str) -> list[str]:
        """Unregister ``connection``: its leased messages return to ready, its consumers go.

        Returns the queues that had consumers and now have none. Idempotent.
        """

    @abc.abstractmethod
    async def reap(self) -> Reaped:
        """Disconnect every connection whose lease has lapsed (see :class:`Reaped`)."""

    @abc.abstractmethod
    async def add_consumer(self, connection: str, tag: str, queues: Sequence[str]) -> None:
        """Record consumer ``tag`` of ``connection`` on ``queues`` (counted in stats)."""

    @abc.abstractmethod
    async def remove_consumer(self, connection: str, tag: str) -> list[str]:
        """Forget consumer ``tag``; return the queues left without consumers by it."""

    @abc.abstractmethod
    async def activity(self, queues: Sequence[str]) -> dict[str, QueueActivity]:
        """Last use and live consumer count of each existing queue in ``queues``."""

    @abc.abstractmethod
    async def listen(self, queues: Sequence[str]) -> Listener:
        """Start collecting wake-ups for ``queues``: a message became ready (published,
        released, returned from a lapsed lease) or the topology changed under them."""
