"""Explaining routes: which queues a routed message reaches, and a lint of the routing settings.

Pure functions over a Router's answers and a Topology; ``conveyor routes explain`` and
``conveyor routes check`` print what these return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from conveyor.errors import ConveyorError
from conveyor.routing.declarations import bound_bindings
from conveyor.routing.entities import DEFAULT_EXCHANGE, Broadcast, Queue
from conveyor.routing.matching import route_through
from conveyor.routing.router import TASK_ATTRIBUTE, RoutableTask, Route, Router
from conveyor.routing.rules import PatternRule
from conveyor.routing.settings import HasRoutingSettings, RoutingSettings
from conveyor.routing.topology import Topology

__all__ = ["Explanation", "Finding", "check", "explain", "topology_for"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """What happens to a message sent along ``route``.

    ``queues``: the queues that receive it (sorted). ``broadcast``: the Broadcast whose every
    consuming worker receives it, if any. ``exchanges``: the exchange published to, then each
    alternate exchange it was handed to. ``on_demand``: the route's queue is not in
    ``task_queues`` and is created when the message is sent.
    """

    route: Route
    queues: tuple[str, ...]
    broadcast: str | None
    exchanges: tuple[str, ...]
    on_demand: bool

    @property
    def reaches_nothing(self) -> bool:
        """True if no queue and no broadcast receives the message: it would be dropped."""
        return not self.queues and self.broadcast is None


def topology_for(route: Route, topology: Topology) -> Topology:
    """``topology`` plus what the publisher declares for ``route``: its exchange, and its queue
    with that queue's bindings and their exchanges."""
    result = topology
    if route.exchange.name != DEFAULT_EXCHANGE and not result.has_exchange(route.exchange.name):
        result = result.with_exchange(route.exchange)
    queue = route.queue
    if isinstance(queue, Broadcast):
        if not result.has_exchange(queue.name):
            result = result.with_exchange(queue.exchange)
    elif queue is not None and queue.name not in result.queues:
        result = result.with_queue(queue)
        for b in queue.all_bindings:
            exchange = b.exchange
            if not isinstance(exchange, str) and not result.has_exchange(exchange.name):
                result = result.with_exchange(exchange)
        for bound in bound_bindings(queue):
            result = result.with_binding(bound)
    return result


