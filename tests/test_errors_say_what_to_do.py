"""Errors a newcomer meets, each message asserted in full: an unknown send option, a result
that will never come (ignore_result), a timeout (rounded), and wrong settings, raised where the
App is configured rather than at the first send."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.app import App
from conveyor.errors import (
    ConfigurationError,
    ResultTimeout,
    ResultUnavailable,
    RoutingError,
    TopologyError,
)
from conveyor.routing.entities import Queue
from conveyor.seconds import seconds

SEND_OPTIONS = (
    "chain, chord, countdown, eta, exchange, exchange_type, expires, group_id, group_index, "
    "headers, ignore_result, link, link_error, parent_id, priority, queue, reply_to, root_id, "
    "routing_key, serializer, task_id, time_limit"
)


@pytest.fixture
def app() -> Iterator[App]:
    url = f"memory://errors-{uuid.uuid4().hex}"
    app = App("errors", broker=url, result_backend=url)
    yield app
    app.close()


def test_an_unknown_send_option_names_it_and_the_ones_that_exist(app: App) -> None:
    @app.task(name="web.render")
    def render() -> None: ...

    expected = f"unknown send option 'retry_policy'; the send options are: {SEND_OPTIONS}"
    options: Any = {"retry_policy": {"max_retries": 3}}
    with pytest.raises(ConfigurationError) as caught:
        render.apply_async((), **options)
    assert str(caught.value) == expected
    with pytest.raises(ConfigurationError) as caught:
        app.send_task("web.render", **options)
    assert str(caught.value) == expected
    typo: Any = {"countdwon": 5}
    with pytest.raises(ConfigurationError) as caught:
        app.send_task("web.render", **typo)
    assert str(caught.value) == (
        f"unknown send option 'countdwon' (did you mean 'countdown'?); the send options are: "
        f"{SEND_OPTIONS}"
    )


def test_times_in_messages_are_rounded() -> None:
    assert [seconds(v) for v in (2.999994919999949, 12.6, 1.25, 0.3333, 0.05, 0)] == [
        "3 s",
        "13 s",
        "1.2 s",
        "0.33 s",
        "0.05 s",
        "0 s",
    ]


def test_a_result_timeout_says_the_rounded_time_and_what_to_check(app: App) -> None:
    result = app.send_task("nobody.listens", queue=f"q-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ResultTimeout) as caught:
        result.get(timeout=0.2999999)
    assert str(caught.value) == (
        f"no result for task {result.id} within 0.3 s; is a worker consuming its queue?"
    )


@pytest.mark.parametrize("where", ["send option", "task option", "setting"])
def test_get_on_a_task_sent_with_ignore_result_fails_at_once(app: App, where: str) -> None:
    if where == "setting":
        app.conf.task_ignore_result = True

    @app.task(name="web.fire", ignore_result=True if where == "task option" else None)
    def fire() -> None: ...

    result = fire.apply_async(ignore_result=True) if where == "send option" else fire.delay()
    started = time.monotonic()
    with pytest.raises(ResultUnavailable) as caught:
        result.get(timeout=30)
    assert time.monotonic() - started < 5
    assert str(caught.value) == (
        f"results are off for task 'web.fire' [{result.id}]: it was sent with ignore_result, so "
        "no worker stores one and get() would only wait out its timeout; send it with "
        "ignore_result=False (or set the task's ignore_result=False) to get its result"
    )


async def test_aget_on_a_task_sent_with_ignore_result_fails_at_once(app: App) -> None:
    result = await app.asend_task("web.fire", ignore_result=True)
    with pytest.raises(ResultUnavailable, match=r"^results are off for task 'web\.fire'"):
        await result.aget(timeout=30)
    await app.aclose()


BAD_SETTINGS: list[tuple[dict[str, Any], type[ConfigurationError], str]] = [
    (
        {"task_queues": [Queue("web_queue")], "task_create_missing_queues": False},
        RoutingError,
        "default: queue 'default' is not declared in task_queues and "
        "task_create_missing_queues is off: add Queue('default', ...) to task_queues, or set "
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
