"""The worker's banner: what it serves, with passwords and secrets hidden."""

from __future__ import annotations

from conveyor.app import App
from conveyor.cli.banner import differing_settings, worker_banner
from conveyor.config import Settings
from conveyor.routing.entities import Broadcast, Exchange, Queue, binding
from conveyor.worker import Worker


def test_the_banner_lists_queues_with_their_bindings_and_the_tasks() -> None:
    media = Exchange("media", "topic")
    app = App(
        "shop",
        broker="amqp://shop:s3cret@rabbit.example:5672/prod",
        result_backend="redis://:hunter2@cache.example:6379/1",
        config={
            "task_queues": [
                Queue("orders", max_priority=10),
                Queue("media", [binding(media, "media.*"), binding(media, "img.#")]),
                Broadcast("everyone"),
            ],
            "task_routes": {"shop.*": {"queue": "orders"}},
            "broker_transport_options": {"heartbeat": 10},
        },
    )

    @app.task(name="shop.total")
    def total() -> None: ...

    @app.task(name="ops.ping")
    def ping() -> None: ...

    worker = Worker(app, queues=["orders", "media", "everyone"], hostname="shop@vm", concurrency=3)
    text = worker_banner(worker, app_spec="shop:app")
    assert text.splitlines() == [
        "conveyor 0.1.0 worker shop@vm",
        "[config]",
        "  .> app:         shop:app",
        "  .> broker:      amqp://shop:***@rabbit.example:5672/prod",
        "  .> results:     redis://:***@cache.example:6379/1",
        "  .> pool:        asyncio, concurrency 3, prefetch 12",
        "[queues]",
        "  .> orders    exchange=celery(direct) key=orders max_priority=10",
        "  .> media     exchange=media(topic) key=media.*",
        "               exchange=media(topic) key=img.#",
        "  .> everyone  exchange=everyone(fanout) broadcast: a copy to each worker",
        "[tasks]",
        "  . ops.ping",
        "  . shop.total",
    ]
    debug = worker_banner(worker, app_spec="shop:app", settings=True).splitlines()
    assert debug[len(text.splitlines()) :] == [
        "[settings that differ from the defaults]",
        "  broker_url = amqp://shop:***@rabbit.example:5672/prod",
        "  broker_transport_options = {'heartbeat': 10}",
        "  result_backend = redis://:***@cache.example:6379/1",
        "  task_routes = {'shop.*': {'queue': 'orders'}}",
        "  task_queues = [Queue('orders', max_priority=10), Queue('media', bindings=['exchange="
        "media(topic) key=media.*', 'exchange=media(topic) key=img.#']), Broadcast('everyone')]",
    ]
    assert "s3cret" not in "\n".join(debug)
    assert "hunter2" not in "\n".join(debug)


def test_settings_that_look_secret_are_hidden() -> None:
    conf = Settings(
        broker_url="redis://:pw@h:6379/0",
        broker_transport_options={"sasl_password": "pw", "api_token": "t", "lease": 2.0},
    )
    assert differing_settings(conf) == [
        ("broker_url", "redis://:***@h:6379/0"),
        ("broker_transport_options", "{'sasl_password': '***', 'api_token': '***', 'lease': 2.0}"),
    ]
