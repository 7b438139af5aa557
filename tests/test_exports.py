"""The public API is exactly what ``conveyor.__all__`` lists; changing it is a deliberate act."""

import conveyor

EXPECTED = {
    "App",
    "AsyncResult",
    "Middleware",
    "Request",
    "ResultMeta",
    "State",
    "Task",
    "Worker",
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
    "crontab",
}


def test_all_is_pinned() -> None:
    assert set(conveyor.__all__) == EXPECTED


def test_every_name_in_all_is_importable() -> None:
    for name in conveyor.__all__:
        assert getattr(conveyor, name) is not None, name
