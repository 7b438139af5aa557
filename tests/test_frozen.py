"""fast_init: the same construction as dataclass's own __init__, only faster."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest

from conveyor._frozen import fast_init
from conveyor.errors import ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.task_message import TaskMessage
from conveyor.results.meta import State
from conveyor.task import Request
from conveyor.transports.base import Delivery
from conveyor.worker.outcome import Outcome


def _twins() -> tuple[type[Any], type[Any]]:
    """The same frozen dataclass twice: with dataclass's __init__ and with fast_init's."""

    def make() -> type[Any]:
        @dataclass(frozen=True, slots=True)
        class Point:
            x: int
            y: int = 2
            tags: list[str] = field(default_factory=list)

            def __post_init__(self) -> None:
                if self.x < 0:
                    raise ValueError("x must not be negative")

        return Point

    return make(), fast_init(make())


def test_signature_defaults_and_factories_match_dataclass() -> None:
    plain, fast = _twins()
    assert [p.name for p in inspect.signature(fast).parameters.values()] == ["x", "y", "tags"]
    for args, kwargs in [((1,), {}), ((1, 5), {}), ((), {"x": 3, "tags": ["a"]})]:
        a, b = plain(*args, **kwargs), fast(*args, **kwargs)
        assert dataclasses.astuple(a) == dataclasses.astuple(b)
    first, second = fast(1), fast(1)
    assert first.tags == []
    assert first.tags is not second.tags  # a fresh list each time
    with pytest.raises(TypeError):
        fast()  # x is required, as before
    with pytest.raises(TypeError):
        fast(1, 2, [], 4)


def test_post_init_still_runs_and_instances_stay_frozen() -> None:
    _, fast = _twins()
    with pytest.raises(ValueError, match="x must not be negative"):
        fast(-1)
    point = fast(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 5


def test_refuses_classes_it_would_get_wrong() -> None:
    @dataclass(slots=True)
    class Mutable:
        x: int

    @dataclass(frozen=True, slots=True)
    class KeywordOnly:
        x: int = field(kw_only=True)

    with pytest.raises(TypeError, match="frozen dataclass with slots"):
        fast_init(Mutable)
    with pytest.raises(TypeError, match="kw_only"):
        fast_init(KeywordOnly)


def test_the_hot_classes_keep_their_checks() -> None:
    with pytest.raises(ProtocolError, match="priority"):
        Envelope(body=b"", priority=300)
    with pytest.raises(ProtocolError, match="task name"):
        TaskMessage(task="", id="1")
    assert TaskMessage(task="t", id="1").kwargs == {}
    envelope = Envelope(body=b"x")
    delivery = Delivery(envelope, "q", "", "q", False, 1, 7, "c")
    assert (delivery.queue, delivery.tag) == ("q", 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delivery.tag = 8  # type: ignore[misc]
    assert Outcome(State.SUCCESS).runtime == 0.0
    assert "delivery_info" in inspect.signature(Request).parameters
