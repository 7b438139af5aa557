"""conveyor.logs in one process: the task logger, the text and JSON formats."""

from __future__ import annotations

import json
import logging

import pytest

from conveyor.logs import JsonFormatter, TaskContextFilter, TextFormatter, get_task_logger
from conveyor.task import Request, running


def record(message: str, *, exc: bool = False) -> logging.LogRecord:
    """A record from the task logger ``shop`` as its filter leaves it."""
    exc_info = None
    if exc:
        try:
            raise ValueError("bad price")
        except ValueError as error:
            exc_info = (type(error), error, error.__traceback__)
    made = logging.LogRecord("shop", logging.WARNING, __file__, 1, message, (), exc_info)
    TaskContextFilter().filter(made)
    return made


def test_lines_inside_a_task_carry_its_name_and_id() -> None:
    with running(Request(id="f1b4", task="shop.total")):
        inside = record("totalling")
    outside = record("idle")
    formatter = TextFormatter()
    assert formatter.format(inside).endswith(
        "WARNING/MainProcess] shop.total[f1b4] shop: totalling"
    )
    assert formatter.format(outside).endswith("WARNING/MainProcess] shop: idle")


def test_json_lines_hold_the_task_and_the_traceback() -> None:
    with running(Request(id="f1b4", task="shop.total")):
        inside = json.loads(JsonFormatter().format(record("careful", exc=True)))
    assert inside.pop("time").endswith("Z")
    assert inside.pop("pid") > 0
    traceback = inside.pop("exception")
    assert traceback.startswith("Traceback (most recent call last):")
    assert traceback.endswith("ValueError: bad price")
    assert inside == {
        "level": "WARNING",
        "logger": "shop",
        "process": "MainProcess",
        "message": "careful",
        "task_name": "shop.total",
        "task_id": "f1b4",
    }
    outside = json.loads(JsonFormatter().format(record("idle")))
    assert (outside["task_name"], outside["task_id"]) == (None, None)


def test_the_task_logger_gives_any_handler_the_task(caplog: pytest.LogCaptureFixture) -> None:
    log = get_task_logger("tests.shop")
    assert get_task_logger("tests.shop") is log
    with (
        caplog.at_level(logging.INFO, logger="tests.shop"),
        running(Request(id="a1", task="shop.ping")),
    ):
        log.info("pong")
    [line] = caplog.records
    assert (line.task_name, line.task_id) == ("shop.ping", "a1")  # type: ignore[attr-defined]


def test_conveyors_own_loggers_are_not_task_loggers() -> None:
    with pytest.raises(ValueError, match=r"^'conveyor\.worker' is conveyor's own logger") as caught:
        get_task_logger("conveyor.worker")
    assert str(caught.value).endswith(": use your module's __name__")
