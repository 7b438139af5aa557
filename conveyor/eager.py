"""``task_always_eager``: ``delay``/``apply_async``/``send_task`` run the task in the caller.

For tests and scripts without a worker: the task runs at once, in the calling thread (an
``async def`` task on the caller's event loop, or the sync API's private one), and the call
returns an :class:`EagerResult`, an :class:`~conveyor.results.async_result.AsyncResult` that
already holds the outcome. No message is sent and nothing is stored in the result backend.

As a worker would: the task signals are sent, ``task.request`` describes the call, and a retry
(``self.retry``, ``autoretry_for``) runs the task again at once (the countdown is not waited)
until it succeeds or runs out of retries. Time limits and rate limits do not apply. A failure
is held by the result (``get()`` raises it) unless ``task_eager_propagates`` is on, which
raises it from the call itself. A task not registered in this process raises NotRegistered.
"""

from __future__ import annotations

import functools
import inspect
import traceback
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor.errors import NotRegistered, Retry
from conveyor.results.async_result import AsyncResult, ResultSource
from conveyor.results.meta import ResultMeta, State
from conveyor.sync_loop import SYNC_LOOP
from conveyor.task import Request, Task, current_request, running
from conveyor.task_ids import new_task_id

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.options import SendOptions

__all__ = ["EagerResult", "EagerRun", "aapply_eagerly", "apply_eagerly", "registered"]

EAGER_HOSTNAME = "eager"


class EagerResult(AsyncResult):
    """The outcome of a task run in the caller: every AsyncResult method answers at once,
    without a backend. ``get()`` returns the value or raises the task's own exception object."""

    def __init__(self, meta: ResultMeta, error: BaseException | None, *, app: ResultSource) -> None:
        super().__init__(meta.task_id, app=app, task_name=meta.task)
        self._meta = meta
        self._error = error

    async def ameta(self) -> ResultMeta | None:
        return self._meta

    @property
    def state(self) -> State:
        """SUCCESS or FAILURE (the run is over)."""
        assert self._meta is not None
        return self._meta.state

    status = state

    def ready(self) -> bool:
        """Always True: the task ran when it was called."""
        return True

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        return self.get(timeout, propagate=propagate)

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """The value; the task's exception is raised (``propagate``) or returned."""
        if self._error is not None:
            if propagate:
                raise self._error
            return self._error
        assert self._meta is not None
        return self._meta.result

    @property
    def result(self) -> Any:
        """The value if SUCCESS, the exception if FAILURE."""
        return self._error if self._error is not None else self.get()

    @property
    def traceback(self) -> str | None:
        """The traceback text of a failure, else None."""
        assert self._meta is not None
        return self._meta.traceback

    @property
    def worker(self) -> str | None:
        """``"eager"``: no worker ran it."""
        return EAGER_HOSTNAME

    async def acollect(
        self, timeout: float = 5.0, *, expected: int | None = None
    ) -> dict[str, Any]:
        return {EAGER_HOSTNAME: self.result}

    def collect(self, timeout: float = 5.0, *, expected: int | None = None) -> dict[str, Any]:
        """One result, under ``"eager"``."""
        return {EAGER_HOSTNAME: self.result}

    async def aforget(self) -> None:
        return None

    def forget(self) -> None:
        """Nothing is stored: nothing to forget."""


def registered(tasks: Mapping[str, Task], name: str, task: Task | None) -> Task:
    """``task`` if given, else task ``name`` of ``tasks``; NotRegistered if there is none."""
    found = task if task is not None else tasks.get(name)
    if found is None:
        raise NotRegistered(
            f"task {name!r} is not registered in this process, and task_always_eager runs "
            "tasks in the caller: import the module that defines it, or turn "
            "task_always_eager off to send it to a worker"
        )
    return found


