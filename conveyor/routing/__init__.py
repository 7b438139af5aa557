"""Where messages go: entities, RabbitMQ's matching rules, the task router. Pure: no I/O."""

from conveyor.routing.declarations import Declarations, declare, settings_topology
from conveyor.routing.entities import (
    Binding,
    Broadcast,
    Exchange,
    ExchangeType,
    FrozenMapping,
    Queue,
    binding,
)
from conveyor.routing.explain import Explanation, Finding, check, explain
from conveyor.routing.matching import destinations, headers_match, route_through, topic_matches
from conveyor.routing.router import RoutableTask, Route, Router
from conveyor.routing.settings import HasRoutingSettings, RoutingSettings
from conveyor.routing.topology import BoundBinding, Topology

__all__ = [
    "Binding",
    "BoundBinding",
    "Broadcast",
    "Declarations",
    "Exchange",
    "ExchangeType",
    "Explanation",
    "Finding",
    "FrozenMapping",
    "HasRoutingSettings",
    "Queue",
    "RoutableTask",
    "Route",
    "Router",
    "RoutingSettings",
    "Topology",
    "binding",
    "check",
    "declare",
    "destinations",
    "explain",
    "headers_match",
    "route_through",
    "settings_topology",
    "topic_matches",
]
