"""Daemon threads that run calls for an event loop, with time limits counted from the start.

A call waits for the pool's :class:`~conveyor.worker.gate.Gate`, then in the threads' queue;
its end reaches the loop in batches (one wake-up of the loop for however many ended). A call
past its time limit gets TimeLimitExceeded raised in its thread; one not started yet can be
withdrawn (:class:`~conveyor.worker.outcome.NotStarted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from conveyor.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from conveyor.worker.gate import Gate
from conveyor.worker.outcome import NotStarted

__all__ = ["Threads", "run_in_thread"]


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
        "outcome",
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
        self.outcome: tuple[Any, BaseException | None] | None = None

    def run(self) -> None:
        with self.lock:
            if self.state != "queued":
                return
            self.state = "running"
            self.ident = threading.get_ident()
            self.started = time.monotonic()
        try:
            outcome: tuple[Any, BaseException | None] = (self.fn(), None)
        except BaseException as exc:
            outcome = (None, exc)
        self.outcome = outcome
        self.settle()

    def settle(self, late: BaseException | None = None) -> None:
        """Mark the call done and report its outcome to the loop. ``late``: an interrupt that
        landed in the thread after the call ended (it stands for an outcome not recorded)."""
        if self.outcome is None:
            self.outcome = (None, late)
        with self.lock:
            self.state = "done"  # from here on no interrupt is sent
        # A call: an interrupt sent just before lands here at the latest, before the report.
        self.ended = time.monotonic()
        value, exc = self.outcome
        self.completions.put(self, value, exc)

    def interrupt_soft(self, error: type[BaseException]) -> None:
        """Raise ``error`` (a SoftTimeLimitExceeded type) in the thread if the call runs."""
        with self.lock:
            if self.state == "running":
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(error)
                )

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


class Threads:
    """N daemon threads running :class:`_Job` s; a late interrupt never kills a thread.
    ``waiting`` holds the jobs handed over and not finished (loop side)."""

    def __init__(self, size: int, name: str, gate: Gate) -> None:
        self.gate = gate
        self.waiting: set[_Job] = set()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._completions: _Completions | None = None
        self._name = name
        self._started = 0
        self.size = 0
        self.resize(size)

    def _main(self) -> None:
        jobs = self._jobs
        while True:
            job = None
            try:
                job = jobs.get()
                if job is None:
                    return
                job.run()
            except (TimeLimitExceeded, SoftTimeLimitExceeded) as late:  # after the call ended
                if job is not None:
                    job.settle(late)  # a second report of a settled job is ignored

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

    def resize(self, size: int) -> None:
        """Run ``size`` threads: start more, or have some leave once the calls handed over
        before this one ended."""
        for _ in range(size, self.size):
            self._jobs.put(None)
        for _ in range(self.size, size):
            self._started += 1
            name = f"{self._name}-{self._started}"
            threading.Thread(target=self._main, name=name, daemon=True).start()
        self.size = size

    def stop(self) -> None:
        self.resize(0)


async def run_in_thread(
    threads: Threads,
    fn: Callable[[], Any],
    time_limit: float | None,
    ran: list[float] | None = None,
    keep: bool = False,
    soft_limit: tuple[float, type[BaseException]] | None = None,
) -> tuple[bool, Any]:
    """Run ``fn`` on ``threads``; return (finished in time, value). Raises what ``fn`` raised,
    or NotStarted if the pool withdrew it before it started (never when ``keep``).
    ``time_limit`` counts from the moment ``fn`` starts, not from when it was handed over;
    ``soft_limit`` (seconds, error type) raises that error in the thread at that time (it must come
    before ``time_limit``); ``ran`` gets its running time."""
    gate = threads.gate
    if not gate.try_enter(True):
        await gate.enter(True, keep)
    try:
        job = _Job(fn, threads.completions(asyncio.get_running_loop()), keep)
        threads.submit(job)
        try:
            if time_limit is None and soft_limit is None:
                return True, await job.future
            return await _watch(job, time_limit, soft_limit)
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


async def _watch(
    job: _Job, time_limit: float | None, soft_limit: tuple[float, type[BaseException]] | None
) -> tuple[bool, Any]:
    """Wait for ``job``, sending the soft limit's error, then the hard limit's interrupt, at
    their times counted from the job's start."""
    while True:
        limit = soft_limit[0] if soft_limit is not None else time_limit
        if limit is None:
            return True, await job.future
        # The earliest the limit can run out: the job starts now at the earliest.
        wait = limit - job.ran_for() if job.started else limit
        if wait > 0:
            try:
                async with asyncio.timeout(wait):
                    return True, await asyncio.shield(job.future)
            except TimeoutError:
                if job.future.done():
                    return True, job.future.result()
                continue
        if soft_limit is not None:
            job.interrupt_soft(soft_limit[1])
            soft_limit = None
            continue
        job.interrupt()
        job.future.add_done_callback(_consume)
        return False, None


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
