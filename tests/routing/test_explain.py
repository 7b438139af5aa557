"""explain() and check(): what a route reaches, and what is wrong with a routing configuration."""

from __future__ import annotations

import re
from typing import Any

import pytest

from conveyor import Broadcast, Exchange, ExchangeType, Queue, Router, Settings, binding
from conveyor.routing.explain import Finding, check, explain
from conveyor.routing.rules import PatternRule, parse_task_routes
from tests.routing.routers_fixture import route_task


def router(**settings: Any) -> Router:
    return Router(Settings(**settings))


def codes(findings: list[Finding]) -> list[tuple[str, str, str | None]]:
    return [(f.severity, f.code, f.subject) for f in findings]


def test_route_to_an_exchange_nobody_is_bound_to_reaches_nothing() -> None:
    r = router(task_routes=(route_task,))
    explanation = explain(r.route("myapp.tasks.compress_video"), r.topology())
    assert explanation.reaches_nothing
    assert explanation.queues == ()
    assert explanation.exchanges == ("video",)


def test_auto_created_queue_is_reached_and_marked_on_demand() -> None:
    r = router(task_routes={"feed.*": "feeds"})
    explanation = explain(r.route("feed.x"), r.topology())
    assert explanation.queues == ("feeds",)
    assert explanation.on_demand
    assert not explain(r.route("web.x"), r.topology()).on_demand


def test_alternate_exchange_path_is_shown() -> None:
    main = Exchange("main", arguments={"alternate-exchange": "spill"})
    spill = Exchange("spill", ExchangeType.FANOUT)
    r = router(task_queues=[Queue("work", main, "work"), Queue("unrouted", spill)])
    explanation = explain(
        r.route("x", options={"exchange": "main", "routing_key": "nope"}), r.topology()
    )
    assert explanation.queues == ("unrouted",)
    assert explanation.exchanges == ("main", "spill")


def test_headers_exchange_is_explained_with_the_message_headers() -> None:
    reports = Exchange("reports", ExchangeType.HEADERS)
    r = router(task_queues=[Queue("pdf", bindings=[binding(reports, arguments={"format": "pdf"})])])
    route = r.route("x", options={"exchange": "reports"})
    assert explain(route, r.topology(), {"format": "pdf"}).queues == ("pdf",)
    assert explain(route, r.topology(), {"format": "csv"}).reaches_nothing


@pytest.mark.parametrize(
    ("pattern", "prefix", "universal"),
    [
        ("feed.tasks.*", "feed.tasks.", "feed.tasks."),
        ("feed.*.import", "feed.", None),
        ("*", "", ""),
        ("feed.tasks.import_feed", "feed.tasks.import_feed", None),
        (re.compile(r"feed\.tasks\..*"), "feed.tasks.", "feed.tasks."),
        (re.compile(r"feed"), "feed", "feed"),
        (re.compile(r"^feed$"), "feed", None),
        (re.compile(r"(video|image)\.tasks\..*"), "", None),
        (re.compile(r"a|b"), "", None),
        (re.compile(r"ab*"), "a", None),
        (re.compile(r"ab+c"), "ab", None),
        (re.compile(r"ab{0,2}"), "a", None),
        (re.compile(r"a[bc]"), "a", None),
        (re.compile(r"\d+"), "", None),
        (re.compile(r"feed", re.IGNORECASE), "", None),
    ],
)
def test_literal_and_universal_prefixes(
    pattern: str | re.Pattern[str], prefix: str, universal: str | None
) -> None:
    (rule,) = parse_task_routes(([(pattern, "q")],))
    assert isinstance(rule, PatternRule)
    assert rule.literal_prefix == prefix
    assert rule.universal_prefix == universal


def test_rule_shadowed_on_its_prefix_is_an_error() -> None:
    findings = check(
        Settings(task_routes=([("feed.*", "a"), ("feed.tasks.*", "b"), ("web.*", "c")],)), ()
    )
    assert codes(findings) == [("error", "shadowed-rule", "task_routes[0][1] 'feed.tasks.*'")]
    assert "task_routes[0][0] 'feed.*' is tried first" in findings[0].message


def test_exact_name_shadowed_by_an_earlier_regex_in_another_router() -> None:
    findings = check(Settings(task_routes=[{re.compile("feed"): "a"}, {"feed.import": "b"}]), ())
    assert codes(findings) == [("error", "shadowed-rule", "task_routes[1]['feed.import']")]


