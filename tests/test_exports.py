"""The public API is exactly what ``conveyor.__all__`` lists; changing it is a deliberate act."""

import subprocess
import sys

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
    "ConfigurationWarning",
    "ConveyorError",
    "Envelope",
    "Exchange",
    "ExchangeType",
    "MaxRetriesExceeded",
    "NotFound",
    "NotRegistered",
    "PreconditionFailed",
    "ProtocolError",
    "Queue",
    "RemoteTaskError",
    "ResultTimeout",
    "ResultUnavailable",
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
    "get_task_logger",
    "SoftTimeLimitExceeded",
    "ChordError",
    "GroupResult",
    "Signature",
    "chain",
    "chord",
    "group",
    "signature",
}


def test_all_is_pinned() -> None:
    assert set(conveyor.__all__) == EXPECTED


def test_every_name_in_all_is_importable() -> None:
    for name in conveyor.__all__:
        assert getattr(conveyor, name) is not None, name


def test_importing_the_routing_layer_loads_nothing_above_it() -> None:
    code = (
        "import sys, conveyor.routing\n"
        "print(' '.join(m for m in sys.modules if m.startswith('conveyor')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded
    outside = [m for m in loaded if m not in ("conveyor", "conveyor.errors")]
    assert all(m.startswith("conveyor.routing") for m in outside), loaded
