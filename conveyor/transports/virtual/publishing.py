"""Routing messages over a connection's cached topology and storing their copies, for
publishes and dead letters alike, in one write checked against that topology's version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from conveyor.errors import BrokerUnavailable, NotFound, Unroutable
from conveyor.routing.matching import destinations
from conveyor.routing.topology import Topology
from conveyor.transports.base import DeliveryTag, Outgoing
from conveyor.transports.storage import NewMessage, StaleTopology, StoredMessage, Writer
from conveyor.transports.virtual.connection import VirtualConnection
from conveyor.transports.virtual.copies import Routed, copy_for
from conveyor.transports.virtual.dead_letters import DeadLetter, route_dead_letters

__all__ = ["Publisher", "route_outgoing"]

_MAX_ROUTE_ATTEMPTS = 20

_Items = TypeVar("_Items")


def route_outgoing(topology: Topology, messages: Sequence[Outgoing], now: float) -> Routed:
    """The copies of ``messages`` up to the first that cannot be published (an unknown
    exchange, or mandatory and unroutable), whose error is ``failure``."""
    copies: list[NewMessage] = []
    counts: list[int] = []
    for m in messages:
        try:
            names = destinations(topology, m.exchange, m.routing_key, m.envelope.headers)
        except NotFound as exc:
            return Routed(copies, True, counts, exc)
        if not names and m.mandatory:
            failure = Unroutable(
                f"message to exchange {m.exchange!r} with routing key {m.routing_key!r} "
                "reached no queue: bind a queue that matches it, or publish without mandatory",
                exchange=m.exchange,
                routing_key=m.routing_key,
            )
            return Routed(copies, True, counts, failure)
        counts.append(len(names))
        delay = m.delay or 0.0
        for name in sorted(names):
            copies.append(
                copy_for(topology.queues[name], m.envelope, m.exchange, m.routing_key, now, delay)
            )
    return Routed(copies, 0 in counts, counts)


class Publisher:
    """Stores the copies of publishes (routed by :func:`route_outgoing`) and dead letters for
    ``connection``.

    Routes over the cached topology and writes with its version; when storage says the
    topology changed (or a negative answer from the cache is found stale), routes again over
    a fresh one. ``on_expiring`` is called after storing copies that carry a TTL.
    """

    def __init__(self, connection: VirtualConnection, on_expiring: Callable[[], None]) -> None:
        self._storage = connection.storage
        self._topology = connection.topology
        self._connection = connection.id
        self._on_expiring = on_expiring

    async def dead_letter(self, dead: Sequence[DeadLetter]) -> None:
        """Settle leased ``dead``: move each to its queue's dead-letter exchange (or drop it
        when the queue has none), atomically with removing the original; the heads this
        pushes out of full queues die in turn (reason ``maxlen``)."""
        tries = iter(range(_MAX_ROUTE_ATTEMPTS * 4))  # shared by the rounds of overflow
        while dead:
            _, overflow = await self.store(
                route_dead_letters,
                dead,
                [m.tag for m, _ in dead],
                tries,
                "the topology kept changing while dead-lettering; retry",
            )
            dead = [(o, "maxlen") for o in overflow]

    async def store(
        self,
        route: Callable[[Topology, _Items, float], Routed],
        items: _Items,
        settle: Sequence[DeliveryTag] = (),
        tries: Iterator[int] | None = None,
        giving_up: str = "the topology kept changing while publishing; retry the publish",
    ) -> tuple[Routed, list[StoredMessage]]:
        """Route ``items`` with ``route`` and store the copies while settling ``settle``, in
        one write against the routing topology's version; return the routing and the heads
        pushed out of full queues (leased to the connection, for :meth:`dead_letter`).

        Routes again on a fresh topology when it changed, taking turns from ``tries`` (20 by
        default); BrokerUnavailable(``giving_up``) when they run out.
        """
        for _ in tries or range(_MAX_ROUTE_ATTEMPTS):
            now = time.time()
            validated = self._topology.snapshot is None
            snap = await self._topology.get()
            routed = route(snap.topology, items, now)
            # A negative answer from a cached topology must be checked against storage.
            if (
                routed.doubtful
                and not validated
                and await self._storage.topology_version() != snap.version
            ):
                self._topology.invalidate()
                continue
            try:
                writer = Writer(self._connection, snap.version)
                overflow = await self._storage.enqueue(routed.copies, writer, settle=settle)
            except StaleTopology:
                self._topology.invalidate()
                continue
            if any(c.expires_at is not None for c in routed.copies):
                self._on_expiring()
            return routed, overflow
        raise BrokerUnavailable(giving_up)