def test_more_specific_rule_first_is_fine_and_a_dict_tries_exact_names_first() -> None:
    assert check(Settings(task_routes=([("feed.tasks.*", "a"), ("feed.*", "b")],)), ()) == []
    assert check(Settings(task_routes={"feed.*": "a", "feed.import": "b"}), ()) == []


def test_rule_that_never_wins_for_the_registered_tasks_is_a_warning() -> None:
    settings = Settings(task_routes=([("*.import", "a"), ("feed.*", "b")],))
    findings = check(settings, ["feed.import"])
    assert codes(findings) == [("warning", "never-wins", "task_routes[0][1] 'feed.*'")]
    assert "(feed.import)" in findings[0].message
    assert check(settings, ["feed.import", "feed.parse"]) == []


def test_route_to_undeclared_queue_with_creation_off_is_an_error() -> None:
    class T:
        name = "web.render"
        queue = "web"
        exchange = exchange_type = routing_key = priority = None

    settings = Settings(
        task_create_missing_queues=False,
        task_queues=[Queue("default")],
        task_routes={"feed.*": "feeds"},
    )
    findings = check(settings, {"web.render": T()})
    assert ("error", "undeclared-queue", "task_routes['feed.*']") in codes(findings)
    assert ("error", "undeclared-queue", "task 'web.render' (task attribute)") in codes(findings)
    settings.task_create_missing_queues = True
    assert [f for f in check(settings, {"web.render": T()}) if f.severity == "error"] == []


def test_priority_to_a_queue_without_max_priority_is_a_warning() -> None:
    settings = Settings(
        task_queues=[Queue("default"), Queue("fast", max_priority=10), Queue("slow")],
        task_routes={
            "a.*": {"queue": "fast", "priority": 9},
            "b.*": {"queue": "slow", "priority": 9},
        },
    )
    findings = check(settings, ())
    assert codes(findings) == [("warning", "priority-without-max", "task_routes['b.*']")]
    assert "'slow'" in findings[0].message
    settings.task_queue_max_priority = 10
    assert check(settings, ()) == []


def test_default_priority_to_default_queue_without_max_priority() -> None:
    findings = check(Settings(task_default_priority=5), ())
    assert codes(findings) == [("warning", "priority-without-max", "the default route")]
    assert "task_default_priority" in findings[0].message


def test_registered_tasks_falling_to_the_default_queue_are_listed() -> None:
    settings = Settings(task_routes={"feed.*": "feeds"})
    findings = check(settings, ["feed.import", "web.render", "web.parse"])
    assert codes(findings) == [("warning", "default-queue", "task_default_queue")]
    assert "2 registered task(s)" in findings[0].message
    assert "web.parse, web.render" in findings[0].message


def test_routes_that_reach_no_queue_are_errors() -> None:
    settings = Settings(
        task_default_queue="default",
        task_queues=[Queue("default", routing_key="task.#")],
        task_default_exchange="tasks",
        task_default_exchange_type="topic",
        task_default_routing_key="default",
        task_routes=(route_task,),
    )
    findings = check(settings, {"myapp.tasks.compress_video": None})
    assert codes(findings) == [
        ("error", "unroutable", "the default route"),
        (
            "error",
            "unroutable",
            "task 'myapp.tasks.compress_video' (decided by "
            "task_routes[0] tests.routing.routers_fixture.route_task())",
        ),
    ]
    assert "exchange 'tasks' (topic) with routing key 'default' reaches no queue" in (
        findings[0].message
    )


def test_broadcast_routes_are_not_unroutable() -> None:
    settings = Settings(
        task_queues=[Queue("default"), Broadcast("everyone")],
        task_routes={"tasks.reload_cache": {"exchange": "everyone"}},
    )
    assert check(settings, ["tasks.reload_cache"]) == []


def test_settings_the_router_refuses_are_one_error() -> None:
    findings = check(Settings(task_queues=[Queue("q", exchange="nowhere")]), ["x"])
    assert codes(findings) == [("error", "invalid-settings", None)]
    assert "not declared" in findings[0].message


def test_errors_come_before_warnings() -> None:
    settings = Settings(
        task_default_priority=1,
        task_routes=([("feed.*", "a"), ("feed.x.*", "b")],),
    )
    severities = [f.severity for f in check(settings, ["web.x"])]
    assert severities == sorted(severities, key=["error", "warning"].index)
    assert severities[0] == "error"
