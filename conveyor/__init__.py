"""conveyor: a distributed task queue with first-class routing.

The public API is re-exported here; everything else is an implementation detail.
"""

from conveyor.app import App
from conveyor.beat.schedules import crontab
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
from conveyor.results import ResultMeta, State
from conveyor.results.async_result import AsyncResult
from conveyor.routing.entities import Binding, Broadcast, Exchange, ExchangeType, Queue, binding
from conveyor.routing.router import Route, Router
from conveyor.task import Request, Task
from conveyor.worker import Middleware, Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncResult",
    "Binding",
    "Broadcast",
    "BrokerUnavailable",
    "ConfigurationError",
    "ConveyorError",
    "Envelope",
    "Exchange",
    "ExchangeType",
    "Middleware",
    "NotFound",
    "NotRegistered",
    "PreconditionFailed",
    "ProtocolError",
    "Queue",
    "RemoteTaskError",
    "Request",
    "ResultMeta",
    "ResultTimeout",
    "Retry",
    "Route",
    "Router",
    "RoutingError",
    "Settings",
    "State",
    "Task",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "TopologyError",
    "TransportError",
    "Unroutable",
    "Worker",
    "__version__",
    "binding",
    "crontab",
]
