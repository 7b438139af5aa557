"""Send options and task options: one typed record each, built from keywords by one function."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from conveyor import App, ConfigurationError
from conveyor.options import (
    NO_OPTIONS,
    SEND_OPTION_NAMES,
    TASK_OPTION_NAMES,
    SendArgs,
    SendOptions,
    TaskArgs,
    TaskOptions,
)
from conveyor.sending import plan


def test_the_keyword_forms_name_the_same_options_with_the_same_types() -> None:
    send_hints = typing.get_type_hints(SendOptions)
    assert typing.get_type_hints(SendArgs) == send_hints
    assert tuple(SendArgs.__annotations__) == SEND_OPTION_NAMES
    task_hints = typing.get_type_hints(TaskOptions)
    keyword_hints = typing.get_type_hints(TaskArgs)
    assert set(keyword_hints) == set(task_hints) == set(TASK_OPTION_NAMES)
    # Keywords may say less than the record holds: no name (made from the function), any
    # sequence of exception types (kept as a tuple).
    assert keyword_hints["name"] == str | None
    assert keyword_hints["autoretry_for"] == Sequence[type[BaseException]]
    different = {n for n in task_hints if task_hints[n] != keyword_hints[n]}
    assert different == {"name", "autoretry_for"}


def test_an_unknown_send_option_is_named_with_the_ones_that_exist() -> None:
    app = App("opts", broker="memory://opts", result_backend="memory://opts")
    with pytest.raises(ConfigurationError, match=r"unknown send option 'link'.*countdown, eta"):
        app.send_task("x", link="y")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"unknown send option 'link'"):
        app.asend_task("x", link="y")  # type: ignore[call-arg,unused-coroutine]
    with pytest.raises(ConfigurationError, match=r"'queu' \(did you mean 'queue'\?\)"):
        SendOptions.of({"queu": "q"})  # type: ignore[typeddict-unknown-key]


def test_an_unknown_task_option_is_named_with_the_ones_that_exist() -> None:
    app = App("opts")

    def t() -> None: ...

    with pytest.raises(ConfigurationError, match=r"unknown task option 'retries'.*max_retries"):
        app.task(retries=3)(t)  # type: ignore[call-overload]


def test_task_options_are_checked_when_built() -> None:
    with pytest.raises(ConfigurationError, match="non-empty string"):
        TaskOptions(name="")
    with pytest.raises(ConfigurationError, match="autoretry_for must list exception types"):
        TaskOptions.of({"autoretry_for": [KeyError, "ValueError"]}, default_name="t")  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="time_limit must be positive"):
        TaskOptions.of({"time_limit": 0}, default_name="t")
    options = TaskOptions.of({"autoretry_for": [KeyError], "name": None}, default_name="t")
    assert (options.name, options.autoretry_for) == ("t", (KeyError,))


def test_no_options_is_one_shared_record_and_merging_keeps_what_the_override_leaves_unset() -> None:
    assert SendOptions.of({}) is NO_OPTIONS
    base = SendOptions(queue="a", priority=3, headers={"k": 1})
    merged = base.merged(SendOptions(queue="b", countdown=5))
    assert merged == SendOptions(queue="b", priority=3, headers={"k": 1}, countdown=5)
    assert base.merged(NO_OPTIONS) is base
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.queue = "c"  # type: ignore[misc]
    assert NO_OPTIONS.route_options() is None
    assert base.route_options() == {"queue": "a", "priority": 3}


def test_a_plan_reads_the_clock_only_for_times_and_resolves_them() -> None:
    app = App("opts")
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def clock() -> datetime:
        return now

    def planned(options: SendOptions) -> tuple[object, ...]:
        p = plan("t", None, None, options, task=None, router=app.router, conf=app.conf, clock=clock)
        return p.delay, p.eta, p.expires

    def never() -> datetime:
        raise AssertionError("the clock is read only when a time is given")

    p = plan(
        "t", (1,), {"a": 2}, NO_OPTIONS, task=None, router=app.router, conf=app.conf, clock=never
    )
    assert (p.args, p.kwargs, p.delay, p.route.queue_name, p.serializer) == (
        (1,),
        {"a": 2},
        None,
        "default",
        "json",
    )
    assert planned(SendOptions(countdown=5)) == (5.0, now + timedelta(seconds=5), None)
    eta = datetime(2026, 1, 1, 0, 0, 10)  # naive: UTC
    assert planned(SendOptions(eta=eta)) == (10.0, eta.replace(tzinfo=UTC), None)
    assert planned(SendOptions(countdown=-1, expires=30)) == (
        None,
        None,
        now + timedelta(seconds=30),
    )


def test_a_plan_falls_back_to_the_task_then_the_settings() -> None:
    app = App("opts", config={"task_ignore_result": True})

    @app.task(name="quiet", ignore_result=False, time_limit=2.0)
    def quiet() -> None: ...

    def planned(options: SendOptions, with_task: bool) -> tuple[object, ...]:
        p = plan(
            "quiet",
            None,
            None,
            options,
            task=quiet if with_task else None,
            router=app.router,
            conf=app.conf,
        )
        return p.ignore_result, p.time_limit

    assert planned(NO_OPTIONS, True) == (False, 2.0)
    assert planned(NO_OPTIONS, False) == (True, None)
    assert planned(SendOptions(ignore_result=True, time_limit=1.0), True) == (True, 1.0)
