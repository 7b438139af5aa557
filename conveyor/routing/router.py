"""The task router: where a task message goes, decided the way the routing guide describes.

Precedence, highest first: options given to ``apply_async``/``send_task``, routing attributes
on the task, then ``task_routes`` (see :mod:`conveyor.routing.rules` for its forms). The source
that names a ``queue`` or an ``exchange`` decides the destination; lower sources then add
nothing to it (so a route's routing key never leaks onto a queue named explicitly), while higher
sources may still override single keys (an explicit ``routing_key`` on a routed task). Priority
is taken from the highest source that sets one, else ``task_default_priority``.

A route naming a queue expands to that queue's exchange, exchange type and routing key from
``task_queues`` (explicit keys in the route win); an undeclared queue is created when
``task_create_missing_queues`` is on (exchange of the same name, direct, key = name) and is a
RoutingError when it is off. With no queue and no exchange anywhere, the task goes to
``task_default_queue``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from conveyor.errors import ConveyorError, RoutingError
from conveyor.routing.declarations import Declarations, declare
from conveyor.routing.entities import (
    DEFAULT_EXCHANGE,
    Broadcast,
    Exchange,
    ExchangeType,
    FrozenMapping,
    Queue,
    check_priority,
    check_routing_key,
)
from conveyor.routing.rules import (
    ROUTE_KEYS,
    FunctionRule,
    PatternRule,
    Rule,
    import_router,
    parse_task_routes,
    route_options,
)
from conveyor.routing.settings import HasRoutingSettings, RoutingSettings, routing_settings
from conveyor.routing.topology import Topology

__all__ = ["EXPLICIT", "TASK_ATTRIBUTE", "RoutableTask", "Route", "Router"]

EXPLICIT = "explicit option"
TASK_ATTRIBUTE = "task attribute"
DEFAULT = "default"


class RoutableTask(Protocol):
    """What the router reads from a task object; ``None`` means "not set on the task"."""

    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> str | None: ...
    @property
    def exchange(self) -> str | None: ...
    @property
    def exchange_type(self) -> str | None: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def priority(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Route:
    """Where one message goes.

    ``exchange`` is resolved with its type (``Exchange("")`` is the default exchange);
    ``queue`` is the declared or auto-created queue (or Broadcast) the route names, if any: the
    publisher declares it, with its bindings and its exchange, before publishing, so that a
    queue created on demand exists before its first message. ``priority`` is the message
    priority (None: none). ``decided_by`` names the rule that chose the destination:
    ``"explicit option"``, ``"task attribute"``, a task_routes rule such as
    ``"task_routes['feed.tasks.*']"``, or ``"default"``. ``sources`` says, for each key that
    some source set (queue, exchange, exchange_type, routing_key, priority), which one.
    """

    exchange: Exchange
    routing_key: str
    queue: Queue | Broadcast | None
    priority: int | None
    decided_by: str
    sources: Mapping[str, str] = field(default_factory=FrozenMapping)

    @property
    def exchange_type(self) -> ExchangeType:
        """The type of :attr:`exchange`."""
        return self.exchange.type

    @property
    def queue_name(self) -> str | None:
        """The name of :attr:`queue`, if the route names one."""
        return self.queue.name if self.queue is not None else None


_ROUTE_CACHE_SIZE = 4096


def _cache_values(values: Sequence[Any]) -> tuple[Any, ...]:
    """Routing values as part of a cache key. Values other than None and plain strings carry
    their type, so that ``True`` and ``1`` (equal, same hash) never share an entry: one is a
    valid priority, the other is not.
    """
    return tuple(
        value if value is None or type(value) is str else (type(value), value) for value in values
    )


def _task_options(task: RoutableTask | None) -> dict[str, Any]:
    if task is None:
        return {}
    values = {key: getattr(task, key, None) for key in ROUTE_KEYS}
    return route_options(values, f"task {getattr(task, 'name', task)!r} attributes")


class Router:
    """Routes task messages by one snapshot of the routing settings (a RoutingSettings, or
    the one an application's Settings gives).

    The settings are read once, at construction: build a new Router after changing them.
    Raises TopologyError (bad ``task_queues`` or defaults) or RoutingError (bad
    ``task_routes``) at construction, so a wrong configuration fails before any message is sent.
    """

    def __init__(self, settings: RoutingSettings | HasRoutingSettings) -> None:
        settings = routing_settings(settings)
        self._declarations = declare(settings)
        self._rules = parse_task_routes(settings.task_routes)
        default_priority = settings.task_default_priority
        self._default_priority = (
            check_priority(default_priority, what="task_default_priority")
            if default_priority is not None
            else None
        )
        self._functions: dict[str, Callable[..., Any]] = {}
        self._missing: dict[str, Queue] = {}
        self._routes: dict[tuple[Any, ...], Route] = {}

    @property
    def declarations(self) -> Declarations:
        """The resolved queues and exchanges of the settings."""
        return self._declarations

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The task_routes rules in the order they are tried."""
        return self._rules

    def declared_queues(self) -> list[Queue | Broadcast]:
        """``task_queues`` with default exchanges, keys and max priority resolved (the default
        queue alone when ``task_queues`` is empty)."""
        return self._declarations.declared()

    def topology(self) -> Topology:
        """The exchanges, queues and bindings the settings declare."""
        return self._declarations.topology()

    def queue(self, name: str) -> Queue | Broadcast:
        """The queue (or Broadcast) called ``name``: declared, or created because it is missing.

        Raises RoutingError when it is not declared and ``task_create_missing_queues`` is off.
        """
        return self._queue(name, f"queue {name!r}")

    def _queue(self, name: str, where: str) -> Queue | Broadcast:
        decl = self._declarations
        found = decl.queues.get(name) or decl.broadcasts.get(name)
        if found is not None:
            return found
        if decl.create_missing:
            created = self._missing.get(name)
            if created is None:
                created = self._missing[name] = decl.missing_queue(name)
            return created
        raise RoutingError(
            f"{where}: queue {name!r} is not declared in task_queues and "
            f"task_create_missing_queues is off: add Queue({name!r}, ...) to task_queues, or "
            "set task_create_missing_queues = True"
        )

    def _function(self, rule: FunctionRule) -> Callable[..., Any]:
        if callable(rule.target):
            return rule.target
        fn = self._functions.get(rule.target)
        if fn is None:
            fn = self._functions[rule.target] = import_router(rule.target)
        return fn

    def lookup(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        task: RoutableTask | None = None,
    ) -> tuple[Rule, dict[str, Any]] | None:
        """The first task_routes rule with a truthy answer for ``name``, and its route.

        Router functions are called as ``fn(name, args, kwargs, options, task=task)``.
        Raises RoutingError if a router function raises or answers something that is not a
        route.
        """
        return self._lookup(name, args, kwargs, options, task)[0]

    def _lookup(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
        task: RoutableTask | None,
    ) -> tuple[tuple[Rule, dict[str, Any]] | None, bool]:
        """:meth:`lookup`, and whether the answer came from pattern rules alone (no router
        function was asked, so the same name always gets the same answer)."""
        pure = True
        for rule in self._rules:
            if isinstance(rule, PatternRule):
                if rule.matches(name):
                    return (rule, dict(rule.route)), pure
                continue
            fn = self._function(rule)
            try:
                answer = fn(name, tuple(args), dict(kwargs or {}), dict(options or {}), task=task)
            except ConveyorError:
                raise
            except Exception as exc:
                raise RoutingError(
                    f"{rule.label} raised {type(exc).__name__}: {exc} while routing {name!r}"
                ) from exc
            if answer:
                return (rule, route_options(answer, f"{rule.label} for {name!r}")), False
            pure = False
        return None, pure

    def route(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        task: RoutableTask | None = None,
    ) -> Route:
        """Where a message for task ``name`` goes.

        ``options`` are the caller's send options; the router reads ``queue``, ``exchange``,
        ``exchange_type``, ``routing_key`` and ``priority`` and ignores the rest. Raises
        RoutingError for an undeclared queue while missing-queue creation is off, a bad route
        value or a failing router function; TopologyError for a priority outside 0..255 or a
        routing key over 255 bytes.

        Routes decided without asking a router function depend only on the name, the routing
        options and the task's routing attributes, so they are remembered under those (errors
        are not); a router function is asked on every call.
        """
        sent = _cache_values([options.get(k) for k in ROUTE_KEYS]) if options else None
        own = None if task is None else _cache_values([getattr(task, k, None) for k in ROUTE_KEYS])
        key: tuple[Any, ...] | None = (name, sent, own)
        try:
            cached = self._routes.get(key)  # type: ignore[arg-type]
        except TypeError:  # an unhashable option value: route it without the cache
            key = cached = None
        if cached is not None:
            return cached
        explicit = route_options(
            {k: v for k, v in (options or {}).items() if k in ROUTE_KEYS}, "send options"
        )
        sources: list[tuple[str, dict[str, Any]]] = [
            (EXPLICIT, explicit),
            (TASK_ATTRIBUTE, _task_options(task)),
        ]
        found, pure = self._lookup(name, args, kwargs, options, task)
        if found is not None:
            sources.append((found[0].label, found[1]))
        route = self.resolve(sources)
        if pure and key is not None:
            if len(self._routes) >= _ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[key] = route
        return route

    def resolve(self, sources: Sequence[tuple[str, Mapping[str, Any]]]) -> Route:
        """Merge route options from ``sources`` (label, options), highest precedence first,
        into a Route (see the module docstring for how keys merge).

        Raises as :meth:`route` does.
        """
        anchor = next(
            (i for i, (_, opts) in enumerate(sources) if "queue" in opts or "exchange" in opts),
            None,
        )
        chosen: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for key in ROUTE_KEYS:
            reach = len(sources) if key == "priority" or anchor is None else anchor + 1
            for label, opts in sources[:reach]:
                if key in opts:
                    chosen[key] = opts[key]
                    origin[key] = label
                    break
        decided_by = sources[anchor][0] if anchor is not None else DEFAULT
        priority = chosen.get("priority")
        if priority is None and self._default_priority is not None:
            priority = self._default_priority
            origin["priority"] = "task_default_priority"
        if priority is not None:
            check_priority(priority, what=f"priority from {origin['priority']}")
        exchange, routing_key, queue = self._destination(chosen, decided_by)
        check_routing_key(routing_key)
        return Route(
            exchange=exchange,
            routing_key=routing_key,
            queue=queue,
            priority=priority,
            decided_by=decided_by,
            sources=FrozenMapping(origin),
        )

    def _exchange(self, given: str | Exchange, kind: ExchangeType | None, where: str) -> Exchange:
        decl = self._declarations
        name = given.name if isinstance(given, Exchange) else given
        if name == DEFAULT_EXCHANGE:
            declared: Exchange | None = Exchange(DEFAULT_EXCHANGE)
        elif name in decl.broadcasts:
            declared = decl.broadcasts[name].exchange
        elif name in decl.exchanges:
            declared = decl.exchanges[name]
        elif name == decl.default_exchange.name:
            declared = decl.default_exchange
        else:
            declared = given if isinstance(given, Exchange) else None
        if declared is None:
            return Exchange(name, kind or ExchangeType.DIRECT)
        if kind is not None and kind is not declared.type:
            raise RoutingError(
                f"{where}: exchange_type is {kind.value!r} but exchange {name!r} is "
                f"{declared.type.value!r}; drop exchange_type or fix it"
            )
        return declared

    def _destination(
        self, chosen: Mapping[str, Any], decided_by: str
    ) -> tuple[Exchange, str, Queue | Broadcast | None]:
        decl = self._declarations
        kind = ExchangeType.parse(chosen["exchange_type"]) if "exchange_type" in chosen else None
        given_exchange = chosen.get("exchange")
        given_key: str | None = chosen.get("routing_key")
        queue_value = chosen.get("queue")
        if queue_value is None and given_exchange is not None:
            name = given_exchange.name if isinstance(given_exchange, Exchange) else given_exchange
            if name in decl.broadcasts:
                queue_value = decl.broadcasts[name]
            else:
                exchange = self._exchange(given_exchange, kind, decided_by)
                key = given_key
                if key is None:
                    key = decl.default_routing_key or decl.default_queue
                return exchange, key, None
        if queue_value is None:
            queue_value = decl.default_queue
        queue = self._expand_queue(queue_value, decided_by)
        if isinstance(queue, Broadcast):
            exchange = self._exchange(given_exchange or queue.exchange, kind, decided_by)
            return exchange, given_key or "", queue
        bindings = queue.all_bindings
        if given_exchange is not None:
            exchange = self._exchange(given_exchange, kind, decided_by)
        else:
            first = bindings[0].exchange
            assert isinstance(first, Exchange)
            exchange = self._exchange(first, kind, decided_by)
        if given_key is None:
            if queue.name == decl.default_queue and decl.default_routing_key:
                given_key = decl.default_routing_key
            else:
                given_key = bindings[0].routing_key if bindings else queue.name
        return exchange, given_key, queue

    def _expand_queue(self, value: str | Queue | Broadcast, where: str) -> Queue | Broadcast:
        if isinstance(value, str):
            return self._queue(value, where)
        declared = self._declarations.queues.get(value.name) or self._declarations.broadcasts.get(
            value.name
        )
        if declared is not None:
            return declared
        if isinstance(value, Broadcast):
            return value
        return self._declarations.resolve_queue(value)
