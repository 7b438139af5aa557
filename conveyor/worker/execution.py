"""Running one task: the pools, time limits, and how a run ends (:class:`Outcome`).

- ``asyncio`` (default): ``async def`` tasks run on the worker's event loop; plain functions
  run in one of the pool's threads, so they never block the loop. The worker may hand the
  thread an ``on_value`` callback that stores the result from there (``rpc://`` on RabbitMQ),
  before the run is reported back to the loop.

Thread pools look ahead: the worker may hand them ``concurrency`` tasks more than can run
(:attr:`Pool.lookahead`). Those wait in the pool, and a thread whose run ends starts the next
at once instead of waiting for the event loop to hear of the end and hand it another (a trip
that costs more than a short task itself). A gate on the event loop (:class:`_Gate`) still
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
import collections
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
    "NotStarted",
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


class NotStarted(Exception):
    """Raised by :meth:`Pool.run` for a task the pool gave back before it started
    (:meth:`Pool.withdraw_waiting`): it did not run, and its message should go back."""


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


class _Gate:
    """Bounds the tasks running at once to ``size``, threads and coroutines together, with no
    lock on a thread's path: it is kept on the event loop alone.

    ``threaded`` counts calls handed to the pool's threads (waiting there or running),
    ``coroutines`` the ``async def`` tasks running on the loop. A call may be handed over while
    no coroutine runs and fewer than ``size + lookahead`` are; while coroutines run, only if
    handed-over calls and coroutines together stay under ``size`` (a call handed over may start
    at once on an idle thread). A coroutine may start while the two together stay under
    ``size``. Whoever cannot go waits, in arrival order.
    """

    def __init__(self, size: int, lookahead: int) -> None:
        self.size = size
        self.lookahead = lookahead
        self.threaded = 0
        self.coroutines = 0
        # (threaded, kept by withdraw, waiter)
        self._waiters: collections.deque[tuple[bool, bool, asyncio.Future[None]]] = (
            collections.deque()
        )

    def _allows(self, threaded: bool) -> bool:
        if threaded and not self.coroutines:
            return self.threaded < self.size + self.lookahead
        return self.threaded + self.coroutines < self.size

    def _count(self, threaded: bool, step: int) -> None:
        if threaded:
            self.threaded += step
        else:
            self.coroutines += step

    def try_enter(self, threaded: bool) -> bool:
        """Go now if the rules allow and nobody waits; False otherwise (then :meth:`enter`)."""
        if not self._waiters and self._allows(threaded):
            self._count(threaded, 1)
            return True
        return False

    async def enter(self, threaded: bool, keep: bool = False) -> None:
        """Wait until a call (``threaded``) or a coroutine may go. NotStarted if withdrawn
        (never when ``keep``)."""
        if self.try_enter(threaded):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((threaded, keep, waiter))
        try:
            await waiter  # counted in by _wake before it is woken
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.leave(threaded)  # let in, then cancelled before it could go
            raise

    def leave(self, threaded: bool) -> None:
        self._count(threaded, -1)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            threaded, _, waiter = waiters[0]
            if waiter.done():  # cancelled while it waited
                waiters.popleft()
                continue
            if not self._allows(threaded):
                return
            waiters.popleft()
            self._count(threaded, 1)
            waiter.set_result(None)

    def withdraw(self) -> int:
        """Every waiter not kept gets NotStarted; returns how many."""
        waiters = self._waiters
        self._waiters = collections.deque(entry for entry in waiters if entry[1])
        withdrawn = 0
        for _, keep, waiter in waiters:
            if not keep and not waiter.done():
                waiter.set_exception(NotStarted())
                withdrawn += 1
        return withdrawn


class _Job:
    """A call handed to a worker thread, which an overrun can interrupt. ``started`` and
    ``ended`` are ``time.monotonic()`` readings (0.0 until then)."""

    __slots__ = (
        "completions",
        "ended",
        "fn",
        "future",
        "ident",
        "keep",
        "lock",
        "started",
        "state",
    )

    def __init__(self, fn: Callable[[], Any], completions: _Completions, keep: bool) -> None:
        self.fn = fn
        self.keep = keep  # never withdrawn (its message was acked before the run)
        self.completions = completions
        self.future: asyncio.Future[Any] = completions.loop.create_future()
        self.lock = threading.Lock()
        self.state = "queued"
        self.ident = 0
        self.started = 0.0
        self.ended = 0.0

    def run(self) -> None:
        with self.lock:
            if self.state != "queued":
                return
            self.state = "running"
            self.ident = threading.get_ident()
            self.started = time.monotonic()
        try:
            value = self.fn()
        except BaseException as exc:
            with self.lock:
                self.state = "done"
                self.ended = time.monotonic()
            self.completions.put(self, None, exc)
        else:
            with self.lock:
                self.state = "done"
                self.ended = time.monotonic()
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

    def withdraw(self) -> bool:
        """On the loop: if the call has not started, it never will; its waiter gets
        NotStarted. True if it was withdrawn."""
        with self.lock:
            if self.state != "queued":
                return False
            self.state = "done"
        if not self.future.done():
            self.future.set_exception(NotStarted())
        return True

    def ran_for(self) -> float:
        """Seconds the call has run (so far, if it still runs)."""
        if not self.started:
            return 0.0
        return (self.ended or time.monotonic()) - self.started


class _Threads:
    """N daemon threads running :class:`_Job` s; a late interrupt never kills a thread.
    ``waiting`` holds the jobs handed over and not finished (loop side)."""

    def __init__(self, size: int, name: str, gate: _Gate) -> None:
        self.gate = gate
        self.waiting: set[_Job] = set()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._completions: _Completions | None = None
        self._threads = [
            threading.Thread(target=self._main, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _main(self) -> None:
        jobs = self._jobs
        while True:
            try:
                job = jobs.get()
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
        self.waiting.add(job)
        self._jobs.put(job)

    def withdraw_waiting(self) -> int:
        return sum(job.withdraw() for job in list(self.waiting) if not job.keep)

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


async def _run_in_thread(
    threads: _Threads,
    fn: Callable[[], Any],
    time_limit: float | None,
    ran: list[float] | None = None,
    keep: bool = False,
) -> tuple[bool, Any]:
    """Run ``fn`` on ``threads``; return (finished in time, value). Raises what ``fn`` raised,
    or NotStarted if the pool withdrew it before it started (never when ``keep``).
    ``time_limit`` counts from the moment ``fn`` starts, not from when it was handed over;
    ``ran`` gets its running time."""
    gate = threads.gate
    if not gate.try_enter(True):
        await gate.enter(True, keep)
    try:
        job = _Job(fn, threads.completions(asyncio.get_running_loop()), keep)
        threads.submit(job)
        try:
            if time_limit is None:
                return True, await job.future
            wait = time_limit  # the earliest the limit can run out: it starts now at the earliest
            while True:
                try:
                    async with asyncio.timeout(wait):
                        return True, await asyncio.shield(job.future)
                except TimeoutError:
                    if job.future.done():
                        return True, job.future.result()
                    wait = time_limit - job.ran_for() if job.started else time_limit
                    if wait > 0:
                        continue
                    job.interrupt()
                    job.future.add_done_callback(_consume)
                    return False, None
        except asyncio.CancelledError:
            job.interrupt()
            job.future.add_done_callback(_consume)
            raise
        finally:
            threads.waiting.discard(job)
            if ran is not None:
                ran.append(job.ran_for())
    finally:
        gate.leave(True)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class AsyncioPool(Pool):
    """``async def`` tasks on the event loop; plain functions in ``concurrency`` threads.

    Looks ahead by ``concurrency`` (see the module's text); calls for the threads and
    ``async def`` tasks pass one :class:`_Gate`, so together they never run more than
    ``concurrency`` tasks at once.
    """

    name = "asyncio"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.lookahead = concurrency
        self._gate = _Gate(concurrency, self.lookahead)
        self._threads: _Threads | None = None

    async def start(self) -> None:
        if self._threads is None:
            self._threads = _Threads(self.concurrency, "conveyor-task", self._gate)

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.stop()
            self._threads = None

    def withdraw_waiting(self) -> int:
        withdrawn = self._gate.withdraw()
        if self._threads is not None:
            withdrawn += self._threads.withdraw_waiting()
        return withdrawn

    async def run(
        self,
        task: Task,
        request: Request,
        time_limit: float | None,
        on_value: OnValue | None = None,
    ) -> Outcome:
        started = time.monotonic()
        outcome = await self._run(task, request, time_limit, on_value)
        if not outcome.runtime:
            # A fresh Outcome nobody else holds yet: set its runtime in place (replace()
            # costs ~1 µs a task).
            object.__setattr__(outcome, "runtime", time.monotonic() - started)
        return outcome

    async def _run(
        self, task: Task, request: Request, time_limit: float | None, on_value: OnValue | None
    ) -> Outcome:
        ran: list[float] = []  # a thread's running time, once it has one
        try:
            if task.is_async:
                gate = self._gate
                if not gate.try_enter(False):
                    await gate.enter(False, keep=not task.acks_late)
                try:
                    return await self._run_async(task, request, time_limit)
                finally:
                    gate.leave(False)
            if self._threads is None:
                await self.start()
            assert self._threads is not None

            def call() -> tuple[Any, bool]:
                with running(request):
                    value = task(*request.args, **request.kwargs)
                return value, on_value is not None and on_value(value)

            finished, result = await _run_in_thread(
                self._threads, call, time_limit, ran, keep=not task.acks_late
            )
            if not finished:
                assert time_limit is not None
                return time_limit_error(task, request, time_limit)
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

    async def _run_async(self, task: Task, request: Request, time_limit: float | None) -> Outcome:
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

    async def _run(
        self, task: Task, request: Request, time_limit: float | None, on_value: OnValue | None
    ) -> Outcome:
        if not task.is_async:
            return await super()._run(task, request, time_limit, on_value)
        if self._threads is None:
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

        ran: list[float] = []
        try:
            _, value = await _run_in_thread(self._threads, call, None, ran, keep=not task.acks_late)
        except (NotStarted, asyncio.CancelledError):
            raise
        except Exception as exc:
            return classify_error(task, request, exc, format_error(exc))
        if value is expired:
            assert time_limit is not None
            return time_limit_error(task, request, time_limit)
        return Outcome(State.SUCCESS, value, runtime=ran[0])


POOLS: dict[str, type[Pool]] = {"asyncio": AsyncioPool, "threads": ThreadPool}
