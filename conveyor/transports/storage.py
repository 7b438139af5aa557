"""The storage primitives that transports without native exchanges implement.

``virtual.VirtualTransport`` implements AMQP's semantics once (routing, priorities, TTL,
dead-lettering, delays, leases, exclusive and auto-delete queues) on top of a :class:`Storage`.
``memory``, ``sqlite`` and ``redis`` implement only this interface: they store records and messages
and move them between states, atomically where the docstring says so, and decide nothing.

A stored message is in one of three states: *ready* (in its queue, deliverable once
``not_before`` has passed), *leased* (handed to a consumer until its lease deadline), or gone.

Times are seconds since the epoch from ``time.time()`` on the caller's machine; every process
that shares one storage shares a clock.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, Queue
from conveyor.routing.topology import BoundBinding, Topology
from conveyor.transports.base import DeliveryTag, QueueStats

__all__ = [
    "NewMessage",
    "StaleTopology",
    "Storage",
    "StoredMessage",
]


class StaleTopology(Exception):
    """Raised by :meth:`Storage.enqueue` when the topology changed since the caller loaded it."""


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
    """A message as storage hands it back from :meth:`Storage.dequeue` or an overflow.

    ``delivery_count`` counts deliveries including this one (1 the first time).
    """

    tag: DeliveryTag
    queue: str
    envelope: Envelope
    exchange: str
    routing_key: str
    priority: int
    delivery_count: int
    expires_at: float | None = None


class Storage(abc.ABC):
    """Where a virtual broker keeps its topology and messages.

    Topology writes bump a version number; :meth:`enqueue` checks that number atomically with its
    write, so a publish never lands in a queue deleted since the caller routed it.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect or create (idempotent); raise BrokerUnavailable / ConfigurationError clearly."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections (idempotent). Leases are left to lapse, not released."""

    # topology

    @abc.abstractmethod
    async def load_topology(self) -> tuple[int, Topology]:
        """The current topology version and snapshot."""

    @abc.abstractmethod
    async def topology_version(self) -> int:
        """The current topology version (cheap: used to validate a cached snapshot)."""

    @abc.abstractmethod
    async def save_exchange(self, exchange: Exchange) -> None:
        """Insert or replace an exchange record."""

    @abc.abstractmethod
    async def remove_exchange(self, name: str) -> None:
        """Remove an exchange record and every binding from it."""

    @abc.abstractmethod
    async def save_queue(self, queue: Queue, *, owner: str | None = None) -> None:
        """Insert or replace a queue record; ``owner`` is the connection of an exclusive queue."""

    @abc.abstractmethod
    async def remove_queue(self, name: str) -> int:
        """Remove a queue record, its bindings and all its messages; return how many messages."""

    @abc.abstractmethod
    async def save_binding(self, bound: BoundBinding) -> None:
        """Insert a binding (no-op if present)."""

    @abc.abstractmethod
    async def remove_binding(self, bound: BoundBinding) -> None:
        """Remove a binding (no-op if absent)."""

    # messages

    @abc.abstractmethod
    async def enqueue(
        self, messages: Sequence[NewMessage], *, topology_version: int
    ) -> list[StoredMessage]:
        """Store every message, all or none, and wake consumers of those queues.

        Raises StaleTopology if the topology version is no longer ``topology_version``.
        A queue with ``x-max-length`` keeps only its newest messages: the ready messages pushed
        out of its head are removed and returned, for the caller to dead-letter.
        """

    @abc.abstractmethod
    async def dequeue(
        self, queues: Sequence[str], *, consumer: str, limit: int, lease: float
    ) -> list[StoredMessage]:
        """Lease up to ``limit`` ready, due messages to ``consumer`` until now + ``lease``.

        Within a queue: highest priority first, then oldest first. Across queues, successive
        calls rotate the starting queue so none starves. Each message's delivery count grows by
        one. Expired messages are returned like any other; the caller dead-letters them.
        """

    @abc.abstractmethod
    async def ack(self, tags: Sequence[DeliveryTag], *, consumer: str) -> int:
        """Remove messages leased to ``consumer``; return how many. Others' tags are ignored."""

    @abc.abstractmethod
    async def release(self, tags: Sequence[DeliveryTag], *, consumer: str) -> int:
        """Return messages leased to ``consumer`` to ready, at their old place in the queue."""

    @abc.abstractmethod
    async def renew(self, consumer: str, *, lease: float, queues: Sequence[str] = ()) -> None:
        """Register or keep alive ``consumer`` (of ``queues``) and its leases until now + lease."""

    @abc.abstractmethod
    async def forget_consumer(self, consumer: str) -> None:
        """Unregister ``consumer``; messages still leased to it return to ready."""

    @abc.abstractmethod
    async def reap(self) -> list[str]:
        """Return lapsed leases to ready (marked redelivered) and drop dead consumers.

        Returns the ids of the consumers found dead, so the caller can delete their exclusive
        and auto-delete queues.
        """

    @abc.abstractmethod
    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a message may have become ready in ``queues``, or after ``timeout``.

        Spurious wake-ups are allowed; missed ones are not (beyond ``timeout``).
        """

    @abc.abstractmethod
    async def next_due(self, queues: Sequence[str]) -> float | None:
        """The earliest ``not_before`` among delayed messages of ``queues``, or None."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Remove the ready messages of ``queue``; return how many."""

    @abc.abstractmethod
    async def stats(self, queue: str) -> QueueStats:
        """Ready (including delayed), leased and live-consumer counts of ``queue``."""
