"""Tasks: a registered function plus its routing and execution options.

A :class:`Task` is created by ``@app.task``. Calling it runs the function here and now;
``delay``/``apply_async`` (and their async twins ``adelay``/``aapply_async``) send it to a worker.
Inside a run, ``task.request`` describes the message being executed, and a bound task
(``bind=True``) receives the task as its first argument so it can call ``self.retry(...)``.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Unpack

from conveyor._frozen import fast_init
from conveyor.errors import ConfigurationError, MaxRetriesExceeded, Retry
from conveyor.options import NO_OPTIONS, SendArgs, SendOptions, TaskOptions
from conveyor.seconds import seconds

if TYPE_CHECKING:
    from conveyor.canvas.signatures import Signature
    from conveyor.config import Settings
    from conveyor.results.async_result import AsyncResult

__all__ = ["Request", "Task", "TaskApp", "current_request", "running"]


@fast_init
@dataclass(frozen=True, slots=True)
class Request:
    """What a worker knows about the message it is running (``task.request`` inside a run).

    ``hostname`` is the worker's name; ``delivery_info`` holds the exchange, routing key and queue
    the message came through; ``retries`` counts earlier attempts.
    """

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    origin: str | None = None
    hostname: str | None = None
    delivery_info: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)


_current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "conveyor_current_request", default=None
)


def current_request() -> Request | None:
    """The request of the task running in this context (worker side), or None."""
    return _current_request.get()


class running:
    """Make ``request`` the current request for the duration of the block (used by workers)."""

    __slots__ = ("_request", "_token")

    def __init__(self, request: Request) -> None:
        self._request = request

    def __enter__(self) -> None:
        self._token = _current_request.set(self._request)

    def __exit__(self, *exc_info: object) -> None:
        _current_request.reset(self._token)


_UNSET: Any = object()


class TaskApp(Protocol):
    """What a Task uses of the App that registered it: its settings and its sending."""

    @property
    def conf(self) -> Settings:
        """The application's settings (the fallbacks of a task's execution options)."""
        ...

    def send(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: SendOptions,
        *,
        task: Task,
    ) -> AsyncResult:
        """Send task ``name`` (this ``task``) with ``options``; its AsyncResult."""
        ...

    async def asend(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: SendOptions,
        *,
        task: Task,
    ) -> AsyncResult:
        """Async twin of :meth:`send`."""
        ...


class Task:
    """A function registered with an App, with the options that route and run it.

    Created by ``@app.task(...)`` from a :class:`~conveyor.options.TaskOptions`, whose options
    become its attributes. The routing attributes (``name``, ``queue``, ``exchange``,
    ``exchange_type``, ``routing_key``, ``priority``) are what the Router reads; ``None`` means
    "not set here". ``ignore_result``, ``acks_late`` and ``time_limit`` fall back to the
    settings.
    """

    def __init__(self, app: TaskApp, fn: Callable[..., Any], options: TaskOptions) -> None:
        if not callable(fn):
            raise ConfigurationError(f"task {options.name!r}: {fn!r} is not callable")
        self.app = app
        self.fn = fn
        self.name = options.name
        self.bind = options.bind
        self.queue = options.queue
        self.exchange = options.exchange
        self.exchange_type = options.exchange_type
        self.routing_key = options.routing_key
        self.priority = options.priority
        self._ignore_result = options.ignore_result
        self._acks_late = options.acks_late
        self._time_limit = options.time_limit
        self.max_retries = options.max_retries
        self.default_retry_delay = options.default_retry_delay
        self.autoretry_for = options.autoretry_for
        self.retry_backoff = options.retry_backoff
        self.retry_backoff_max = options.retry_backoff_max
        self._rate_limit = options.rate_limit
        self._soft_time_limit = options.soft_time_limit
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def ignore_result(self) -> bool:
        """Whether results are stored; the task's own option, else ``task_ignore_result``."""
        if self._ignore_result is not None:
            return self._ignore_result
        return self.app.conf.task_ignore_result

    @property
    def acks_late(self) -> bool:
        """Ack after the run (at-least-once); the task's option, else ``task_acks_late``."""
        if self._acks_late is not None:
            return self._acks_late
        return self.app.conf.task_acks_late

    @property
    def time_limit(self) -> float | None:
        """Seconds a run may take; the task's option, else ``task_time_limit``."""
        if self._time_limit is not None:
            return self._time_limit
        return self.app.conf.task_time_limit

    @property
    def rate_limit(self) -> str | None:
        """Runs per worker and period (``"10/s"``); the task's option, else
        ``task_default_rate_limit``."""
        if self._rate_limit is not None:
            return self._rate_limit
        return self.app.conf.task_default_rate_limit

    @property
    def soft_time_limit(self) -> float | None:
        """Seconds after which SoftTimeLimitExceeded is raised inside a run; the task's option,
        else ``task_soft_time_limit``."""
        if self._soft_time_limit is not None:
            return self._soft_time_limit
        return self.app.conf.task_soft_time_limit

    @property
    def request(self) -> Request:
        """The request being run in this context; raises RuntimeError outside a run."""
        req = _current_request.get()
        if req is None or req.task != self.name:
            raise RuntimeError(f"task {self.name!r} is not running in this context")
        return req

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here, in this process (no message is sent)."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send the task with these arguments and default options; return its AsyncResult."""
        return self.app.send(self.name, args, kwargs, NO_OPTIONS, task=self)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Async twin of :meth:`delay`."""
        return await self.app.asend(self.name, args, kwargs, NO_OPTIONS, task=self)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendArgs],
    ) -> AsyncResult:
        """Send the task; ``options`` as for :meth:`App.asend_task`. Returns its AsyncResult."""
        return self.app.send(self.name, args, kwargs, SendOptions.of(options), task=self)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendArgs],
    ) -> AsyncResult:
        """Async twin of :meth:`apply_async`."""
        return await self.app.asend(self.name, args, kwargs, SendOptions.of(options), task=self)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these (partial) arguments (see conveyor.canvas)."""
        from conveyor.canvas.signatures import Signature

        return Signature(self.name, args, kwargs, app=self.app)  # type: ignore[arg-type]

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a workflow does not pass it the previous result."""
        return self.s(*args, **kwargs).set(immutable=True)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A signature of this task with ``args``, ``kwargs`` and send ``options``."""
        return self.s(*(args or ()), **(kwargs or {})).set(**options)

    def retry_delay(self, retries: int) -> float:
        """Seconds to wait before attempt ``retries + 1``: fixed, or exponential with backoff."""
        if self.retry_backoff is False:
            return float(self.default_retry_delay)
        base = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        return float(min(self.retry_backoff_max, base * (2 ** min(retries, 64))))

    def retry(
        self,
        *,
        exc: BaseException | None = None,
        countdown: float | None = None,
        max_retries: int | None = _UNSET,
    ) -> Retry:
        """End this run and have the worker send the task again after ``countdown`` seconds.

        Call as ``raise self.retry(exc=exc)`` (it raises by itself too). When the task has been
        retried ``max_retries`` times already, ``exc`` (or MaxRetriesExceeded) is raised
        instead, so the run fails for good.
        """
        req = self.request
        limit = self.max_retries if max_retries is _UNSET else max_retries
        if limit is not None and req.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceeded(
                f"task {self.name!r} gave up after max_retries={limit} retries"
            )
        delay = countdown if countdown is not None else self.retry_delay(req.retries)
        raise Retry(f"retry of {self.name!r} in {seconds(delay)}", countdown=delay, exc=exc)
