"""conveyor: a distributed task queue with first-class routing.

The public API is re-exported here; everything else is an implementation detail.
"""

from conveyor.config import Settings
from conveyor.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    NotFound,
    NotRegistered,
    PreconditionFailed,
    ProtocolError,
    RemoteTaskError,
    ResultTimeout,
    Retry,
    RoutingError,
    TaskError,
    TaskRevoked,
    TimeLimitExceeded,
    TopologyError,
    TransportError,
    Unroutable,
)
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Binding, Broadcast, Exchange, ExchangeType, Queue, binding
from conveyor.routing.router import Route, Router

__version__ = "0.1.0"

__all__ = [
    "Binding",
    "Broadcast",
    "BrokerUnavailable",
    "ConfigurationError",
    "ConveyorError",
    "Envelope",
    "Exchange",
    "ExchangeType",
    "NotFound",
    "NotRegistered",
    "PreconditionFailed",
    "ProtocolError",
    "Queue",
    "RemoteTaskError",
    "ResultTimeout",
    "Retry",
    "Route",
    "Router",
    "RoutingError",
    "Settings",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "TopologyError",
    "TransportError",
    "Unroutable",
    "__version__",
    "binding",
]
