"""The Router beyond the guide's examples: errors, merging, defaults, declarations."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor import (
    Broadcast,
    Exchange,
    ExchangeType,
    Queue,
    Router,
    RoutingError,
    Settings,
    TopologyError,
    binding,
)
from conveyor.routing import BoundBinding, settings_topology


def router(**settings: Any) -> Router:
    return Router(Settings(**settings))


def test_missing_queue_creation_off_names_the_queue_and_the_fix() -> None:
    r = router(
        task_create_missing_queues=False,
        task_queues=[Queue("celery")],
        task_routes={"feed.*": "feeds"},
    )
    with pytest.raises(RoutingError) as err:
        r.route("feed.import")
    message = str(err.value)
    assert "'feeds'" in message
    assert "task_routes['feed.*']" in message
    assert "task_create_missing_queues" in message
    assert "Queue('feeds'" in message
    with pytest.raises(RoutingError, match="'other'"):
        r.queue("other")
    assert r.route("web.page").queue_name == "celery"


def test_default_queue_must_be_declared_when_task_queues_is_not_empty_and_creation_is_off() -> None:
    r = router(task_create_missing_queues=False, task_queues=[Queue("only")])
    with pytest.raises(RoutingError, match="'celery'"):
        r.route("x")
    # With no task_queues at all, the default queue is declared implicitly.
    assert router(task_create_missing_queues=False).route("x").queue_name == "celery"


def test_default_priority_and_priority_limits() -> None:
    r = router(task_default_priority=4)
    route = r.route("x")
    assert route.priority == 4
    assert route.sources["priority"] == "task_default_priority"
    assert r.route("x", options={"priority": 0}).priority == 0
    assert router().route("x").priority is None
    with pytest.raises(TopologyError, match=r"priority from explicit option must be in 0\.\.255"):
        r.route("x", options={"priority": 256})
    with pytest.raises(TopologyError, match="task_default_priority"):
        router(task_default_priority=-1)
    with pytest.raises(TopologyError, match="task_queue_max_priority"):
        router(task_queue_max_priority=300)


def test_routing_key_over_255_bytes_in_options_is_refused() -> None:
    with pytest.raises(TopologyError, match="256 bytes"):
        router().route("x", options={"routing_key": "k" * 256})


def test_options_the_router_does_not_read_are_ignored() -> None:
    route = router().route("x", options={"countdown": 10, "queue": None, "expires": 3})
    assert route.queue_name == "celery"


@pytest.mark.parametrize(
    ("task_routes", "match"),
    [
        ({"x": {"queu": "q"}}, r"unknown route key 'queu' \(did you mean 'queue'\?\)"),
        ({"x": {"priority": "high"}}, "priority must be int"),
        ({"x": 42}, "a route must be a dict"),
        ([42], "a router must be"),
        ({42: "q"}, "a pattern must be"),
        (([("a", "q"), "b"],), r"task_routes\[0\]\[1\]: an items list holds"),
    ],
)
def test_bad_task_routes_fail_at_construction(task_routes: Any, match: str) -> None:
    with pytest.raises(RoutingError, match=match):
        router(task_routes=task_routes)


def test_router_function_failures_are_routing_errors() -> None:
    r = router(task_routes=("tests.routing.routers_fixture.broken",))
    with pytest.raises(RoutingError, match="raised ValueError: no route for you while routing 'x'"):
        r.route("x")
    with pytest.raises(RoutingError, match="cannot import"):
        router(task_routes=("tests.routing.nowhere.route",)).route("x")
    with pytest.raises(RoutingError, match="has no attribute"):
        router(task_routes=("tests.routing.routers_fixture.nothing",)).route("x")
    with pytest.raises(RoutingError, match="not callable"):
        router(task_routes=("tests.routing.routers_fixture:not_callable",)).route("x")
    bad_answer = router(task_routes=lambda *a, **k: {"queue": 5})
    with pytest.raises(RoutingError, match="queue must be"):
        bad_answer.route("x")


def test_router_function_receives_the_call_and_can_return_a_queue_name() -> None:
    r = router(task_routes=("tests.routing.routers_fixture:by_size",))
    assert r.route("resize", kwargs={"size": 500}).queue_name == "big"
    assert r.route("resize", kwargs={"size": 5}).queue_name == "celery"


def test_dict_tries_exact_names_before_patterns() -> None:
    r = router(task_routes={"feed.*": "globbed", "feed.special": "exact"})
    assert r.route("feed.special").queue_name == "exact"
    assert r.route("feed.other").queue_name == "globbed"


def test_glob_matches_the_whole_name_and_regex_matches_from_the_start() -> None:
    r = router(task_routes=([("feed.*", "g"), (re.compile(r"web\."), "r")],))
    assert r.route("feed.x").queue_name == "g"
    assert r.route("xfeed.x").queue_name == "celery"
    assert r.route("web.anything.else").queue_name == "r"
    assert r.route("my.web.x").queue_name == "celery"


def test_higher_source_naming_a_queue_takes_nothing_from_lower_ones() -> None:
    r = router(
        task_routes={"x": {"queue": "feeds", "exchange": "elsewhere", "routing_key": "feed.k"}}
    )
    route = r.route("x", options={"queue": "web"})
    assert (route.exchange.name, route.routing_key) == ("web", "web")


def test_higher_source_may_override_only_the_routing_key() -> None:
    r = router(
        task_queues=[Queue("feeds", Exchange("feeds", ExchangeType.TOPIC), routing_key="feed.#")],
        task_routes={"x": {"queue": "feeds"}},
    )
    route = r.route("x", options={"routing_key": "feed.import"})
    assert route.decided_by == "task_routes['x']"
    assert (route.exchange.name, route.routing_key) == ("feeds", "feed.import")
    assert route.sources["routing_key"] == "explicit option"


def test_exchange_type_that_contradicts_a_declared_exchange_is_refused() -> None:
    r = router(task_queues=[Queue("q", Exchange("media", ExchangeType.DIRECT))])
    with pytest.raises(RoutingError, match="exchange_type is 'topic' but exchange 'media'"):
        r.route("x", options={"exchange": "media", "exchange_type": "topic"})


def test_queue_object_in_options_gets_the_defaults_resolved() -> None:
    r = router(task_default_exchange="tasks", task_queue_max_priority=3)
    route = r.route("x", options={"queue": Queue("adhoc", routing_key="ad.hoc")})
    assert (route.exchange.name, route.routing_key) == ("tasks", "ad.hoc")
    assert isinstance(route.queue, Queue)
    assert route.queue.priority_levels == 3


def test_declared_queues_resolve_exchange_and_key_defaults() -> None:
    r = router(
        task_default_exchange="tasks",
        task_default_exchange_type="topic",
        task_default_routing_key="task.default",
        task_queues=[
            Queue("celery"),
            Queue("plain"),
            Queue("keyed", routing_key="k.#"),
            Queue("own", Exchange("own", ExchangeType.FANOUT)),
            Queue("by_name", exchange="own"),
            Queue("multi", bindings=[binding("tasks", "a.*"), binding("own")]),
            Broadcast("everyone"),
        ],
        task_queue_max_priority=7,
    )
    got = {
        q.name: [(b.exchange_name, b.routing_key) for b in q.all_bindings]
        for q in r.declared_queues()
        if isinstance(q, Queue)
    }
    assert got == {
        "celery": [("tasks", "task.default")],
        "plain": [("tasks", "plain")],
        "keyed": [("tasks", "k.#")],
        "own": [("own", "own")],
        "by_name": [("own", "by_name")],
        "multi": [("tasks", "a.*"), ("own", "")],
    }
    assert [q.name for q in r.declared_queues()][-1] == "everyone"
    everyone = r.queue("everyone")
    assert isinstance(everyone, Broadcast)
    assert everyone.queue_arguments["x-max-priority"] == 7
    for q in r.declared_queues():
        if isinstance(q, Queue):
            assert q.priority_levels == 7
            for b in q.all_bindings:
                assert isinstance(b.exchange, Exchange)


def test_binding_to_an_exchange_declared_nowhere_is_a_topology_error() -> None:
    with pytest.raises(TopologyError, match="binds to exchange 'media', which is not declared"):
        router(task_queues=[Queue("q", bindings=[binding("media", "k")])])
    with pytest.raises(TopologyError, match="'media', which is not declared"):
        router(task_queues=[Queue("q", exchange="media")])


def test_exchange_declared_twice_differently_is_a_topology_error() -> None:
    with pytest.raises(TopologyError, match="declared twice, differently"):
        router(
            task_queues=[
                Queue("a", Exchange("media", ExchangeType.DIRECT)),
                Queue("b", Exchange("media", ExchangeType.TOPIC)),
            ]
        )
    with pytest.raises(TopologyError, match="task_default_exchange"):
        router(
            task_default_exchange="tasks",
            task_queues=[Queue("a", Exchange("tasks", ExchangeType.TOPIC)), Queue("b")],
        )
    with pytest.raises(TopologyError, match="twice, differently"):
        router(task_queues=[Queue("a", routing_key="x"), Queue("a", routing_key="y")])


def test_bad_task_queues_entries_and_defaults() -> None:
    with pytest.raises(TopologyError, match=r"write Queue\('feeds'\)"):
        router(task_queues=["feeds"])
    with pytest.raises(TopologyError, match="unknown exchange type"):
        router(task_default_exchange_type="round-robin")
    with pytest.raises(TopologyError, match="x-match"):
        router(
            task_queues=[
                Queue("h", bindings=[binding(Exchange("hx", "headers"), arguments={"x-match": 2})])
            ]
        )


def test_settings_topology_lists_exchanges_queues_and_bindings() -> None:
    media = Exchange("media")
    topo = settings_topology(
        Settings(
            task_queues=[
                Queue("videos", media, "media.video"),
                Queue("images", media, "media.image"),
                Broadcast("everyone"),
            ]
        )
    )
    assert set(topo.exchanges) == {"media", "everyone"}
    assert set(topo.queues) == {"videos", "images"}
    assert set(topo.bindings) == {
        BoundBinding("media", "videos", "media.video"),
        BoundBinding("media", "images", "media.image"),
    }


def test_router_reads_settings_once() -> None:
    settings = Settings(task_routes={"x": "first"})
    r = Router(settings)
    settings.task_routes = {"x": "second"}
    assert r.route("x").queue_name == "first"
    assert Router(settings).route("x").queue_name == "second"


def test_repeated_routes_still_ask_router_functions_every_time() -> None:
    calls: list[tuple[Any, ...]] = []

    def by_size(name: str, args: tuple[Any, ...], *rest: Any, **kw: Any) -> Any:
        calls.append(args)
        return "big" if args and args[0] > 10 else None

    first = router(task_routes=[by_size, {"feed.*": "feeds"}])
    assert [first.route("feed.a", (n,)).queue_name for n in (1, 20, 1, 20)] == [
        "feeds",
        "big",
        "feeds",
        "big",
    ]
    assert len(calls) == 4
    later = router(task_routes=[{"feed.*": "feeds"}, by_size])
    assert [later.route(name, (n,)).queue_name for name, n in [("feed.a", 20), ("web", 20)]] == [
        "feeds",
        "big",
    ]
    assert later.route("web", (1,)).queue_name == "celery"


def test_repeated_routes_see_changed_options_and_task_attributes() -> None:
    class Task:
        name = "feed.a"
        queue: str | None = None
        exchange = exchange_type = routing_key = None
        priority: int | None = None

    task = Task()
    r = router(task_routes={"feed.*": "feeds"})
    assert r.route("feed.a", task=task).queue_name == "feeds"
    task.queue = "mine"
    assert r.route("feed.a", task=task).queue_name == "mine"
    assert r.route("feed.a", options={"queue": "other"}, task=task).queue_name == "other"
    task.priority = 3
    assert r.route("feed.a", task=task).priority == 3
    assert r.route("feed.a", options={"priority": 1}).priority == 1
    # Equal to 1 and hashing alike, but not a priority: refused every time.
    for _ in range(2):
        with pytest.raises(RoutingError, match="priority"):
            r.route("feed.a", options={"priority": True})
    assert r.route("feed.a", options={"queue": Queue("q", routing_key="k")}).routing_key == "k"


_segment = st.sampled_from(["feed", "web", "video", "tasks", "x"])
_name = st.lists(_segment, min_size=1, max_size=4).map(".".join)
_glob = st.lists(st.one_of(_segment, st.just("*")), min_size=1, max_size=3).map(".".join)


@given(st.lists(_glob, max_size=5), _name)
def test_items_list_routes_to_the_first_matching_glob(globs: list[str], name: str) -> None:
    items = [(g, f"q{i}") for i, g in enumerate(globs)]
    route = router(task_routes=(items,)).route(name)
    expected = next((q for g, q in items if fnmatch.fnmatchcase(name, g)), "celery")
    assert route.queue_name == expected
    if expected == "celery":
        assert route.decided_by == "default"
    else:
        index = int(expected[1:])
        assert route.decided_by == f"task_routes[0][{index}] {globs[index]!r}"
