"""The pools a worker runs tasks in, and how each keeps a task's time limit.

How a run ends is an :class:`~conveyor.worker.outcome.Outcome`; the pools:

- ``asyncio`` (default): ``async def`` tasks run on the worker's event loop; plain functions
  run in one of the pool's threads, so they never block the loop. The worker may hand the
  thread an ``on_value`` callback that stores the result from there (``rpc://`` on RabbitMQ),
  before the run is reported back to the loop.

Thread pools look ahead: the worker may hand them ``concurrency`` tasks more than can run
(:attr:`Pool.lookahead`). Those wait in the pool, and a thread whose run ends starts the next
at once instead of waiting for the event loop to hear of the end and hand it another (a trip
that costs more than a short task itself). A gate on the event loop (:class:`Gate`) still
bounds the tasks *running* at once to ``concurrency``, threads and the loop's ``async def``
tasks together; a time limit counts from the moment the task starts; and
:meth:`Pool.withdraw_waiting` gives back what has not started when the worker stops.
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
import threading
import time
from dataclasses import dataclass
from typing import Any

from conveyor._frozen import fast_init
from conveyor.errors import ConfigurationError
from conveyor.results.meta import State
from conveyor.task import Request, Task, running
from conveyor.worker.child_limits import ChildLimits
from conveyor.worker.gate import Gate
from conveyor.worker.outcome import (
    NotStarted,
    OnValue,
    Outcome,
    classify_error,
    format_error,
    time_limit_error,
)
from conveyor.worker.soft_limits import (
    effective_soft_limit,
    soft_limit_error_type,
    within_soft_limit,
)
from conveyor.worker.threads import Threads, run_in_thread

__all__ = ["POOLS", "AsyncioPool", "Pool", "TaskRun", "ThreadPool", "make_pool"]


@fast_init
@dataclass(frozen=True, slots=True)
class TaskRun:
    """One run handed to a pool (see :meth:`Pool.run`): ``task`` for ``request`` within
    ``time_limit`` seconds, ``on_value`` for a plain function's value (see :data:`OnValue`),
    ``soft`` the soft limit that applies (None: none)."""

    task: Task
    request: Request
    time_limit: float | None
    on_value: OnValue | None
    soft: float | None


class Pool(abc.ABC):
    """Where tasks run. ``run`` never raises for a task's own errors: they become an Outcome.

    ``lookahead``: how many tasks more than ``concurrency`` the worker may have in ``run`` at
    once; they wait inside the pool, not running, until one of the ``concurrency`` runs ends.
    """

    name: str
    lookahead = 0

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency

    def withdraw_waiting(self) -> int:
        """Give back every task handed to ``run`` that has not started: each such ``run``
        raises :class:`NotStarted`. Returns how many. Called on the event loop. A task acked
        before its run (``acks_late`` off) is kept: its message is gone, so it must run."""
        return 0

    @abc.abstractmethod
    async def start(self) -> None:
        """Start threads or processes (idempotent)."""

    @abc.abstractmethod
    async def resize(self, size: int) -> None:
        """Run up to ``size`` tasks at once from now on (``--autoscale``); running tasks above
        it finish first. Before :meth:`start`, the size it starts with."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the pool; tasks still running in threads are abandoned (daemon threads)."""

    async def run(
        self,
        task: Task,
        request: Request,
        time_limit: float | None,
        on_value: OnValue | None = None,
        soft_time_limit: float | None = None,
    ) -> Outcome:
        """Run ``task`` for ``request`` within ``time_limit`` seconds; return how it ended.

        ``on_value`` is called with a plain function's value in the thread that ran it, by
        pools that run plain functions in threads (the others ignore it). After
        ``soft_time_limit`` seconds (if before ``time_limit``), SoftTimeLimitExceeded is raised
        inside the run (see ``soft_limits.py``).
        Cancelling the call cancels an async task; a thread or process run is abandoned.
        """
        started = time.monotonic()
        soft = effective_soft_limit(soft_time_limit, time_limit)
        outcome = await self._run(TaskRun(task, request, time_limit, on_value, soft))
        if not outcome.runtime:
            # A fresh Outcome nobody else holds yet: set its runtime in place (replace()
            # costs ~1 µs a task).
            object.__setattr__(outcome, "runtime", time.monotonic() - started)
        return outcome

    @abc.abstractmethod
    async def _run(self, run: TaskRun) -> Outcome:
        """:meth:`run`'s work; an Outcome without a runtime gets the time the call took."""


