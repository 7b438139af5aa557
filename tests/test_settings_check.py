"""Wrong settings fail where the App is configured (``App(...)``, ``config_from_object``), not
at the first send; each message asserted in full."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError, RoutingError, TopologyError
from conveyor.routing.entities import Queue

BAD_SETTINGS: list[tuple[dict[str, Any], type[ConfigurationError], str]] = [
    (
        {"task_queues": [Queue("web_queue")], "task_create_missing_queues": False},
        RoutingError,
        "default: queue 'celery' is not declared in task_queues and "
        "task_create_missing_queues is off: add Queue('celery', ...) to task_queues, or set "
        "task_create_missing_queues = True",
    ),
    (
        {"task_routes": 5},
        RoutingError,
        "task_routes: a router must be a dict, an items list, a function or a dotted path to "
        "one, got 5",
    ),
    (
        {"task_queues": ["web_queue"]},
        TopologyError,
        "task_queues holds 'web_queue', which is not a Queue or a Broadcast: write "
        "Queue('web_queue')",
    ),
    (
        {"broker_url": "rabbit://localhost"},
        ConfigurationError,
        "broker URL 'rabbit://localhost' has no known scheme: use one of amqp://, amqps://, "
        "memory://, redis://, rediss://, sqlite://",
    ),
    (
        {"result_backend": "mongodb://nowhere"},
        ConfigurationError,
        "result backend URL 'mongodb://nowhere' has no known scheme: use one of django://, "
        "memory://, postgres://, postgresql://, redis://, rediss://, rpc://, sqlite://",
    ),
    (
        {"task_serializer": "yaml"},
        ConfigurationError,
        "task_serializer 'yaml' is not a serializer: use one of json, pickle",
    ),
    (
        {"accept_content": "json"},
        ConfigurationError,
        "accept_content must list serializer names out of json, pickle, got 'json'",
    ),
    (
        {"worker_pool": "prefork"},
        ConfigurationError,
        "worker_pool 'prefork' is not a pool: use one of asyncio, threads, processes",
    ),
    (
        {"worker_concurrency": 0},
        ConfigurationError,
        "worker_concurrency must be a whole number 1 or more (or None for the CPU count), got 0",
    ),
    (
        {"result_expires": "1 day"},
        ConfigurationError,
        "result_expires must be zero or more seconds (or None), got '1 day'",
    ),
    (
        {"timezone": "Europe/Atlantis"},
        ConfigurationError,
        "timezone: unknown time zone 'Europe/Atlantis': use an IANA name such as 'UTC' or "
        "'Europe/Berlin'",
    ),
]


@pytest.mark.parametrize(("config", "kind", "message"), BAD_SETTINGS)
def test_wrong_settings_fail_where_the_app_is_configured(
    config: dict[str, Any], kind: type[ConfigurationError], message: str
) -> None:
    with pytest.raises(kind) as caught:
        App("configured", config=config)
    assert str(caught.value) == message
    app = App("configured", broker="memory://")
    with pytest.raises(kind) as late:
        app.config_from_object(config)
    assert str(late.value) == message


def test_a_wrong_broker_in_the_environment_fails_at_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "sqlite:///tmp/broker.db?lease=soon")
    with pytest.raises(ConfigurationError) as caught:
        App("configured")
    assert str(caught.value) == (
        "option 'lease' of broker URL 'sqlite:///tmp/broker.db?lease=soon' must be a float, "
        "got 'soon'"
    )


def test_a_rule_to_an_undeclared_queue_still_loads_for_routes_check() -> None:
    config = {
        "task_queues": [Queue("default")],
        "task_default_queue": "default",
        "task_routes": {"web.*": {"queue": "web_queue"}},
        "task_create_missing_queues": False,
    }
    app = App("configured", broker="memory://", config=config)
    with pytest.raises(RoutingError) as caught:
        app.send_task("web.render")
    assert str(caught.value) == (
        "task_routes['web.*']: queue 'web_queue' is not declared in task_queues and "
        "task_create_missing_queues is off: add Queue('web_queue', ...) to task_queues, or set "
        "task_create_missing_queues = True"
    )


def test_the_pools_checked_are_the_pools_a_worker_has() -> None:
    from conveyor.settings_check import WORKER_POOLS
    from conveyor.worker.pools import POOLS

    assert set(WORKER_POOLS) == {*POOLS, "processes"}
