"""The App's settings and task registry (no broker involved)."""

from __future__ import annotations

import os
import types
import uuid

import pytest

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.task_ids import new_task_id


def test_config_from_dict_object_and_module() -> None:
    app = App("svc", config={"task_default_queue": "feeds"})
    assert app.conf.task_default_queue == "feeds"

    class Conf:
        task_default_priority = 3

    app.config_from_object(Conf)
    assert app.conf.task_default_priority == 3
    module = types.ModuleType("cfg")
    module.task_routes = {"web.*": "web_queue"}  # type: ignore[attr-defined]
    app.config_from_object(module)
    assert app.conf.task_routes == {"web.*": "web_queue"}


def test_broker_and_backend_arguments_override_config() -> None:
    app = App(
        broker="memory://",
        result_backend="memory://",
        config={"broker_url": "sqlite:///x.db", "result_backend": "rpc://"},
    )
    assert app.conf.broker_url == "memory://"
    assert app.conf.result_backend == "memory://"


def test_unknown_setting_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigurationError, match="task_default_queue"):
        App(config={"task_default_queeu": "x"})


def test_task_decorator_forms_and_routing_attributes() -> None:
    app = App("svc")

    @app.task
    def plain(x: int) -> int:
        return x + 1

    @app.task(name="web.render", queue="web_queue", routing_key="web.render", priority=7)
    async def render(page: str) -> str:
        return page

    assert plain.name.startswith(__name__ + ".")
    assert plain.name.endswith("<locals>.plain")
    assert plain(1) == 2
    assert app.tasks["web.render"] is render
    assert (render.queue, render.routing_key, render.priority) == ("web_queue", "web.render", 7)
    assert render.exchange is None
    assert render.is_async
    assert not plain.is_async


def test_same_name_twice_is_refused() -> None:
    app = App()

    @app.task(name="dup")
    def one() -> None: ...

    with pytest.raises(ConfigurationError, match="already registered"):

        @app.task(name="dup")
        def two() -> None: ...


def test_execution_options_fall_back_to_settings() -> None:
    app = App(config={"task_acks_late": False, "task_time_limit": 5.0})

    @app.task
    def t() -> None: ...

    @app.task(acks_late=True, time_limit=1.0, ignore_result=True)
    def u() -> None: ...

    assert (t.acks_late, t.time_limit, t.ignore_result) == (False, 5.0, False)
    assert (u.acks_late, u.time_limit, u.ignore_result) == (True, 1.0, True)


def test_retry_backoff_delays() -> None:
    app = App()

    @app.task(retry_backoff=2.0, retry_backoff_max=10.0)
    def t() -> None: ...

    assert [t.retry_delay(n) for n in range(4)] == [2.0, 4.0, 8.0, 10.0]


async def test_reassigned_routing_settings_take_effect_at_the_next_send() -> None:
    app = App("svc", broker="memory://", result_backend="memory://")
    app.conf.task_routes = {"feed.*": "feeds"}
    assert app.router.route("feed.import").queue_name == "feeds"
    assert app.router is app.router  # unchanged settings: the same router
    app.conf.task_routes = {"feed.*": "imports"}
    assert app.router.route("feed.import").queue_name == "imports"
    app.conf.task_default_queue = "other"
    assert app.router.route("web.page").queue_name == "other"
    async with app:
        await app.asend_task("feed.import", ignore_result=True)
        app.conf.task_routes = {"feed.*": "feeds"}
        await app.asend_task("feed.import", ignore_result=True)
        transport = await app.atransport()
        assert (await transport.queue_stats("imports")).ready == 1
        assert (await transport.queue_stats("feeds")).ready == 1


def test_task_ids_are_random_uuid4s_and_a_forked_child_draws_its_own() -> None:
    ids = [new_task_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:50]:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id, sent to the parent
        os.write(write, new_task_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    assert os.read(read, 100).decode() != new_task_id()
    os.close(read)
