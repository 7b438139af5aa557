"""What the settings declare: the queues of ``task_queues`` with their defaults resolved, the
exchanges they bind to, and the Topology of both.

Resolution follows Celery's (celery/app/amqp.py), with one deliberate difference noted below:

- A Queue with no exchange (and no bindings), or with the nameless exchange, binds to the
  default task exchange: ``Exchange(task_default_exchange or task_default_queue,
  task_default_exchange_type)``.
- Its binding key is its ``routing_key``; without one, ``task_default_routing_key`` for the
  default queue and the queue's own name for every other queue. (Celery gives every key-less
  queue the default key, so two such queues on one exchange would both receive each other's
  tasks; conveyor publishes through the exchange, so each queue keeps a key of its own.)
- A Queue with an exchange and no ``routing_key`` binds with its own name.
- When ``task_queues`` is empty, the default queue is declared implicitly on the default exchange.
- ``task_queue_max_priority`` sets ``x-max-priority`` on every queue (and Broadcast) that sets
  none, including queues created because they were missing.
- A binding that names an exchange by string must name one declared somewhere: an
  ``Exchange(...)`` in ``task_queues``, the default exchange, or a Broadcast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.errors import TopologyError
from conveyor.routing.entities import (
    DEFAULT_EXCHANGE,
    Binding,
    Broadcast,
    Exchange,
    ExchangeType,
    Queue,
    check_binding_arguments,
    check_name,
    check_priority,
    check_routing_key,
)
from conveyor.routing.settings import HasRoutingSettings, RoutingSettings, routing_settings
from conveyor.routing.topology import BoundBinding, Topology

__all__ = ["Declarations", "bound_bindings", "declare", "settings_topology"]


def _with_max_priority(arguments: Mapping[str, Any], max_priority: int | None) -> dict[str, Any]:
    args = dict(arguments)
    if max_priority is not None and "x-max-priority" not in args:
        args["x-max-priority"] = max_priority
    return args


@dataclass(frozen=True, slots=True)
class Declarations:
    """The resolved declarations of one RoutingSettings snapshot (see the module docstring).

    Every binding of every queue in ``queues`` has an :class:`Exchange` (never a name), and
    ``exchanges`` holds each exchange those bindings and the broadcasts use.
    """

    default_queue: str
    default_exchange: Exchange
    default_routing_key: str | None
    create_missing: bool
    max_priority: int | None
    queues: Mapping[str, Queue]
    broadcasts: Mapping[str, Broadcast]
    exchanges: Mapping[str, Exchange]
    order: tuple[str, ...]

    def declared(self) -> list[Queue | Broadcast]:
        """Queues and broadcasts in the order ``task_queues`` lists them."""
        return [self.queues[n] if n in self.queues else self.broadcasts[n] for n in self.order]

    def missing_queue(self, name: str) -> Queue:
        """The queue created for an undeclared name: exchange ``name`` (direct), key ``name``.

        If an exchange of that name is already declared, the queue binds to it instead, so the
        two never disagree about its type.
        """
        check_name(name, what="queue")
        exchange = self.exchanges.get(name) or Exchange(name, ExchangeType.DIRECT)
        return Queue(
            name,
            exchange,
            routing_key=name,
            queue_arguments=_with_max_priority({}, self.max_priority),
        )

    def resolve_queue(self, queue: Queue) -> Queue:
        """``queue`` with its defaults resolved as a declared queue's would be.

        Raises TopologyError if it binds to an undeclared exchange name or redefines a declared
        exchange differently.
        """
        resolver = _Resolver(
            self.default_queue,
            self.default_exchange,
            self.default_routing_key,
            self.max_priority,
            self.exchanges,
        )
        return resolver.resolve(queue)

    def topology(self) -> Topology:
        """Exchanges, queues and bindings as a Topology (broadcast exchanges have no queue here:
        each worker binds its own)."""
        return Topology.build(
            exchanges=self.exchanges.values(),
            queues=self.queues.values(),
            bindings=[bound for q in self.queues.values() for bound in bound_bindings(q)],
        )


def bound_bindings(queue: Queue) -> list[BoundBinding]:
    """The BoundBindings of a resolved queue (one per binding)."""
    return [
        BoundBinding(b.exchange_name, queue.name, b.routing_key, b.arguments)
        for b in queue.all_bindings
    ]


class _Resolver:
    def __init__(
        self,
        default_queue: str,
        default_exchange: Exchange,
        default_key: str | None,
        max_priority: int | None,
        exchanges: Mapping[str, Exchange] | None = None,
    ) -> None:
        self.default_queue = default_queue
        self.default_exchange = default_exchange
        self.default_key = default_key
        self.max_priority = max_priority
        self.exchanges: dict[str, tuple[Exchange, str]] = {
            name: (ex, "task_queues") for name, ex in (exchanges or {}).items()
        }

    @classmethod
    def from_settings(cls, settings: RoutingSettings) -> _Resolver:
        default_queue = settings.task_default_queue
        if not isinstance(default_queue, str) or not default_queue:
            raise TopologyError(f"task_default_queue must be a queue name, got {default_queue!r}")
        check_name(default_queue, what="task_default_queue")
        exchange = Exchange(
            settings.task_default_exchange or default_queue,
            ExchangeType.parse(settings.task_default_exchange_type),
        )
        key = settings.task_default_routing_key
        max_priority = settings.task_queue_max_priority
        return cls(
            default_queue,
            exchange,
            check_routing_key(key) if key else None,
            check_priority(max_priority, what="task_queue_max_priority")
            if max_priority is not None
            else None,
        )

    def note_exchange(self, exchange: Exchange, where: str) -> Exchange:
        known = self.exchanges.get(exchange.name)
        if known is None:
            self.exchanges[exchange.name] = (exchange, where)
            return exchange
        if known[0] != exchange:
            raise TopologyError(
                f"exchange {exchange.name!r} is declared twice, differently: as {known[0]!r} "
                f"in {known[1]} and as {exchange!r} in {where}; declare it once and reuse it"
            )
        return known[0]

    def exchange_named(self, name: str, where: str) -> Exchange:
        known = self.exchanges.get(name)
        if known is not None and name != DEFAULT_EXCHANGE:
            return known[0]
        if name == DEFAULT_EXCHANGE or name == self.default_exchange.name:
            return self.note_exchange(self.default_exchange, "the task_default_exchange settings")
        raise TopologyError(
            f"{where} binds to exchange {name!r}, which is not declared: write "
            f"Exchange({name!r}, type=...) there, or name an exchange declared in task_queues, "
            "a Broadcast, or task_default_exchange"
        )

    def key_for(self, queue: Queue) -> str:
        if queue.routing_key:
            return queue.routing_key
        if queue.name == self.default_queue and self.default_key:
            return self.default_key
        return queue.name

    def resolve(self, queue: Queue) -> Queue:
        where = f"queue {queue.name!r}"
        first: Binding | None = None
        if isinstance(queue.exchange, Exchange) and queue.exchange.name != DEFAULT_EXCHANGE:
            key = queue.routing_key if queue.routing_key is not None else queue.name
            first = Binding(self.note_exchange(queue.exchange, where), key)
        elif isinstance(queue.exchange, str) and queue.exchange != DEFAULT_EXCHANGE:
            key = queue.routing_key if queue.routing_key is not None else queue.name
            first = Binding(self.exchange_named(queue.exchange, where), key)
        elif queue.exchange is not None or not queue.bindings:
            exchange = self.exchange_named(DEFAULT_EXCHANGE, where)
            first = Binding(exchange, self.key_for(queue))
        rest = []
        for b in queue.bindings:
            if isinstance(b.exchange, Exchange):
                if b.exchange.name == DEFAULT_EXCHANGE:
                    raise TopologyError(
                        f"{where}: a binding cannot name the default exchange ''; every queue "
                        "is reachable through it by its name already"
                    )
                exchange = self.note_exchange(b.exchange, where)
            else:
                if b.exchange == DEFAULT_EXCHANGE:
                    raise TopologyError(
                        f"{where}: a binding cannot name the default exchange ''; every queue "
                        "is reachable through it by its name already"
                    )
                exchange = self.exchange_named(b.exchange, where)
            check_binding_arguments(exchange.type, b.arguments)
            rest.append(Binding(exchange, b.routing_key, b.arguments))
        args = _with_max_priority(queue.arguments, self.max_priority)
        if first is None:
            return dataclasses.replace(
                queue, exchange=None, routing_key=None, bindings=tuple(rest), queue_arguments=args
            )
        return dataclasses.replace(
            queue,
            exchange=first.exchange,
            routing_key=first.routing_key,
            bindings=tuple(rest),
            queue_arguments=args,
        )


def _entries(task_queues: Any) -> list[Queue | Broadcast]:
    if task_queues is None:
        return []
    items: Iterable[Any] = task_queues.values() if isinstance(task_queues, Mapping) else task_queues
    if isinstance(items, (str, bytes, Queue, Broadcast)):
        raise TopologyError("task_queues must be a list of Queue(...) and Broadcast(...)")
    entries: list[Queue | Broadcast] = []
    for item in items:
        if not isinstance(item, (Queue, Broadcast)):
            hint = f": write Queue({item!r})" if isinstance(item, str) else ""
            raise TopologyError(
                f"task_queues holds {item!r}, which is not a Queue or a Broadcast{hint}"
            )
        entries.append(item)
    return entries


def declare(settings: RoutingSettings | HasRoutingSettings) -> Declarations:
    """Resolve the queues and exchanges ``settings`` declare.

    Raises TopologyError for an invalid default setting, an entry of ``task_queues`` that is
    not a Queue or Broadcast, a name declared twice with different definitions, a binding to an
    exchange that is declared nowhere, and an invalid headers binding.
    """
    settings = routing_settings(settings)
    resolver = _Resolver.from_settings(settings)
    entries = _entries(settings.task_queues)
    if not entries:
        entries = [Queue(resolver.default_queue)]
    by_name: dict[str, Queue | Broadcast] = {}
    for entry in entries:
        seen = by_name.get(entry.name)
        if seen is not None and seen != entry:
            raise TopologyError(
                f"task_queues declares {entry.name!r} twice, differently: {seen!r} and "
                f"{entry!r}; keep one"
            )
        by_name[entry.name] = entry
    # Exchange objects first, so that bindings by name can refer to any of them.
    for entry in by_name.values():
        where = f"{type(entry).__name__.lower()} {entry.name!r}"
        if isinstance(entry, Broadcast):
            resolver.note_exchange(entry.exchange, where)
            continue
        if isinstance(entry.exchange, Exchange) and entry.exchange.name != DEFAULT_EXCHANGE:
            resolver.note_exchange(entry.exchange, where)
        for b in entry.bindings:
            if isinstance(b.exchange, Exchange) and b.exchange.name != DEFAULT_EXCHANGE:
                resolver.note_exchange(b.exchange, where)
    queues: dict[str, Queue] = {}
    broadcasts: dict[str, Broadcast] = {}
    for name, entry in by_name.items():
        if isinstance(entry, Broadcast):
            args = _with_max_priority(entry.queue_arguments, resolver.max_priority)
            broadcasts[name] = Broadcast(name, queue_arguments=args)
        else:
            queues[name] = resolver.resolve(entry)
    return Declarations(
        default_queue=resolver.default_queue,
        default_exchange=resolver.default_exchange,
        default_routing_key=resolver.default_key,
        create_missing=bool(settings.task_create_missing_queues),
        max_priority=resolver.max_priority,
        queues=queues,
        broadcasts=broadcasts,
        exchanges={name: ex for name, (ex, _) in resolver.exchanges.items()},
        order=tuple(by_name),
    )


def settings_topology(settings: RoutingSettings | HasRoutingSettings) -> Topology:
    """The exchanges, queues and bindings ``settings`` declare (what a worker declares).

    Raises TopologyError as :func:`declare` does.
    """
    return declare(settings).topology()