class AsyncioPool(Pool):
    """``async def`` tasks on the event loop; plain functions in ``concurrency`` threads.

    Looks ahead by ``concurrency`` (see the module's text); calls for the threads and
    ``async def`` tasks pass one :class:`Gate`, so together they never run more than
    ``concurrency`` tasks at once.
    """

    name = "asyncio"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.lookahead = concurrency
        self._gate = Gate(concurrency, self.lookahead)
        self._threads: Threads | None = None

    async def start(self) -> None:
        if self._threads is None:
            self._threads = Threads(self.concurrency, "conveyor-task", self._gate)

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.stop()
            self._threads = None

    async def resize(self, size: int) -> None:
        self.concurrency = size
        self._gate.resize(size)
        if self._threads is not None:
            self._threads.resize(size)

    def withdraw_waiting(self) -> int:
        withdrawn = self._gate.withdraw()
        if self._threads is not None:
            withdrawn += self._threads.withdraw_waiting()
        return withdrawn

    async def _run(self, run: TaskRun) -> Outcome:
        task, request, on_value = run.task, run.request, run.on_value
        ran: list[float] = []  # a thread's running time, once it has one
        try:
            if task.is_async:
                gate = self._gate
                if not gate.try_enter(False):
                    await gate.enter(False, keep=not task.acks_late)
                try:
                    return await _run_coroutine(run)
                finally:
                    gate.leave(False)
            if self._threads is None:
                await self.start()
            assert self._threads is not None

            def call() -> tuple[Any, bool]:
                with running(request):
                    value = task(*request.args, **request.kwargs)
                return value, on_value is not None and on_value(value)

            soft = run.soft
            finished, result = await run_in_thread(
                self._threads,
                call,
                run.time_limit,
                ran,
                keep=not task.acks_late,
                soft_limit=(
                    (soft, soft_limit_error_type(request, soft)) if soft is not None else None
                ),
            )
            if not finished:
                assert run.time_limit is not None
                return time_limit_error(task, request, run.time_limit)
            value, stored = result
            return Outcome(State.SUCCESS, value, stored=stored, runtime=ran[0])
        except (NotStarted, asyncio.CancelledError):
            raise
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            outcome = classify_error(task, request, exc, format_error(exc))
            if ran:  # the call ran in a thread: its own time, not the wait for one
                object.__setattr__(outcome, "runtime", ran[0])
            return outcome


async def _run_coroutine(run: TaskRun) -> Outcome:
    """Run ``run``'s ``async def`` task on the running loop within its limits; its own errors
    propagate."""
    task, request, time_limit = run.task, run.request, run.time_limit
    with running(request):
        coro = task(*request.args, **request.kwargs)
        if run.soft is not None:
            coro = within_soft_limit(coro, run.soft, request)
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


class ThreadPool(AsyncioPool):
    """Every task in one of ``concurrency`` threads; ``async def`` ones on a per-thread loop."""

    name = "threads"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self._local = threading.local()
        self._loops: list[asyncio.AbstractEventLoop] = []

    def _thread_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
            self._loops.append(loop)
        return loop

    async def close(self) -> None:
        await super().close()
        loops, self._loops = self._loops, []
        for loop in loops:
            with contextlib.suppress(RuntimeError):  # still running an abandoned task
                loop.close()

    async def _run(self, run: TaskRun) -> Outcome:
        task = run.task
        if not task.is_async:
            return await super()._run(run)
        if self._threads is None:
            await self.start()
        assert self._threads is not None

        def call() -> Outcome:
            return self._thread_loop().run_until_complete(_run_coroutine(run))

        ran: list[float] = []
        outcome: Outcome
        try:
            _, outcome = await run_in_thread(
                self._threads, call, None, ran, keep=not task.acks_late
            )
        except (NotStarted, asyncio.CancelledError):
            raise
        except Exception as exc:
            return classify_error(task, run.request, exc, format_error(exc))
        if outcome.state is State.SUCCESS:  # its thread's time, not the wait for one
            object.__setattr__(outcome, "runtime", ran[0])
        return outcome


POOLS: dict[str, type[Pool]] = {"asyncio": AsyncioPool, "threads": ThreadPool}


def make_pool(name: str, concurrency: int, app_spec: str | None, limits: ChildLimits) -> Pool:
    """The pool called ``name`` running ``concurrency`` tasks at once. ``processes`` needs
    ``app_spec`` (the ``module:attr`` its children import) and takes the child ``limits``;
    the others refuse those limits. ConfigurationError for an unknown pool or a missing spec."""
    if name == "processes":
        from conveyor.worker.processes import ProcessPool

        if app_spec is None:
            raise ConfigurationError(
                "the processes pool needs the app's import path (module:attr) so that "
                "child processes can load the tasks; start the worker with -A"
            )
        return ProcessPool(concurrency, app_spec, *limits.values())
    limits.refuse(name)
    cls = POOLS.get(name)
    if cls is None:
        raise ConfigurationError(f"unknown pool {name!r}: use one of asyncio, threads, processes")
    return cls(concurrency)
