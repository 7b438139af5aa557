"""The ``processes`` pool: tasks run in child processes, for CPU-bound work.

Each child is started with ``spawn`` (no state forked from a threaded parent), imports the app
from its ``module:attr`` path and runs one task at a time. Arguments and results cross the pipe
with pickle; that is local IPC between a worker and its own children, never the broker. A task
that passes its time limit, or a child that dies mid-task, costs that child: it is killed and
replaced, and the run is recorded as failed. A child that has run ``max_tasks_per_child`` tasks,
or whose peak resident memory passed ``max_memory_per_child`` KiB after a task, is stopped after
that task (which completes normally) and replaced by a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import pickle
import resource
import sys
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from conveyor.errors import ConfigurationError, TaskError
from conveyor.logs import LogSetup, configure_logging, current_setup
from conveyor.results.meta import State
from conveyor.task import Request, Task, running
from conveyor.worker.outcome import (
    Outcome,
    classify_error,
    format_error,
    time_limit_error,
)
from conveyor.worker.pools import Pool, TaskRun
from conveyor.worker.soft_limits import alarm_soft_limit, within_soft_limit

__all__ = ["ProcessPool", "load_app_spec"]

_CTX = multiprocessing.get_context("spawn")
log = logging.getLogger("conveyor.worker")


def load_app_spec(spec: str) -> Any:
    """Import ``module[:attr]`` and return the App it names (``attr`` defaults to ``app``).

    Raises ConfigurationError when the module or attribute does not exist or is not an App.
    """
    from conveyor.app import App

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in (attr or "app").split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr or 'app'!r}")
    if not isinstance(target, App):
        raise ConfigurationError(f"{spec!r} is a {type(target).__name__}, not a conveyor App")
    return target


def _child_log_setup() -> LogSetup | None:
    """How a child logs: as this process was set up by ``conveyor worker``; else (a worker
    built by hand) at the root logger's level, if this process logs anywhere at all."""
    setup = current_setup()
    if setup is not None:
        return setup
    root = logging.getLogger()
    if not root.handlers:
        return None
    return LogSetup(level=logging.getLevelName(root.getEffectiveLevel()))


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        plain = TaskError(f"{type(exc).__qualname__}: {exc}")
        return plain
    return exc


def _child_main(conn: Connection, spec: str, path: list[str], logs: LogSetup | None) -> None:
    sys.path[:] = path
    if logs is not None:
        configure_logging(logs)  # -l, --logfile and --log-format reach the children
    try:
        app = load_app_spec(spec)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    loop = asyncio.new_event_loop()
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        name, request, soft = job
        task: Task = app.tasks[name]
        started = time.monotonic()
        try:
            with running(request):
                if task.is_async:
                    coro = within_soft_limit(task(*request.args, **request.kwargs), soft, request)
                    value = loop.run_until_complete(coro)
                else:
                    with alarm_soft_limit(soft, request):
                        value = task(*request.args, **request.kwargs)
            reply: tuple[Any, ...] = (State.SUCCESS.value, value, None, None, None)
        except BaseException as exc:
            outcome = classify_error(task, request, exc, format_error(exc))
            error = _picklable(outcome.error) if outcome.error is not None else None
            reply = (outcome.state.value, None, error, outcome.traceback, outcome.countdown)
        # Peak resident memory in KiB (Linux's unit), for max_memory_per_child.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            conn.send((*reply, time.monotonic() - started, rss))
        except Exception as exc:
            bad = TaskError(f"the result of {name} cannot cross to the worker: {exc}")
            conn.send((State.FAILURE.value, None, bad, None, None, time.monotonic() - started, rss))


class _CannotSend(Exception):
    """A run's request could not be pickled for the child; nothing was sent."""


