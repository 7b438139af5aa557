"""``encode_new_task`` (a plain send's message, without a TaskMessage) gives exactly what
``encode_task(TaskMessage(...))`` gives for the same fields, and refuses what it refuses."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.errors import ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.task_message import TaskMessage, encode_new_task, encode_task

AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def both(
    task: Any = "proj.add",
    task_id: Any = "t-1",
    args: Any = (),
    kwargs: Any = None,
    *,
    root_id: str = "t-1",
    parent_id: str | None = None,
    ignore_result: bool = False,
    reply_to: str | None = None,
    priority: int | None = None,
    eta: datetime | None = None,
    expires: datetime | None = None,
    time_limit: float | None = None,
    headers: Mapping[str, Any] | None = None,
    serializer: str = "json",
) -> tuple[Envelope, Envelope]:
    kwargs = {} if kwargs is None else kwargs
    new = encode_new_task(
        task,
        task_id,
        args,
        kwargs,
        root_id=root_id,
        parent_id=parent_id,
        ignore_result=ignore_result,
        reply_to=reply_to,
        priority=priority,
        eta=eta,
        expires=expires,
        time_limit=time_limit,
        headers=headers,
        serializer=serializer,
    )
    old = encode_task(
        TaskMessage(
            task=task,
            id=task_id,
            args=args,
            kwargs=kwargs,
            eta=eta,
            expires=expires,
            timelimit=(time_limit, None),
            root_id=root_id,
            parent_id=parent_id,
            ignore_result=ignore_result,
            reply_to=reply_to,
            priority=priority,
            headers=dict(headers) if headers else {},
        ),
        serializer,
    )
    return new, old


def same(new: Envelope, old: Envelope) -> None:
    assert new == old
    assert list(new.headers) == list(old.headers)  # the order they go on the wire in


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"args": (1, "two"), "kwargs": {"path": "/a.mp4"}},
        {"root_id": "r-0", "parent_id": "p-1", "ignore_result": True, "reply_to": "replies"},
        {"priority": 7, "eta": AT, "expires": AT + timedelta(hours=1), "time_limit": 2.5},
        {"headers": {"trace": "x-1", "id": "not this one", "nested": {"a": [1, 2.5]}}},
        {"serializer": "pickle", "args": ((1, 2),), "kwargs": {"when": "now"}},
        {"args": ("x" * 2000,)},  # argsrepr cut short
    ],
)
def test_the_same_envelope_as_a_task_message_makes(fields: dict[str, Any]) -> None:
    same(*both(**fields))


JSON_INTS = st.integers(-(2**63), 2**63 - 1)


@given(
    args=st.lists(st.one_of(JSON_INTS, st.text(), st.booleans(), st.none()), max_size=4),
    kwargs=st.dictionaries(st.text(min_size=1), JSON_INTS, max_size=3),
    headers=st.dictionaries(st.text(min_size=1), st.one_of(st.text(), JSON_INTS), max_size=3),
)
def test_the_same_envelope_for_any_arguments_and_headers(
    args: list[Any], kwargs: dict[str, Any], headers: dict[str, Any]
) -> None:
    same(*both(args=tuple(args), kwargs=kwargs, headers=headers))


class Name(str):
    pass


def test_unusual_values_take_the_whole_way_and_end_the_same() -> None:
    same(*both(task=Name("proj.add"), kwargs={Name("k"): 1}))
    same(*both(args=[1, 2]))  # a list, made a tuple as a TaskMessage makes it


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"task": ""}, "task name"),
        ({"task": 3}, "task name"),
        ({"task_id": ""}, "task id"),
        ({"kwargs": {1: "x"}}, "string keys"),
        ({"args": "abc"}, "task args"),
        ({"args": (object(),)}, "JSON"),
        ({"priority": 300}, "priority"),
        ({"headers": {"bad": object()}}, "header"),
        ({"serializer": "yaml"}, "serializer"),
    ],
)
def test_refuses_what_a_task_message_refuses(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        both(**fields)  # the new way first: it must raise on its own
    kwargs = fields.pop("kwargs", {})
    task = fields.pop("task", "proj.add")
    task_id = fields.pop("task_id", "t-1")
    args = fields.pop("args", ())
    with pytest.raises(ProtocolError, match=match):
        encode_new_task(
            task,
            task_id,
            args,
            kwargs,
            root_id="t-1",
            parent_id=None,
            ignore_result=False,
            reply_to=None,
            priority=fields.get("priority"),
            eta=None,
            expires=None,
            time_limit=None,
            headers=fields.get("headers"),
            serializer=fields.get("serializer", "json"),
        )
