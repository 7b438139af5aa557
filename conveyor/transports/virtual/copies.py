"""The copies a route produces: one :class:`~conveyor.transports.storage.NewMessage` per
destination queue, with the priority, delay and TTL that queue gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Queue
from conveyor.transports.storage import NewMessage

__all__ = ["Routed", "copy_for"]


@dataclass(slots=True)
class Routed:
    """What routing some messages over one topology gave.

    ``doubtful``: some answer was negative (a queue or exchange missing, a message reaching no
    queue), which a stale topology could explain. ``counts`` (each message's queue count) and
    ``failure`` (the error that stopped routing, raised once the copies before it are stored)
    are a publish's.
    """

    copies: list[NewMessage]
    doubtful: bool = False
    counts: list[int] = field(default_factory=list)
    failure: Exception | None = None


def copy_for(
    queue: Queue, envelope: Envelope, exchange: str, routing_key: str, now: float, delay: float
) -> NewMessage:
    """The copy of ``envelope`` that ``queue`` stores: priority clamped to its levels, due
    after ``delay`` seconds, expiring after the shorter of its message TTL and the envelope's."""
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
