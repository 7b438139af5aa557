"""Where messages go: entities, RabbitMQ's matching rules, the task router. Pure: no I/O."""

from conveyor.routing.entities import (
    Binding,
    Broadcast,
    Exchange,
    ExchangeType,
    FrozenMapping,
    Queue,
    binding,
)
from conveyor.routing.matching import destinations, headers_match, topic_matches
from conveyor.routing.topology import BoundBinding, Topology

__all__ = [
    "Binding",
    "BoundBinding",
    "Broadcast",
    "Exchange",
    "ExchangeType",
    "FrozenMapping",
    "Queue",
    "Topology",
    "binding",
    "destinations",
    "headers_match",
    "topic_matches",
]
