"""Dead-lettering as RabbitMQ does it: where a dead message goes, the ``x-death`` record it
carries there, and the automatic cycles that drop it instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from conveyor.errors import NotFound
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import FrozenMapping
from conveyor.routing.matching import destinations
from conveyor.routing.topology import Topology
from conveyor.transports.storage import NewMessage, StoredMessage
from conveyor.transports.virtual.copies import Routed, copy_for

__all__ = ["DeadLetter", "route_dead_letters"]

log = logging.getLogger("conveyor.transports")

DeadLetter = tuple[StoredMessage, str]
"""A leased message and the reason it dies: ``rejected``, ``expired``, ``maxlen`` or
``delivery_limit``."""


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
    new_env = replace(env, headers=FrozenMapping(headers), expiration=None)
    return new_env, deaths


def route_dead_letters(topology: Topology, dead: Sequence[DeadLetter], now: float) -> Routed:
    """The copies that ``dead``'s queues' dead-letter exchanges route them to.

    A message whose queue has no dead-letter exchange gets none (it is dropped), and so does
    a copy that would cycle back (logged).
    """
    copies: list[NewMessage] = []
    doubtful = False
    for message, reason in dead:
        queue = topology.queues.get(message.queue)
        dlx = queue.dead_letter_exchange if queue is not None else None
        if queue is None or dlx is None:
            doubtful = doubtful or queue is None
            continue
        routing_key = queue.dead_letter_routing_key or message.routing_key
        envelope, deaths = _with_death(message, reason, now)
        try:
            names = destinations(topology, dlx, routing_key, envelope.headers)
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
            copies.append(copy_for(topology.queues[name], envelope, dlx, routing_key, now, 0))
    return Routed(copies, doubtful)
