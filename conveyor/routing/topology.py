"""A snapshot of declared exchanges, queues and bindings: what the matchers route over.

Transports without native exchanges keep their declared entities in storage and load them into a
Topology; the same Topology also answers ``routes explain``. It is immutable: changes return a new
snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from conveyor.routing.entities import (
    DEFAULT_EXCHANGE,
    Exchange,
    FrozenMapping,
    Queue,
    check_binding_arguments,
    check_routing_key,
)

__all__ = ["BoundBinding", "Topology"]


@dataclass(frozen=True, slots=True)
class BoundBinding:
    """A resolved binding: queue ``queue`` is bound to exchange ``exchange`` by ``routing_key``."""

    exchange: str
    queue: str
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=FrozenMapping)

    def __post_init__(self) -> None:
        check_routing_key(self.routing_key)
        if not isinstance(self.arguments, FrozenMapping):
            object.__setattr__(self, "arguments", FrozenMapping(self.arguments))


@dataclass(frozen=True, slots=True)
class Topology:
    """Exchanges and queues by name, and the bindings between them.

    The default exchange ``""`` always exists implicitly and is not stored in ``exchanges``.
    """

    exchanges: Mapping[str, Exchange] = field(default_factory=dict)
    queues: Mapping[str, Queue] = field(default_factory=dict)
    bindings: tuple[BoundBinding, ...] = ()

    @classmethod
    def build(
        cls,
        exchanges: Iterable[Exchange] = (),
        queues: Iterable[Queue] = (),
        bindings: Iterable[BoundBinding] = (),
    ) -> Topology:
        """Build a snapshot from entity lists (later duplicates replace earlier ones).

        Raises TopologyError for a binding to a headers exchange whose ``x-match`` is invalid.
        """
        exs = {e.name: e for e in exchanges if e.name != DEFAULT_EXCHANGE}
        qs = {q.name: q for q in queues}
        unique: dict[tuple[str, str, str, FrozenMapping], BoundBinding] = {}
        for b in bindings:
            if b.exchange in exs:
                check_binding_arguments(exs[b.exchange].type, b.arguments)
            args = b.arguments
            assert isinstance(args, FrozenMapping)
            unique[(b.exchange, b.queue, b.routing_key, args)] = b
        return cls(exs, qs, tuple(unique.values()))

    def has_exchange(self, name: str) -> bool:
        """True for the default exchange and every declared exchange."""
        return name == DEFAULT_EXCHANGE or name in self.exchanges

    def bindings_of(self, exchange: str) -> tuple[BoundBinding, ...]:
        """Every binding whose source is ``exchange``, in declaration order."""
        return tuple(b for b in self.bindings if b.exchange == exchange)

    def with_exchange(self, exchange: Exchange) -> Topology:
        """A snapshot with ``exchange`` added or replaced."""
        return replace(self, exchanges={**self.exchanges, exchange.name: exchange})

    def with_queue(self, queue: Queue) -> Topology:
        """A snapshot with ``queue`` added or replaced (its bindings are not added)."""
        return replace(self, queues={**self.queues, queue.name: queue})

    def with_binding(self, bound: BoundBinding) -> Topology:
        """A snapshot with ``bound`` added (binding twice is a no-op, as in AMQP).

        Raises TopologyError for a binding to a headers exchange whose ``x-match`` is invalid.
        """
        declared = self.exchanges.get(bound.exchange)
        if declared is not None:
            check_binding_arguments(declared.type, bound.arguments)
        if bound in self.bindings:
            return self
        return replace(self, bindings=(*self.bindings, bound))
