"""Soft time limits: SoftTimeLimitExceeded raised inside a running task, which may catch it.

How each kind of run gets it:

- an ``async def`` task (on the worker's loop, a thread's loop, or a child's loop): at the limit
  its asyncio task is woken as by a cancellation, and the exception is thrown into the task's
  coroutine where it awaits (:func:`within_soft_limit`);
- a plain function in a thread: raised in that thread at its next Python instruction
  (``threads.py``); a call blocked inside C code (``time.sleep``, a socket read) gets it when
  that call returns;
- a plain function in a child process (``processes`` pool): SIGALRM, whose handler raises it
  (:func:`alarm_soft_limit`); a blocking call is interrupted at once.

A soft limit at or past the hard ``time_limit`` is ignored: the hard limit ends the run first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Generator, Iterator
from types import FrameType
from typing import Any

from conveyor.errors import SoftTimeLimitExceeded
from conveyor.task import Request

__all__ = [
    "alarm_soft_limit",
    "effective_soft_limit",
    "soft_limit_error",
    "soft_limit_error_type",
    "within_soft_limit",
]


def effective_soft_limit(soft: float | None, hard: float | None) -> float | None:
    """``soft`` if it comes before ``hard`` (and is positive), else None."""
    if soft is None or soft <= 0 or (hard is not None and soft >= hard):
        return None
    return soft


def soft_limit_error(request: Request, soft: float) -> SoftTimeLimitExceeded:
    """The exception raised inside ``request``'s run at its soft limit."""
    return SoftTimeLimitExceeded(
        f"task {request.task}[{request.id}] passed its soft time limit of {soft:g} s"
    )


def soft_limit_error_type(request: Request, soft: float) -> type[SoftTimeLimitExceeded]:
    """A SoftTimeLimitExceeded whose instances made without arguments carry the message of
    :func:`soft_limit_error`: a thread can only be sent an exception type, not an instance.
    It looks like SoftTimeLimitExceeded wherever it is named (a stored result, a log)."""
    message = str(soft_limit_error(request, soft))

    def __init__(self: SoftTimeLimitExceeded, *args: object) -> None:
        SoftTimeLimitExceeded.__init__(self, *(args or (message,)))

    return type(
        "SoftTimeLimitExceeded",
        (SoftTimeLimitExceeded,),
        {"__init__": __init__, "__module__": SoftTimeLimitExceeded.__module__},
    )


class _Interruptible:
    """Awaits ``coro`` step by step, so that :meth:`interrupt` can throw an exception into it
    where it waits (asyncio offers only CancelledError)."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._task: asyncio.Task[Any] | None = None
        self._pending: BaseException | None = None

    def interrupt(self, error: Callable[[], BaseException]) -> None:
        """Throw ``error()`` into the coroutine at its current await (from the loop)."""
        task = self._task
        if task is None or task.done() or self._pending is not None:
            return
        self._pending = error()
        task.cancel()  # wakes the task; __await__ turns this cancel into the pending error

    def __await__(self) -> Generator[Any, Any, Any]:
        self._task = asyncio.current_task()
        coro = self._coro
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                yielded = coro.send(sent) if thrown is None else coro.throw(thrown)
            except StopIteration as stop:
                return stop.value
            thrown = None
            try:
                sent = yield yielded
            except asyncio.CancelledError as exc:
                pending, self._pending = self._pending, None
                if pending is not None and self._task is not None:
                    self._task.uncancel()  # the cancel was ours: not a real cancellation
                    thrown = pending
                else:
                    thrown = exc
            except BaseException as exc:
                thrown = exc


async def within_soft_limit(
    coro: Coroutine[Any, Any, Any], soft: float | None, request: Request
) -> Any:
    """Await ``coro``; if it runs past ``soft`` seconds, SoftTimeLimitExceeded is raised
    inside it where it awaits (it may catch it and go on until the hard limit)."""
    if soft is None:
        return await coro
    guarded = _Interruptible(coro)
    timer = asyncio.get_running_loop().call_later(
        soft, guarded.interrupt, lambda: soft_limit_error(request, soft)
    )
    try:
        return await guarded
    finally:
        timer.cancel()


@contextlib.contextmanager
def alarm_soft_limit(soft: float | None, request: Request) -> Iterator[None]:
    """In a process's main thread: SoftTimeLimitExceeded raised by SIGALRM after ``soft``
    seconds, for the block (the timer is disarmed at its end)."""
    if soft is None:
        yield
        return

    def ring(signum: int, frame: FrameType | None) -> None:
        raise soft_limit_error(request, soft)

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, soft)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