def _request(
    task: Task, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: SendOptions
) -> Request:
    parent = current_request()
    tid = options.task_id or new_task_id()
    return Request(
        id=tid,
        task=task.name,
        args=tuple(args or ()),
        kwargs=dict(kwargs or {}),
        root_id=(parent.root_id or parent.id) if parent is not None else tid,
        parent_id=parent.id if parent is not None else None,
        hostname=EAGER_HOSTNAME,
        delivery_info={"is_eager": True},
        headers=dict(options.headers or {}),
    )


def _retries_left(task: Task, request: Request, exc: BaseException) -> bool:
    """Whether ``exc`` out of a run asks for another (as the worker decides)."""
    if isinstance(exc, Retry):
        return True
    return (
        bool(task.autoretry_for)
        and isinstance(exc, task.autoretry_for)
        and (task.max_retries is None or request.retries < task.max_retries)
    )


class EagerRun:
    """One eager call of ``task``: runs attempts (see :func:`apply_eagerly`) until one ends
    without a retry."""

    def __init__(self, task: Task, request: Request, conf: Settings, app: ResultSource) -> None:
        self.task = task
        self.request = request
        self.conf = conf
        self.app = app

    @classmethod
    def start(
        cls,
        app: ResultSource,
        conf: Settings,
        task: Task,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: SendOptions,
    ) -> EagerRun:
        """The call of ``task`` with ``args``/``kwargs`` sent with ``options``, not begun."""
        return cls(task, _request(task, args, kwargs, options), conf, app)

    def begin(self) -> Any:
        """Start an attempt: the function's return value (maybe a coroutine)."""
        signals.send_task_prerun(self.task, self.request)
        with running(self.request):
            return self.task(*self.request.args, **self.request.kwargs)

    def ended(self, value: Any, exc: BaseException | None) -> EagerResult | None:
        """The result of the attempt that ended so; None if it retries (next attempt)."""
        task, request = self.task, self.request
        if exc is None:
            signals.send_task_ended(task, request, State.SUCCESS, value=value)
            meta = ResultMeta.success(
                request.id, value, worker=EAGER_HOSTNAME, task=task.name, retries=request.retries
            )
            return EagerResult(meta, None, app=self.app)
        text = "".join(traceback.format_exception(exc))
        if _retries_left(task, request, exc):
            cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
            countdown = exc.countdown if isinstance(exc, Retry) else None
            signals.send_task_ended(
                task, request, State.RETRY, error=cause, traceback=text, countdown=countdown
            )
            self.request = replace(request, retries=request.retries + 1)
            return None
        signals.send_task_ended(task, request, State.FAILURE, error=exc, traceback=text)
        if self.conf.task_eager_propagates:
            raise exc
        meta = ResultMeta.failure(
            request.id, exc, text, worker=EAGER_HOSTNAME, task=task.name, retries=request.retries
        )
        return EagerResult(meta, exc, app=self.app)


def apply_eagerly(run: EagerRun) -> EagerResult:
    """Run ``run`` here and now (see the module's text). An ``async def`` task runs on the sync
    API's private event loop. Raises the task's own error only with ``task_eager_propagates``."""
    result = None
    while result is None:
        try:
            value = run.begin()
            if inspect.iscoroutine(value):
                value = SYNC_LOOP.run(functools.partial(_with_request, value, run.request))
        except Exception as exc:
            result = run.ended(None, exc)
        else:
            result = run.ended(value, None)
    return result


async def aapply_eagerly(run: EagerRun) -> EagerResult:
    """Async twin of :func:`apply_eagerly`: an ``async def`` task runs on the caller's loop."""
    result = None
    while result is None:
        try:
            value = run.begin()
            if inspect.iscoroutine(value):
                value = await _with_request(value, run.request)
        except Exception as exc:
            result = run.ended(None, exc)
        else:
            result = run.ended(value, None)
    return result


async def _with_request(coro: Coroutine[Any, Any, Any], request: Request) -> Any:
    """Await ``coro`` with ``request`` current (``task.request`` inside an async task)."""
    with running(request):
        return await coro
