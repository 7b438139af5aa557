"""Every example of the routing guide (seeds/004), as a test of where the message ends up."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from conveyor import (
    Broadcast,
    Exchange,
    ExchangeType,
    Queue,
    Route,
    Router,
    RoutingError,
    Settings,
    binding,
)
from conveyor.routing.explain import explain
from tests.routing.routers_fixture import route_task


def router(**settings: Any) -> Router:
    return Router(Settings(**settings))


def reached(r: Router, route: Route) -> set[str]:
    return set(explain(route, r.topology()).queues)


def test_feeds_route_and_default_queue_for_everything_else() -> None:
    r = router(task_routes={"feed.tasks.import_feed": {"queue": "feeds"}})
    route = r.route("feed.tasks.import_feed")
    assert route.queue_name == "feeds"
    assert route.decided_by == "task_routes['feed.tasks.import_feed']"
    assert reached(r, route) == {"feeds"}
    other = r.route("web.tasks.render")
    assert (other.queue_name, other.decided_by) == ("celery", "default")
    assert reached(r, other) == {"celery"}


def test_glob_sends_the_whole_namespace() -> None:
    r = router(task_routes={"feed.tasks.*": {"queue": "feeds"}})
    assert r.route("feed.tasks.import_feed").queue_name == "feeds"
    assert r.route("feed.tasks.parse").queue_name == "feeds"
    assert r.route("feed.other").queue_name == "celery"


ITEMS = (
    [
        ("feed.tasks.*", {"queue": "feeds"}),
        ("web.tasks.*", {"queue": "web"}),
        (re.compile(r"(video|image)\.tasks\..*"), {"queue": "media"}),
    ],
)


@pytest.mark.parametrize(
    ("name", "queue", "decided_by"),
    [
        ("feed.tasks.import_feed", "feeds", "task_routes[0][0] 'feed.tasks.*'"),
        ("web.tasks.render", "web", "task_routes[0][1] 'web.tasks.*'"),
        ("video.tasks.compress", "media", r"task_routes[0][2] /(video|image)\.tasks\..*/"),
        ("image.tasks.thumbnail", "media", r"task_routes[0][2] /(video|image)\.tasks\..*/"),
        ("audio.tasks.encode", "celery", "default"),
    ],
)
def test_ordered_items_list_with_a_regex(name: str, queue: str, decided_by: str) -> None:
    route = router(task_routes=ITEMS).route(name)
    assert route.queue_name == queue
    assert route.decided_by == decided_by


def test_items_list_is_tried_in_order() -> None:
    r = router(task_routes=([("a.*", "first"), ("a.b", "second")],))
    assert r.route("a.b").queue_name == "first"


def test_items_list_not_wrapped_in_a_tuple_is_explained() -> None:
    with pytest.raises(RoutingError, match=r"inside a tuple"):
        router(task_routes=[("feed.tasks.*", {"queue": "feeds"})])


def test_missing_queue_is_declared_like_the_guide_says() -> None:
    route = router().route("t", options={"queue": "video"})
    assert route.exchange == Exchange("video", ExchangeType.DIRECT)
    assert route.routing_key == "video"
    assert isinstance(route.queue, Queue)
    assert [(b.exchange_name, b.routing_key) for b in route.queue.all_bindings] == [
        ("video", "video")
    ]


def test_changing_the_default_queue_name() -> None:
    r = router(task_default_queue="celery")
    route = r.route("anything")
    assert route.queue_name == "celery"
    assert (route.exchange.name, route.routing_key) == ("celery", "celery")
    assert [q.name for q in r.declared_queues()] == ["celery"]


MANUAL = {
    "task_default_queue": "default",
    "task_queues": (
        Queue("default", routing_key="task.#"),
        Queue("feed_tasks", routing_key="feed.#"),
    ),
    "task_default_exchange": "tasks",
    "task_default_exchange_type": "topic",
    "task_default_routing_key": "task.default",
    "task_routes": {
        "feeds.tasks.import_feed": {"queue": "feed_tasks", "routing_key": "feed.import"},
    },
}


def test_manual_routing_with_a_topic_exchange() -> None:
    r = router(**MANUAL)
    tasks = Exchange("tasks", ExchangeType.TOPIC)
    for q in r.declared_queues():
        assert isinstance(q, Queue)
        assert q.exchange == tasks
    feed = r.route("feeds.tasks.import_feed")
    assert (feed.exchange, feed.routing_key) == (tasks, "feed.import")
    assert reached(r, feed) == {"feed_tasks"}
    regular = r.route("proj.tasks.add")
    assert (regular.exchange, regular.routing_key) == (tasks, "task.default")
    assert reached(r, regular) == {"default"}


def test_manual_routing_overridden_by_apply_async_arguments() -> None:
    r = router(**MANUAL)
    route = r.route(
        "proj.tasks.add",
        args=["http://cnn.com/rss"],
        options={"queue": "feed_tasks", "routing_key": "feed.import"},
    )
    assert route.decided_by == "explicit option"
    assert (route.exchange.name, route.routing_key) == ("tasks", "feed.import")
    assert reached(r, route) == {"feed_tasks"}


def test_a_queue_on_another_exchange() -> None:
    r = router(
        task_default_exchange="tasks",
        task_default_exchange_type="topic",
        task_queues=(
            Queue("feed_tasks", routing_key="feed.#"),
            Queue("regular_tasks", routing_key="task.#"),
            Queue(
                "image_tasks",
                exchange=Exchange("mediatasks", type=ExchangeType.DIRECT),
                routing_key="image.compress",
            ),
        ),
    )
    route = r.route("images.compress", options={"queue": "image_tasks"})
    assert route.exchange == Exchange("mediatasks", ExchangeType.DIRECT)
    assert route.routing_key == "image.compress"
    assert reached(r, route) == {"image_tasks"}
    assert reached(r, r.route("x", options={"routing_key": "task.add"})) == set()
    feed = r.route("x", options={"exchange": "tasks", "routing_key": "feed.add"})
    assert reached(r, feed) == {"feed_tasks"}


def test_rabbitmq_priorities_per_queue_and_by_default() -> None:
    r = router(
        task_queues=[
            Queue(
                "tasks",
                Exchange("tasks"),
                routing_key="tasks",
                queue_arguments={"x-max-priority": 10},
            ),
            Queue("other", Exchange("tasks"), routing_key="other"),
        ],
        task_queue_max_priority=5,
        task_default_priority=5,
    )
    levels = {q.name: q.priority_levels for q in r.declared_queues() if isinstance(q, Queue)}
    assert levels == {"tasks": 10, "other": 5}
    assert r.route("t", options={"queue": "tasks"}).priority == 5
    assert r.queue("made_up").priority_levels == 5  # type: ignore[union-attr]


def test_amqp_primer_three_queues_two_exchanges() -> None:
    r = router(
        task_queues=(
            Queue("default", Exchange("default"), routing_key="default"),
            Queue("videos", Exchange("media"), routing_key="media.video"),
            Queue("images", Exchange("media"), routing_key="media.image"),
        ),
        task_default_queue="default",
        task_default_exchange_type="direct",
        task_default_routing_key="default",
    )
    assert reached(r, r.route("x")) == {"default"}
    assert reached(
        r, r.route("x", options={"exchange": "media", "routing_key": "media.video"})
    ) == {"videos"}
    assert reached(r, r.route("x", options={"queue": "images"})) == {"images"}


def test_defining_queues_with_default_exchange_and_key() -> None:
    default_exchange = Exchange("default", type=ExchangeType.DIRECT)
    media_exchange = Exchange("media", type=ExchangeType.DIRECT)
    r = router(
        task_queues=(
            Queue("default", default_exchange, routing_key="default"),
            Queue("videos", media_exchange, routing_key="media.video"),
            Queue("images", media_exchange, routing_key="media.image"),
        ),
        task_default_queue="default",
        task_default_exchange="default",
        task_default_routing_key="default",
    )
    route = r.route("no.route.for.me")
    assert (route.exchange, route.routing_key, route.queue_name) == (
        default_exchange,
        "default",
        "default",
    )
    assert reached(r, route) == {"default"}


def test_several_bindings_on_one_queue() -> None:
    media_exchange = Exchange("media", type=ExchangeType.DIRECT)
    r = router(
        task_queues=(
            Queue(
                "media",
                [
                    binding(media_exchange, routing_key="media.video"),
                    binding(media_exchange, routing_key="media.image"),
                ],
            ),
        ),
    )
    video = r.route("x", options={"exchange": "media", "routing_key": "media.video"})
    image = r.route("x", options={"exchange": "media", "routing_key": "media.image"})
    assert reached(r, video) == reached(r, image) == {"media"}
    by_queue = r.route("x", options={"queue": "media"})
    assert (by_queue.exchange, by_queue.routing_key) == (media_exchange, "media.video")


def test_precedence_options_then_task_attributes_then_task_routes() -> None:
    class T:
        name = "feed.tasks.import_feed"
        queue: str | None = "from_task"
        exchange = exchange_type = routing_key = None
        priority: int | None = None

    r = router(task_routes={"feed.tasks.*": {"queue": "from_routes", "priority": 3}})
    assert r.route(T.name).queue_name == "from_routes"
    routed = r.route(T.name, task=T())
    assert (routed.queue_name, routed.decided_by) == ("from_task", "task attribute")
    assert routed.priority == 3  # the route still gives what nothing above it sets
    explicit = r.route(T.name, options={"queue": "from_option", "priority": 9}, task=T())
    assert (explicit.queue_name, explicit.decided_by) == ("from_option", "explicit option")
    assert explicit.priority == 9
    assert explicit.sources["priority"] == "explicit option"


def test_router_function_returning_exchange_type_and_key() -> None:
    r = router(task_routes=(route_task,))
    route = r.route("myapp.tasks.compress_video")
    assert route.exchange == Exchange("video", ExchangeType.TOPIC)
    assert route.routing_key == "video.compress"
    assert route.queue is None
    assert route.decided_by == "task_routes[0] tests.routing.routers_fixture.route_task()"
    assert r.route("myapp.tasks.other").decided_by == "default"


def test_router_function_by_dotted_path() -> None:
    r = router(task_routes=("tests.routing.routers_fixture.route_task",))
    route = r.route("myapp.tasks.compress_video")
    assert (route.exchange.name, route.exchange.type, route.routing_key) == (
        "video",
        ExchangeType.TOPIC,
        "video.compress",
    )
    assert route.decided_by == "task_routes[0] 'tests.routing.routers_fixture.route_task'"


def test_queue_key_expands_from_task_queues() -> None:
    r = router(
        task_queues=[Queue("video", Exchange("video", ExchangeType.TOPIC), routing_key="video.#")],
        task_routes=lambda name, args, kwargs, options, task=None, **kw: {
            "queue": "video",
            "routing_key": "video.compress",
        },
    )
    route = r.route("myapp.tasks.compress_video")
    assert route.queue_name == "video"
    assert route.exchange == Exchange("video", ExchangeType.TOPIC)
    assert route.routing_key == "video.compress"
    assert reached(r, route) == {"video"}


def test_a_dict_gives_the_same_route_as_the_function() -> None:
    queues = [Queue("video", Exchange("video", ExchangeType.TOPIC), routing_key="video.#")]
    as_dict = router(
        task_queues=queues,
        task_routes={
            "myapp.tasks.compress_video": {"queue": "video", "routing_key": "video.compress"}
        },
    ).route("myapp.tasks.compress_video")
    assert (as_dict.exchange, as_dict.routing_key, as_dict.queue_name) == (
        Exchange("video", ExchangeType.TOPIC),
        "video.compress",
        "video",
    )


def test_mixed_sequence_first_truthy_answer_wins() -> None:
    calls: list[str] = []

    def spy(
        name: str, args: Sequence[Any], kwargs: Mapping[str, Any], options: Any, task: Any = None
    ) -> None:
        calls.append(name)

    r = router(
        task_routes=[
            spy,
            route_task,
            {"myapp.tasks.compress_video": {"queue": "video", "routing_key": "video.compress"}},
            {"myapp.tasks.*": "fallback"},
        ]
    )
    assert r.route("myapp.tasks.compress_video").exchange.name == "video"
    assert r.route("myapp.tasks.compress_video").queue is None  # the function answered first
    other = r.route("myapp.tasks.resize")
    assert (other.queue_name, other.decided_by) == ("fallback", "task_routes[3]['myapp.tasks.*']")
    assert calls == ["myapp.tasks.compress_video"] * 2 + ["myapp.tasks.resize"]


def test_priority_in_a_route_and_apply_async_overrides_it() -> None:
    r = router(
        task_queues=[Queue("video", max_priority=10)],
        task_routes={
            "myapp.tasks.compress_video": {
                "queue": "video",
                "routing_key": "video.compress",
                "priority": 10,
            }
        },
    )
    assert r.route("myapp.tasks.compress_video").priority == 10
    assert r.route("myapp.tasks.compress_video", options={"priority": 0}).priority == 0


def test_broadcast_route_reaches_every_worker() -> None:
    r = router(
        task_queues=(Broadcast("broadcast_tasks"),),
        task_routes={
            "tasks.reload_cache": {"queue": "broadcast_tasks", "exchange": "broadcast_tasks"}
        },
    )
    route = r.route("tasks.reload_cache")
    assert route.exchange == Exchange("broadcast_tasks", ExchangeType.FANOUT)
    assert route.queue == Broadcast("broadcast_tasks")
    explanation = explain(route, r.topology())
    assert explanation.broadcast == "broadcast_tasks"
    assert not explanation.reaches_nothing
    assert r.queue("broadcast_tasks") == Broadcast("broadcast_tasks")


def test_broadcast_from_a_beat_entry_naming_only_the_exchange() -> None:
    r = router(task_queues=(Broadcast("broadcast_tasks"),))
    route = r.route("tasks.reload_cache", options={"exchange": "broadcast_tasks"})
    assert route.exchange.type is ExchangeType.FANOUT
    assert route.queue == Broadcast("broadcast_tasks")
    assert explain(route, r.topology()).broadcast == "broadcast_tasks"
