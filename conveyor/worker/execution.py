"""Running one task: the pools, time limits, and how a run ends (:class:`Outcome`).

- ``asyncio`` (default): ``async def`` tasks run on the worker's event loop; plain functions
  run in one of the pool's threads, so they never block the loop. The worker may hand the
  thread an ``on_value`` callback that stores the result from there (``rpc://`` on RabbitMQ),
  before the run is reported back to the loop.
- ``threads``: every task runs in one of the pool's threads; ``async def`` tasks on that
  thread's own event loop (for async code that blocks).
- ``processes``: every task runs in one of the pool's child processes (see ``processes.py``).

Time limits: an async task is cancelled; a function in a thread gets TimeLimitExceeded raised in
it at its next Python instruction (a call blocked inside C code ends when that call returns);
a child process is killed and replaced. In every case the run is recorded as failed the moment
the limit passes.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ctypes
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor._frozen import fast_init
from conveyor.errors import Retry, TimeLimitExceeded
from conveyor.results.meta import State
from conveyor.task import Request, Task, running

__all__ = [
    "POOLS",
    "AsyncioPool",
    "OnValue",
    "Outcome",
    "Pool",
    "ThreadPool",
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


class Pool(abc.ABC):
    """Where tasks run. ``run`` never raises for a task's own errors: they become an Outcome."""

    name: str

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency

    @abc.abstractmethod
    async def start(self) -> None:
        """Start threads or processes (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the pool; tasks still running in threads are abandoned (daemon threads)."""

    @abc.abstractmethod
    async def run(
        self,
        task: Task,
        request: Request,
        time_limit: float | None,
        on_value: OnValue | None = None,
    ) -> Outcome:
        """Run ``task`` for ``request`` within ``time_limit`` seconds; return how it ended.

        ``on_value`` is called with a plain function's value in the thread that ran it, by
        pools that run plain functions in threads (the others ignore it).
        Cancelling the call cancels an async task; a thread or process run is abandoned.
        """


class _Completions:
    """Calls finished in threads, handed to their event loop in batches: one wake-up of the
    loop (a write to its self-pipe) for however many finish before it gets to them."""

    __slots__ = ("_done", "_lock", "_scheduled", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[_Job, Any, BaseException | None]] = []
        self._scheduled = False

    def put(self, job: _Job, value: Any, exc: BaseException | None) -> None:
        """Called from a worker thread."""
        with self._lock:
            self._done.append((job, value, exc))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._settle_all)

    def _settle_all(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._scheduled = False
        for job, value, exc in done:
            future = job.future
            if future.done():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(value)


class _Job:
    """A call handed to a worker thread, which an overrun can interrupt."""

    __slots__ = ("completions", "fn", "future", "ident", "lock", "state")

    def __init__(self, fn: Callable[[], Any], completions: _Completions) -> None:
        self.fn = fn
        self.completions = completions
        self.future: asyncio.Future[Any] = completions.loop.create_future()
        self.lock = threading.Lock()
        self.state = "queued"
        self.ident = 0

    def run(self) -> None:
        with self.lock:
            if self.state != "queued":
                return
            self.state = "running"
            self.ident = threading.get_ident()
        try:
            value = self.fn()
        except BaseException as exc:
            with self.lock:
                self.state = "done"
            self.completions.put(self, None, exc)
        else:
            with self.lock:
                self.state = "done"
            self.completions.put(self, value, None)

    def interrupt(self) -> None:
        """Raise TimeLimitExceeded in the thread if the call is still running; drop it if
        it has not started."""
        with self.lock:
            if self.state == "queued":
                self.state = "done"
            elif self.state == "running":
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(TimeLimitExceeded)
                )


