"""conveyor: a distributed task queue with first-class routing.

The public API is re-exported here; everything else is an implementation detail. Names other
than the errors are imported on first use (PEP 562), so that importing one part
(``conveyor.routing``) does not load the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from conveyor.errors import (
    BrokerUnavailable,
    ChordError,
    ConfigurationError,
    ConfigurationWarning,
    ConveyorError,
    MaxRetriesExceeded,
    NotFound,
    NotRegistered,
    PreconditionFailed,
    ProtocolError,
    RemoteTaskError,
    ResultTimeout,
    ResultUnavailable,
    Retry,
    RoutingError,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevoked,
    TimeLimitExceeded,
    TopologyError,
    TransportError,
    Unroutable,
)

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.beat.schedules import crontab
    from conveyor.canvas import GroupResult, Signature, chain, chord, group, signature
    from conveyor.config import Settings
    from conveyor.logs import get_task_logger
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
    "ChordError",
    "ConfigurationError",
    "ConfigurationWarning",
    "ConveyorError",
    "Envelope",
    "Exchange",
    "ExchangeType",
    "GroupResult",
    "MaxRetriesExceeded",
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
    "ResultUnavailable",
    "Retry",
    "Route",
    "Router",
    "RoutingError",
    "Settings",
    "Signature",
    "SoftTimeLimitExceeded",
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
    "chain",
    "chord",
    "crontab",
    "get_task_logger",
    "group",
    "signature",
]

# The errors are imported above (a small module that imports nothing); the rest on first use.
_HOME_OF = {
    "App": "conveyor.app",
    "AsyncResult": "conveyor.results.async_result",
    "Binding": "conveyor.routing.entities",
    "Broadcast": "conveyor.routing.entities",
    "Envelope": "conveyor.protocol.envelope",
    "Exchange": "conveyor.routing.entities",
    "ExchangeType": "conveyor.routing.entities",
    "Middleware": "conveyor.worker",
    "Queue": "conveyor.routing.entities",
    "Request": "conveyor.task",
    "ResultMeta": "conveyor.results",
    "Route": "conveyor.routing.router",
    "Router": "conveyor.routing.router",
    "Settings": "conveyor.config",
    "State": "conveyor.results",
    "Task": "conveyor.task",
    "Worker": "conveyor.worker",
    "binding": "conveyor.routing.entities",
    "crontab": "conveyor.beat.schedules",
    "get_task_logger": "conveyor.logs",
    "GroupResult": "conveyor.canvas",
    "Signature": "conveyor.canvas",
    "chain": "conveyor.canvas",
    "chord": "conveyor.canvas",
    "group": "conveyor.canvas",
    "signature": "conveyor.canvas",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (then it is a plain attribute)."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
