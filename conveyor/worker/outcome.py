"""How a run ends: its :class:`Outcome`, and what every pool uses to build one.

A task's own error becomes FAILURE or RETRY (:func:`classify_error`); a run past its time limit
becomes FAILURE (:func:`time_limit_error`); a task given back before it started raises
:class:`NotStarted` instead of ending at all.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor._frozen import fast_init
from conveyor.errors import Retry, TimeLimitExceeded
from conveyor.results.meta import State
from conveyor.task import Request, Task

__all__ = [
    "NotStarted",
    "OnValue",
    "Outcome",
    "classify_error",
    "format_error",
    "time_limit_error",
]


@fast_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: SUCCESS with ``value``; FAILURE with ``error`` and its ``traceback``;
    RETRY with ``countdown`` seconds (``error`` is the cause); REVOKED (expired, not run).
    ``stored``: the pool thread already stored the SUCCESS result (see :data:`OnValue`).
    """

    state: State
    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    countdown: float | None = None
    runtime: float = 0.0
    stored: bool = False


OnValue = Callable[[Any], bool]
"""Called in the pool thread that ran a plain function, with the value it returned, before the
run is reported to the event loop; True if it stored the result itself. It must not raise."""


def classify_error(task: Task, request: Request, exc: BaseException, tb: str | None) -> Outcome:
    """Turn an exception out of a run into RETRY (``self.retry``, ``autoretry_for`` with retries
    left) or FAILURE.
    """
    if isinstance(exc, Retry):
        countdown = (
            exc.countdown if exc.countdown is not None else task.retry_delay(request.retries)
        )
        return Outcome(State.RETRY, error=exc.exc or exc, traceback=tb, countdown=countdown)
    retryable = bool(task.autoretry_for) and isinstance(exc, task.autoretry_for)
    if retryable and (task.max_retries is None or request.retries < task.max_retries):
        countdown = task.retry_delay(request.retries)
        return Outcome(State.RETRY, error=exc, traceback=tb, countdown=countdown)
    return Outcome(State.FAILURE, error=exc, traceback=tb)


def time_limit_error(task: Task, request: Request, limit: float) -> Outcome:
    """The FAILURE recorded when a run passes its time limit."""
    exc = TimeLimitExceeded(
        f"task {task.name}[{request.id}] ran past its time limit of {limit:g} s and was stopped"
    )
    return Outcome(State.FAILURE, error=exc, traceback=None)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def format_error(exc: BaseException) -> str:
    """The traceback text of ``exc`` without the worker's own frames above the task's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


class NotStarted(Exception):
    """Raised by ``Pool.run`` for a task the pool gave back before it started
    (``Pool.withdraw_waiting``): it did not run, and its message should go back."""