def explain(
    route: Route, topology: Topology, headers: Mapping[str, Any] | None = None
) -> Explanation:
    """Which queues of ``topology`` (plus what the route itself declares) receive a message sent
    along ``route`` with these ``headers``."""
    full = topology_for(route, topology)
    queues, exchanges = route_through(full, route.exchange.name, route.routing_key, headers)
    broadcast = None
    if isinstance(route.queue, Broadcast) and route.queue.name in exchanges:
        broadcast = route.queue.name
    on_demand = isinstance(route.queue, Queue) and route.queue.name not in topology.queues
    return Explanation(route, tuple(sorted(queues)), broadcast, exchanges, on_demand)


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem ``check`` found: ``code`` is stable for scripts, ``message`` is for humans,
    ``subject`` names the rule, task or setting it is about."""

    severity: Severity
    code: str
    message: str
    subject: str | None = None


def _names(names: Iterable[str], limit: int = 5) -> str:
    items = sorted(names)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class _Checker:
    def __init__(self, router: Router, tasks: Mapping[str, RoutableTask | None]) -> None:
        self.router = router
        self.tasks = tasks
        self.topology = router.topology()
        self.findings: list[Finding] = []
        self.static: dict[str, Route] = {}

    def add(self, severity: Severity, code: str, message: str, subject: str | None) -> None:
        finding = Finding(severity, code, message, subject)
        if finding not in self.findings:
            self.findings.append(finding)

    def shadowed_rules(self) -> None:
        rules = self.router.rules
        proven: set[str] = set()
        for j, later in enumerate(rules):
            if not isinstance(later, PatternRule):
                continue
            for earlier in rules[:j]:
                if isinstance(earlier, PatternRule) and earlier.covers(later):
                    self.add(
                        "error",
                        "shadowed-rule",
                        f"{later.label} can never win: {earlier.label} is tried first and "
                        "matches every name it matches; reorder or remove one of them",
                        later.label,
                    )
                    proven.add(later.label)
                    break
        matched: dict[str, list[str]] = {}
        decided: dict[str, str] = {}
        for name, task in self.tasks.items():
            try:
                found = self.router.lookup(name, task=task)
            except ConveyorError as exc:
                self.add("error", "router-failed", str(exc), name)
                continue
            if found is not None:
                decided[name] = found[0].label
            for rule in rules:
                if isinstance(rule, PatternRule) and rule.matches(name):
                    matched.setdefault(rule.label, []).append(name)
        for rule in rules:
            names = matched.get(rule.label, [])
            if (
                not names
                or rule.label in proven
                or any(decided.get(n) == rule.label for n in names)
            ):
                continue
            winners = sorted({decided[n] for n in names if n in decided})
            self.add(
                "warning",
                "never-wins",
                f"{rule.label} never wins for the registered tasks it matches "
                f"({_names(names)}): {', '.join(winners)} decides them first",
                rule.label,
            )

    def route_reaches(self, route: Route, subject: str) -> None:
        explanation = explain(route, self.topology)
        target = f"exchange {route.exchange.name!r} ({route.exchange.type.value})"
        if explanation.reaches_nothing:
            self.add(
                "error",
                "unroutable",
                f"{subject}: a message to {target} with routing key {route.routing_key!r} "
                "reaches no queue and would be dropped; bind a queue that matches it, or "
                "route it to a declared queue",
                subject,
            )
        if route.priority is None:
            return
        full = topology_for(route, self.topology)
        flat = [n for n in explanation.queues if full.queues[n].priority_levels is None]
        if isinstance(route.queue, Broadcast) and "x-max-priority" not in (
            route.queue.queue_arguments
        ):
            flat.append(route.queue.name)
        source = route.sources.get("priority")
        origin = f" (from {source})" if source and source not in subject else ""
        if flat:
            self.add(
                "warning",
                "priority-without-max",
                f"{subject}: sends priority {route.priority}{origin} to queue "
                f"{_names(repr(n) for n in flat)} without x-max-priority, so the priority is "
                "ignored; set max_priority on the queue or task_queue_max_priority",
                subject,
            )

    def undeclared(self, queue: Any, subject: str) -> bool:
        decl = self.router.declarations
        if decl.create_missing or not isinstance(queue, str):
            return False
        if queue in decl.queues or queue in decl.broadcasts:
            return False
        self.add(
            "error",
            "undeclared-queue",
            f"{subject} routes to queue {queue!r}, which is not in task_queues, and "
            f"task_create_missing_queues is off: add Queue({queue!r}, ...) to task_queues or "
            "turn task_create_missing_queues on",
            subject,
        )
        return True

    def static_routes(self) -> None:
        for rule in self.router.rules:
            if not isinstance(rule, PatternRule) or self.undeclared(
                rule.route.get("queue"), rule.label
            ):
                continue
            try:
                route = self.router.resolve([(rule.label, dict(rule.route))])
            except ConveyorError as exc:
                self.add("error", "route-error", str(exc), rule.label)
                continue
            self.static[rule.label] = route
            self.route_reaches(route, rule.label)

    def registered_tasks(self) -> None:
        defaulted: list[str] = []
        for name, task in self.tasks.items():
            queue = getattr(task, "queue", None) if task is not None else None
            if self.undeclared(queue, f"task {name!r} ({TASK_ATTRIBUTE})"):
                continue
            try:
                route = self.router.route(name, task=task)
            except ConveyorError as exc:
                self.add("error", "route-error", str(exc), name)
                continue
            if route.decided_by == "default":
                defaulted.append(name)
            if self.static.get(route.decided_by) == route:
                continue  # the rule's own route, already checked
            self.route_reaches(route, f"task {name!r} (decided by {route.decided_by})")
        if defaulted:
            self.add(
                "warning",
                "default-queue",
                f"{len(defaulted)} registered task(s) fall to the default queue "
                f"{self.router.declarations.default_queue!r} because no option, task attribute "
                f"or task_routes rule routes them: {_names(defaulted, limit=10)}",
                "task_default_queue",
            )

    def default_route(self) -> None:
        decl = self.router.declarations
        if self.undeclared(decl.default_queue, "task_default_queue"):
            return
        try:
            route = self.router.resolve([])
        except ConveyorError as exc:
            self.add("error", "route-error", str(exc), "task_default_queue")
            return
        self.route_reaches(route, "the default route")


def check(
    settings: RoutingSettings | HasRoutingSettings,
    tasks: Mapping[str, RoutableTask | None] | Iterable[str] = (),
) -> list[Finding]:
    """Lint the routing settings against the registered ``tasks`` (names, or name -> task).

    Finds: a task_routes rule that can never win because an earlier rule matches every name it
    matches (proven on its literal prefix: error; seen on the registered tasks only: warning);
    a route to an undeclared queue while missing-queue creation is off (error); a route that
    reaches no queue (error); a priority sent to a queue without ``x-max-priority`` (warning);
    registered tasks that fall to the default queue (warning); settings the Router refuses, and
    router functions that raise (errors). Router functions are called for each registered task
    with no arguments and no options. Errors come first.
    """
    named: Mapping[str, RoutableTask | None]
    named = tasks if isinstance(tasks, Mapping) else dict.fromkeys(tasks)
    try:
        router = Router(settings)
    except ConveyorError as exc:
        return [Finding("error", "invalid-settings", str(exc), None)]
    checker = _Checker(router, named)
    checker.shadowed_rules()
    checker.static_routes()
    checker.default_route()
    checker.registered_tasks()
    order = {"error": 0, "warning": 1}
    return sorted(checker.findings, key=lambda f: order[f.severity])