class _Threads:
    """N daemon threads running :class:`_Job` s; a late interrupt never kills a thread."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._completions: _Completions | None = None
        self._threads = [
            threading.Thread(target=self._main, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _main(self) -> None:
        while True:
            try:
                job = self._jobs.get()
                if job is None:
                    return
                job.run()
            except TimeLimitExceeded:
                continue

    def completions(self, loop: asyncio.AbstractEventLoop) -> _Completions:
        """Where jobs for ``loop`` report back (one per loop)."""
        completions = self._completions
        if completions is None or completions.loop is not loop:
            completions = self._completions = _Completions(loop)
        return completions

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


async def _run_in_thread(
    threads: _Threads, fn: Callable[[], Any], time_limit: float | None
) -> tuple[bool, Any]:
    """Run ``fn`` on ``threads``; return (finished in time, value). Raises what ``fn`` raised."""
    job = _Job(fn, threads.completions(asyncio.get_running_loop()))
    threads.submit(job)
    try:
        if time_limit is None:
            return True, await job.future
        try:
            async with asyncio.timeout(time_limit):
                return True, await asyncio.shield(job.future)
        except TimeoutError:
            if job.future.done():
                return True, job.future.result()
            job.interrupt()
            job.future.add_done_callback(_consume)
            return False, None
    except asyncio.CancelledError:
        job.interrupt()
        job.future.add_done_callback(_consume)
        raise


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class AsyncioPool(Pool):
    """``async def`` tasks on the event loop; plain functions in ``concurrency`` threads."""

    name = "asyncio"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self._threads: _Threads | None = None

    async def start(self) -> None:
        if self._threads is None:
            self._threads = _Threads(self.concurrency, "conveyor-task")

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.stop()
            self._threads = None

    async def run(
        self,
        task: Task,
        request: Request,
        time_limit: float | None,
        on_value: OnValue | None = None,
    ) -> Outcome:
        started = time.monotonic()
        outcome = await self._run(task, request, time_limit, on_value)
        # A fresh Outcome nobody else holds yet: set its runtime in place (replace() costs
        # ~1 µs a task).
        object.__setattr__(outcome, "runtime", time.monotonic() - started)
        return outcome

    async def _run(
        self, task: Task, request: Request, time_limit: float | None, on_value: OnValue | None
    ) -> Outcome:
        try:
            if task.is_async:
                with running(request):
                    coro = task(*request.args, **request.kwargs)
                    if time_limit is None:
                        return Outcome(State.SUCCESS, await coro)
                    timeout = asyncio.timeout(time_limit)
                    try:
                        async with timeout:
                            return Outcome(State.SUCCESS, await coro)
                    except TimeoutError:
                        if timeout.expired():
                            return time_limit_error(task, request, time_limit)
                        raise
            if self._threads is None:
                await self.start()
            assert self._threads is not None

            def call() -> tuple[Any, bool]:
                with running(request):
                    value = task(*request.args, **request.kwargs)
                return value, on_value is not None and on_value(value)

            finished, result = await _run_in_thread(self._threads, call, time_limit)
            if not finished:
                assert time_limit is not None
                return time_limit_error(task, request, time_limit)
            value, stored = result
            return Outcome(State.SUCCESS, value, stored=stored)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return classify_error(task, request, exc, format_error(exc))


class ThreadPool(AsyncioPool):
    """Every task in one of ``concurrency`` threads; ``async def`` ones on a per-thread loop."""

    name = "threads"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self._local = threading.local()

    def _thread_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
        return loop

    async def _run(
        self, task: Task, request: Request, time_limit: float | None, on_value: OnValue | None
    ) -> Outcome:
        if not task.is_async:
            return await super()._run(task, request, time_limit, on_value)
        await self.start()
        assert self._threads is not None

        expired = object()

        def call() -> Any:
            loop = self._thread_loop()

            async def body() -> Any:
                with running(request):
                    coro = task(*request.args, **request.kwargs)
                    if time_limit is None:
                        return await coro
                    timeout = asyncio.timeout(time_limit)
                    try:
                        async with timeout:
                            return await coro
                    except TimeoutError:
                        if timeout.expired():
                            return expired
                        raise

            return loop.run_until_complete(body())

        try:
            _, value = await _run_in_thread(self._threads, call, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return classify_error(task, request, exc, format_error(exc))
        if value is expired:
            assert time_limit is not None
            return time_limit_error(task, request, time_limit)
        return Outcome(State.SUCCESS, value)


POOLS: dict[str, type[Pool]] = {"asyncio": AsyncioPool, "threads": ThreadPool}