class _Child:
    def __init__(self, spec: str) -> None:
        self.conn, child_conn = _CTX.Pipe()
        self.process: SpawnProcess = _CTX.Process(
            target=_child_main,
            args=(child_conn, spec, list(sys.path), _child_log_setup()),
            name="conveyor-pool",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self.tasks = 0  # tasks run so far

    async def _receive(self) -> Any:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = self.conn.fileno()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        return self.conn.recv()

    async def started(self) -> None:
        """Wait until the child imported the app; ConfigurationError if it could not."""
        try:
            kind, detail = await self._receive()
        except (EOFError, OSError) as exc:
            raise ConfigurationError(f"a pool process died while starting: {exc!r}") from exc
        if kind != "ready":
            raise ConfigurationError(f"a pool process could not load the app: {detail}")

    async def call(self, name: str, request: Request, soft: float | None) -> tuple[Any, ...]:
        """Run task ``name`` in the child (``soft``: its soft time limit); _CannotSend (the
        child untouched) if the request cannot be pickled, e.g. arguments nested deeper than
        pickle recurses."""
        try:
            payload = ForkingPickler.dumps((name, request, soft))
        except Exception as exc:  # RecursionError, PicklingError, TypeError...
            raise _CannotSend(f"{type(exc).__name__}: {exc}") from exc
        self.conn.send_bytes(payload)
        reply: tuple[Any, ...] = await self._receive()
        return reply

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.kill()
        else:
            self.conn.close()


class ProcessPool(Pool):
    """``concurrency`` child processes, each running one task at a time; each replaced after
    ``max_tasks_per_child`` tasks or once it used ``max_memory_per_child`` KiB (None: never)."""

    name = "processes"

    def __init__(
        self,
        concurrency: int,
        app_spec: str,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
    ) -> None:
        super().__init__(concurrency)
        self.app_spec = app_spec
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.replaced = 0  # children retired by the limits above
        self._idle: asyncio.Queue[_Child] | None = None
        self._children: set[_Child] = set()
        self._respawning: set[asyncio.Task[None]] = set()

    def _spawn(self) -> _Child:
        child = _Child(self.app_spec)
        self._children.add(child)
        return child

    async def start(self) -> None:
        """Start the children and wait until each has loaded the app (so that a time limit
        never counts a child's start-up). ConfigurationError if one cannot load it."""
        if self._idle is not None:
            return
        children = [self._spawn() for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*(child.started() for child in children))
        except BaseException:
            await self.close()
            raise
        self._idle = asyncio.Queue()
        for child in children:
            self._idle.put_nowait(child)

    async def _respawn(self) -> None:
        if len(self._children) >= self.concurrency:  # the pool shrank meanwhile
            return
        child = self._spawn()
        try:
            await child.started()
        except ConfigurationError as exc:
            self._children.discard(child)
            child.kill()
            log.error("could not replace a pool process (the pool runs one short): %s", exc)
            return
        if self._idle is None:
            return  # closed meanwhile (close() stops it)
        if len(self._children) > self.concurrency:  # the pool shrank while it started
            self._children.discard(child)
            await asyncio.to_thread(child.stop)
            return
        self._idle.put_nowait(child)

    async def close(self) -> None:
        for task in list(self._respawning):
            task.cancel()
        children, self._children = self._children, set()
        self._idle = None
        await asyncio.gather(*(asyncio.to_thread(c.stop) for c in children))

    def _replace(self, child: _Child) -> None:
        self._children.discard(child)
        child.kill()
        self._in_background(self._respawn())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of the pool's (cancelled by :meth:`close`)."""
        task = asyncio.get_running_loop().create_task(work)
        self._respawning.add(task)
        task.add_done_callback(self._respawning.discard)

    async def _run(self, run: TaskRun) -> Outcome:
        task, request, time_limit = run.task, run.request, run.time_limit
        await self.start()
        assert self._idle is not None
        idle = self._idle
        child = await idle.get()
        started = time.monotonic()
        try:
            async with asyncio.timeout(time_limit):
                reply = await child.call(task.name, request, run.soft)
        except _CannotSend as exc:
            idle.put_nowait(child)
            error = TaskError(
                f"the arguments of {task.name}[{request.id}] cannot be passed to a pool "
                f"process: {exc}"
            )
            return Outcome(State.FAILURE, error=error)
        except TimeoutError:
            self._replace(child)
            assert time_limit is not None
            return time_limit_error(task, request, time_limit)
        except (EOFError, OSError) as exc:
            self._replace(child)
            error = TaskError(f"the pool process running {task.name}[{request.id}] died: {exc!r}")
            return Outcome(State.FAILURE, error=error, runtime=time.monotonic() - started)
        except asyncio.CancelledError:
            self._replace(child)
            raise
        state, value, error, tb, countdown, runtime, rss = reply
        child.tasks += 1
        if len(self._children) > self.concurrency:  # the pool shrank
            self._retire(child, "the pool shrank", replace=False)
        elif self.max_tasks_per_child and child.tasks >= self.max_tasks_per_child:
            self._retire(child, f"{child.tasks} tasks (max_tasks_per_child)")
        elif self.max_memory_per_child and rss > self.max_memory_per_child:
            self._retire(
                child, f"using {rss} KiB (max_memory_per_child {self.max_memory_per_child})"
            )
        else:
            idle.put_nowait(child)
        return Outcome(State(state), value, error, tb, countdown, runtime)

    def _retire(self, child: _Child, why: str, *, replace: bool = True) -> None:
        """Stop ``child`` after its task (in a thread) and start its replacement."""
        if replace:
            log.info("replacing pool process %s after %s", child.process.pid, why)
            self.replaced += 1
        self._children.discard(child)
        self._in_background(asyncio.to_thread(child.stop))
        if replace:
            self._in_background(self._respawn())

    async def resize(self, size: int) -> None:
        """Start children up to ``size``, or stop idle ones down to it (busy ones stop when
        their task ends)."""
        self.concurrency = size
        idle = self._idle
        if idle is None:
            return  # not started: it starts with ``size`` children
        for _ in range(len(self._children), size):
            self._in_background(self._respawn())
        while len(self._children) > size and not idle.empty():
            self._retire(idle.get_nowait(), "the pool shrank", replace=False)
