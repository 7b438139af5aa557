"""The application: settings, the task registry, the router, sending tasks, and results.

``App`` is the one object a service creates::

    app = App("web", broker="sqlite:///broker.db", config={"task_routes": {"web.*": "web_queue"}})

    @app.task(name="web.render", queue="web_queue")
    def render(page: str) -> str: ...

    render.delay("home").get(timeout=10)          # sync
    await app.asend_task("remote.transcode", kwargs={"path": "a.mp4"})   # async

The core is async. An App keeps one connected transport and one result backend per event loop
that uses it, created on first use. The sync API (``send_task``, ``delay``, ``apply_async``,
``AsyncResult.get``...) runs the async one on a private event loop: in the calling thread when
no other call is running it, in a background thread between calls (see ``_LoopThread``). Where
a transport can publish from another thread (RabbitMQ), ``send_task`` writes the message from
the calling thread once the loop has declared its route, and the loop only reads the broker's
confirm (see ``App._send_here``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload
from urllib.parse import urlsplit

from conveyor.config import Settings
from conveyor.errors import ConfigurationError, Unroutable
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.task_message import TaskMessage, encode_task
from conveyor.results import ResultBackend, open_backend
from conveyor.results.async_result import AsyncResult
from conveyor.routing.entities import Broadcast, Exchange, Queue
from conveyor.task import Task, current_request
from conveyor.transports import Transport, open_transport
from conveyor.transports.base import Wakeup

if TYPE_CHECKING:
    from conveyor.routing.router import Route, Router

__all__ = ["App", "default_broker_url"]

T = TypeVar("T")


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


class _RandomBytes:
    """``os.urandom`` read 4 KiB at a time (one system call per 256 task ids); a forked child
    starts afresh, so it never repeats its parent's ids."""

    def __init__(self) -> None:
        self._forget()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._pos = 0

    def take16(self) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + 16 > len(self._pool):
                self._pool, pos = os.urandom(4096), 0
            self._pos = pos + 16
            return self._pool[pos : pos + 16]


_RANDOM = _RandomBytes()


def new_task_id() -> str:
    """A random task id like ``str(uuid.uuid4())`` (version 4, RFC 4122 variant), cheaper."""
    text = f"{int.from_bytes(_RANDOM.take16()) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def default_broker_url() -> str:
    """``CONVEYOR_BROKER_URL`` if set, else the embedded broker's SQLite file in the working
    directory (an absolute URL, so every process started here agrees on it).
    """
    env = os.environ.get("CONVEYOR_BROKER_URL")
    if env:
        return env
    from conveyor.transports.sqlite import default_broker_url as sqlite_default

    return sqlite_default()


def default_backend_url(broker_url: str) -> str:
    """The result backend used when none is configured: ``CONVEYOR_RESULT_BACKEND`` if set;
    else the broker's own SQLite file, or the same ``memory://`` name, or ``rpc://`` (replies
    over the broker) for RabbitMQ and Redis.
    """
    env = os.environ.get("CONVEYOR_RESULT_BACKEND")
    if env:
        return env
    scheme = urlsplit(broker_url).scheme.lower()
    if scheme in ("sqlite", "memory"):
        return broker_url.split("?", 1)[0]
    return "rpc://"


class _SyncCall(Generic[T]):
    """One coroutine run on the private loop for a waiting thread.

    Lighter than ``run_coroutine_threadsafe``: the coroutine itself wakes the caller (a bare
    lock released in its last step) instead of a chain of future callbacks one loop turn later.
    """

    __slots__ = ("_coro", "_done", "_error", "_task", "_value")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._done = threading.Lock()
        self._done.acquire()
        self._task: asyncio.Task[None] | None = None
        self._value: Any = None
        self._error: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            self._value = await self._coro
        except BaseException as exc:  # handed to the waiting thread, which raises it
            self._error = exc
        finally:
            self._done.release()

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        else:
            self._coro.close()

    def close(self) -> None:
        """Never started: close the coroutine (no "never awaited" warning)."""
        self._coro.close()

    def wait(self, loop: asyncio.AbstractEventLoop) -> T:
        try:
            self._done.acquire()
        except BaseException:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel)
            raise
        error = self._error
        if error is not None:
            self._error = None  # no reference cycle through the traceback
            raise error
        return self._value  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A send worked out before any I/O (:meth:`App._plan`): the route, the times, the options."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    route: Route
    delay: float | None
    eta: datetime | None
    expires: datetime | None
    task_id: str | None
    headers: Mapping[str, Any] | None
    ignore_result: bool
    time_limit: float | None
    serializer: str

    def message(self, reply_to: str | None) -> tuple[str, Envelope]:
        """The task id (a new one unless given) and the encoded message; ProtocolError for
        arguments the serializer cannot hold."""
        parent = current_request()
        tid = self.task_id or new_task_id()
        message = TaskMessage(
            task=self.name,
            id=tid,
            args=self.args,
            kwargs=self.kwargs,
            eta=self.eta,
            expires=self.expires,
            timelimit=(self.time_limit, None),
            root_id=(parent.root_id or parent.id) if parent is not None else tid,
            parent_id=parent.id if parent is not None else None,
            ignore_result=self.ignore_result,
            reply_to=reply_to,
            priority=self.route.priority,
            headers=dict(self.headers) if self.headers else {},
        )
        return tid, encode_task(message, self.serializer)

    def unroutable(self, exc: Unroutable) -> Unroutable:
        """The sender's error for a message no queue took: which route, decided by what."""
        route = self.route
        return Unroutable(
            f"task {self.name!r} was routed to exchange {route.exchange.name!r} with routing key "
            f"{route.routing_key!r} ({route.decided_by}) but no queue is bound there"
            + (
                "; no worker is consuming that broadcast queue"
                if isinstance(route.queue, Broadcast)
                else ""
            ),
            exchange=exc.exchange,
            routing_key=exc.routing_key,
        )


async def _confirmed_or_replied(
    publishing: Coroutine[Any, Any, int], replied: asyncio.Future[None]
) -> None:
    """Await ``publishing`` (a publish waiting for its confirm) unless ``replied`` resolves
    first; then stop waiting for the confirm. Raises what the publish raised, unless the reply
    came first."""
    loop = asyncio.get_running_loop()
    confirm = loop.create_task(publishing)
    first: asyncio.Future[None] = loop.create_future()

    def settle(_: object) -> None:
        if not first.done():
            first.set_result(None)

    confirm.add_done_callback(settle)
    replied.add_done_callback(settle)
    try:
        await first
    finally:
        confirm.remove_done_callback(settle)
        replied.remove_done_callback(settle)
        if not confirm.done():
            confirm.cancel()  # a worker has the task (or this send was cancelled)
    if confirm.done() and not confirm.cancelled():
        if replied.done():
            confirm.exception()  # retrieved: the task reached a worker whatever it says
        else:
            confirm.result()


_LINGER = 0.05
"""Seconds the private loop may go unrun between sync calls before the background thread
takes it over (confirms, replies and heartbeats wait at most this long meanwhile)."""


class _Turns:
    """Who runs one private event loop: a sync call in its own thread, or the background one.

    State under ``cond``: ``runner`` (ident of the thread running the loop, or holding the
    right to), ``handed`` (threads waiting on work done by whoever runs it), ``claims``
    (callers waiting for the background thread to give the loop up), ``idle_since`` (when a
    caller last stopped running it).
    """

    __slots__ = (
        "background",
        "claims",
        "cond",
        "handed",
        "idle_since",
        "loop",
        "runner",
        "stop_asked",
        "stopping",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cond = threading.Condition(threading.Lock())
        self.runner: int | None = None
        self.background = 0
        self.handed = 0
        self.claims = 0
        self.idle_since = 0.0
        self.stop_asked = False
        self.stopping = False

    def serve(self, ready: threading.Event) -> None:
        """The background thread: run the loop whenever no sync call has for _LINGER seconds
        (at once when a thread waits on it), until a call claims it back or ``stopping``."""
        loop, cond = self.loop, self.cond
        with cond:
            self.background = threading.get_ident()
            ready.set()
            while not self.stopping:
                if self.runner is not None or self.claims:
                    cond.wait(_LINGER)  # a call runs it; callers notify only when it matters
                    continue
                left = self.idle_since + _LINGER - time.monotonic()
                if not self.handed and left > 0:
                    cond.wait(left)
                    continue
                self.runner = self.background
                cond.release()
                try:
                    loop.run_forever()
                finally:
                    cond.acquire()
                    self.runner = None
                    self.stop_asked = False
                    cond.notify_all()

    def take(self) -> bool:
        """Make this thread the loop's runner if no other call runs it (stopping the background
        thread if it does); False if another call does (or this thread runs another loop)."""
        cond = self.cond
        me = threading.get_ident()
        with cond:
            if asyncio._get_running_loop() is not None:
                return False
            while self.runner == self.background and not self.stopping:
                self.claims += 1
                self.stop_background()
                cond.wait()
                self.claims -= 1
            if self.runner is not None:
                return False
            self.runner = me
            return True

    def stop_background(self) -> None:
        """Ask the background thread to stop running the loop, if it is (``cond`` held)."""
        if self.runner == self.background and not self.stop_asked:
            self.stop_asked = True  # one stop per run: a second would end the next run
            self.loop.call_soon_threadsafe(self.loop.stop)

    def give_back(self) -> None:
        with self.cond:
            self.runner = None
            self.idle_since = time.monotonic()
            if self.handed or self.claims or self.stopping:
                self.cond.notify_all()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """While another thread's work is awaited: the background thread runs the loop as soon
        as no call does (it does not wait out _LINGER)."""
        with self.cond:
            self.handed += 1
            if self.runner is None:
                self.cond.notify_all()
        try:
            yield
        finally:
            with self.cond:
                self.handed -= 1


class _LoopThread:
    """The private event loop of the sync API, and the threads that run it.

    A sync call runs the loop itself, in the calling thread, when no other call is running it:
    its coroutine, the broker's answers and the task's reply all stay in that thread, with no
    hand-off between threads. Between calls a background thread runs the loop (heartbeats,
    confirms, replies), taking it over once no call has run it for ``_LINGER`` seconds and
    giving it back to the next call that wants it. A call that finds another call running the
    loop hands its coroutine over and waits (:meth:`run`), or blocks until what that thread
    reads sets its :class:`Wakeup` (:meth:`wait_for`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: _Turns | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _current_turns(self) -> _Turns:
        with self._lock:
            turns = self._turns
            if turns is None or self._pid != os.getpid() or turns.loop.is_closed():
                loop = asyncio.new_event_loop()
                turns = _Turns(loop)
                ready = threading.Event()
                thread = threading.Thread(
                    target=turns.serve, args=(ready,), name="conveyor-sync-loop", daemon=True
                )
                thread.start()
                ready.wait()
                self._turns, self._thread, self._pid = turns, thread, os.getpid()
            return turns

    def current(self) -> asyncio.AbstractEventLoop | None:
        """The private loop if it exists in this process, else None (nothing started)."""
        turns = self._turns
        return turns.loop if turns is not None and self._pid == os.getpid() else None

    def in_loop_thread(self) -> bool:
        """True inside the private loop (a coroutine or callback it runs)."""
        loop = self.current()
        return loop is not None and asyncio._get_running_loop() is loop

    def _refuse_own_loop(self) -> None:
        if self.in_loop_thread():
            raise RuntimeError("conveyor's sync API cannot be called from its own event loop")

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the private loop and return its result: in this thread when no
        other call runs the loop, else by handing the coroutine to the thread that does."""
        self._refuse_own_loop()
        turns = self._current_turns()
        loop = turns.loop
        if turns.take():
            try:
                task = loop.create_task(make())  # copies this thread's context
                try:
                    return loop.run_until_complete(task)
                except BaseException:
                    if not task.done():
                        task.cancel()  # finished by whoever runs the loop next
                    raise
            finally:
                turns.give_back()
        with turns.waiting():
            call = _SyncCall(make())
            try:
                # The callback runs in a copy of this thread's context (contextvars travel along).
                loop.call_soon_threadsafe(call.start, loop)
            except BaseException:
                call.close()
                raise
            return call.wait(loop)

    def wait_for(self, wakeup: Wakeup, timeout: float | None) -> bool:
        """Block until ``wakeup`` is set by something the private loop reads (True), or for
        ``timeout`` seconds (False): running the loop in this thread meanwhile when no other
        call runs it, else waiting for the thread that does."""
        if wakeup.is_set():
            return True
        self._refuse_own_loop()
        turns = self._current_turns()
        if not turns.take():
            with turns.waiting():
                return wakeup.wait(timeout)
        loop = turns.loop
        try:
            done = loop.create_future()
            me = threading.get_ident()

            def resolve() -> None:
                if not done.done():
                    done.set_result(None)

            def on_set() -> None:
                if threading.get_ident() == me:
                    resolve()  # read by the loop this thread runs
                else:
                    loop.call_soon_threadsafe(resolve)

            wakeup.on_set = on_set
            if wakeup.is_set():
                return True
            timer = loop.call_later(timeout, resolve) if timeout is not None else None
            try:
                loop.run_until_complete(done)
            finally:
                wakeup.on_set = None
                if timer is not None:
                    timer.cancel()
            return wakeup.is_set()
        finally:
            turns.give_back()

    def stop(self) -> None:
        with self._lock:
            turns, thread = self._turns, self._thread
            self._turns = self._thread = None
        if turns is None or thread is None or self._pid != os.getpid():
            return
        loop = turns.loop
        with turns.cond:
            turns.stopping = True
            turns.stop_background()
            turns.cond.notify_all()
        thread.join(timeout=5)
        if not thread.is_alive() and turns.runner is None:
            loop.close()


_SYNC = _LoopThread()
# Resources opened on the private loop, closed at exit even if their App is gone by then.
_SYNC_RESOURCES: set[_LoopResources] = set()


async def _close_resources(resources: list[_LoopResources]) -> None:
    for res in resources:
        with contextlib.suppress(Exception):
            await res.close()


def _close_at_exit() -> None:
    if _SYNC.current() is not None:
        with contextlib.suppress(Exception):
            _SYNC.run(lambda: asyncio.wait_for(_close_resources(list(_SYNC_RESOURCES)), 10))
    _SYNC.stop()


# Run before the interpreter shuts thread pools down, so that closing can still use them: the
# thread pool module registers its own hook on import, and hooks run last-registered first.
importlib.import_module("concurrent.futures.thread")
_register_early = getattr(threading, "_register_atexit", None)
if _register_early is not None:
    _register_early(_close_at_exit)
else:
    atexit.register(_close_at_exit)


class _LoopResources:
    """What an App holds for one event loop: its transport, its backend, what it declared."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.transport: Transport | None = None
        self.backend: ResultBackend | None = None
        self.declared: set[Any] = set()
        # Routes whose exchange and queue are declared, by identity (the router reuses them).
        self.declared_routes: dict[int, Route] = {}
        # What reply_from (the backend) last gave as the reply address (prepare_reply).
        self.reply_to: str | None = None
        self.reply_from: ResultBackend | None = None

    async def close(self) -> None:
        _SYNC_RESOURCES.discard(self)
        backend, transport = self.backend, self.transport
        self.backend = self.transport = self.reply_from = None
        self.declared.clear()
        self.declared_routes.clear()
        try:
            if backend is not None:
                await backend.close()
        finally:
            if transport is not None:
                await transport.close()


class App:
    """A conveyor application: settings (``conf``), registered tasks and the broker they use.

    ``broker`` and ``result_backend`` are URLs (they override ``broker_url`` / ``result_backend``
    in ``config``); ``config`` is a dict, an object or a module whose setting names are loaded
    into :attr:`conf`. Raises ConfigurationError for an unknown setting name.
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        result_backend: str | None = None,
        config: Mapping[str, Any] | object | None = None,
    ) -> None:
        self.main = main
        self.conf = Settings()
        if config is not None:
            self.conf.update_from(config)
        if broker is not None:
            self.conf.broker_url = broker
        if result_backend is not None:
            self.conf.result_backend = result_backend
        self._tasks: dict[str, Task] = {}
        self._router: Router | None = None
        self._router_values: tuple[Any, ...] = ()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
            weakref.WeakKeyDictionary()
        )
        # The loop used last and its resources: most programs use one loop.
        self._last_resources: (
            tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopResources] | None
        ) = None

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'}>"

    def config_from_object(self, source: Mapping[str, Any] | object) -> None:
        """Load settings from a dict, an object or a module (see :meth:`Settings.update_from`)."""
        self.conf.update_from(source)

    @property
    def tasks(self) -> Mapping[str, Task]:
        """Registered tasks by name (read-only view)."""
        return self._tasks

    @property
    def router(self) -> Router:
        """The Router for the current settings; rebuilt when a routing setting is reassigned."""
        conf = self.conf
        # Holding the values (not their ids) means a replaced one is never mistaken for the old.
        values = (
            conf.task_routes,
            conf.task_queues,
            conf.task_default_queue,
            conf.task_default_exchange,
            conf.task_default_exchange_type,
            conf.task_default_routing_key,
            conf.task_create_missing_queues,
            conf.task_queue_max_priority,
            conf.task_default_priority,
        )
        router = self._router
        if router is None or not all(map(operator.is_, values, self._router_values)):
            from conveyor.routing.router import Router

            router = self._router = Router(conf)
            self._router_values = values
        return router

    @property
    def broker_url(self) -> str:
        """``conf.broker_url``, else :func:`default_broker_url`."""
        return self.conf.broker_url or default_broker_url()

    @property
    def backend_url(self) -> str:
        """``conf.result_backend``, else the default for the broker (see default_backend_url)."""
        return self.conf.result_backend or default_backend_url(self.broker_url)

    def _wait_for(self, wakeup: Wakeup, timeout: float | None) -> bool:
        """Block this thread until ``wakeup`` is set by what the private loop reads (True) or
        ``timeout`` seconds pass (False), running that loop here if no other call does."""
        return _SYNC.wait_for(wakeup, timeout)

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the private event loop and return its result (the sync facade)."""
        if _SYNC.in_loop_thread():
            coro.close()  # never run: the call below refuses
        return _SYNC.run(lambda: coro)

    def _resources(self, loop: asyncio.AbstractEventLoop | None = None) -> _LoopResources:
        if loop is None:
            loop = asyncio.get_running_loop()
        last = self._last_resources
        if last is not None and last[0]() is loop:
            return last[1]
        res = self._loops.get(loop)
        if res is None:
            res = self._loops[loop] = _LoopResources()
            if loop is _SYNC.current():
                _SYNC_RESOURCES.add(res)
        self._last_resources = (weakref.ref(loop), res)
        return res

    async def atransport(self) -> Transport:
        """The connected transport for the running event loop, opened on first use.

        Raises ConfigurationError for a bad broker URL, BrokerUnavailable if it can't connect.
        """
        res = self._resources()
        transport = res.transport
        if transport is not None:
            return transport
        async with res.lock:
            if res.transport is None:
                transport = open_transport(self.broker_url, self.conf.broker_transport_options)
                await transport.connect()
                res.transport = transport
                res.declared.clear()
                res.declared_routes.clear()
            return res.transport

    async def abackend(self) -> ResultBackend:
        """The connected result backend for the running event loop, opened on first use."""
        res = self._resources()
        backend = res.backend
        if backend is not None:
            return backend
        async with res.lock:
            if res.backend is None:
                backend = open_backend(self.backend_url, host=self)
                await backend.connect()
                res.backend = backend
            return res.backend

    async def aclose(self) -> None:
        """Close this event loop's backend and transport (flushing acks). Idempotent."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        res = self._loops.pop(loop, None)
        self._last_resources = None
        if res is not None:
            await res.close()

    def close(self) -> None:
        """Close what the sync API opened (the private loop's transport and backend)."""
        if _SYNC.current() is not None and not _SYNC.in_loop_thread():
            self.run_sync(self.aclose())

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def result(self, task_id: str, *, task_name: str | None = None) -> AsyncResult:
        """A handle on the result of ``task_id`` (sent by anyone), read from this App's backend."""
        return AsyncResult(task_id, app=self, task_name=task_name)

    async def declare(self, transport: Transport, entity: Queue | Broadcast | Exchange) -> None:
        """Declare ``entity`` on ``transport`` once per connection (cached; idempotent anyway)."""
        res = self._resources()
        if res.transport is transport and entity in res.declared:
            return
        if isinstance(entity, Broadcast):
            await transport.declare_exchange(entity.exchange)
        elif isinstance(entity, Exchange):
            if not entity.is_default:
                await transport.declare_exchange(entity)
        else:
            await transport.declare_queue(entity)
        if res.transport is transport:
            res.declared.add(entity)

    async def _declare_route(self, route: Route) -> Transport:
        """Declare the exchange and queue ``route`` names (once per connection); return the
        transport they are declared on."""
        transport = await self.atransport()
        await self.declare(transport, route.exchange)
        if route.queue is not None:
            await self.declare(transport, route.queue)
        res = self._resources()
        if res.transport is transport:
            if len(res.declared_routes) >= 1024:
                res.declared_routes.clear()
            res.declared_routes[id(route)] = route
        return transport

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        ignore_result: bool | None = None,
        time_limit: float | None = None,
        serializer: str | None = None,
        _task: Task | None = None,
    ) -> AsyncResult:
        """Send task ``name`` with ``args``/``kwargs``; its code need not exist in this process.

        Routing options (``queue``, ``exchange``, ``exchange_type``, ``routing_key``,
        ``priority``) override the task's attributes and ``task_routes``. ``countdown`` (seconds)
        or ``eta`` (a datetime) delay it through the broker's delayed delivery; ``expires``
        (seconds from now, or a datetime) marks it REVOKED instead of running it late.
        ``headers`` travel with the message. Declares the exchange and queue the route names
        (once per connection), then publishes, and returns once the broker has the message:
        its confirm came, or (``rpc://``, an id made here) the task's reply came first.

        Raises RoutingError for a route that cannot be resolved, Unroutable if no queue takes
        the message, ProtocolError for arguments JSON cannot hold, BrokerUnavailable.
        """
        plan = self._plan(
            name,
            args,
            kwargs,
            queue=queue,
            exchange=exchange,
            exchange_type=exchange_type,
            routing_key=routing_key,
            priority=priority,
            countdown=countdown,
            eta=eta,
            expires=expires,
            task_id=task_id,
            headers=headers,
            ignore_result=ignore_result,
            time_limit=time_limit,
            serializer=serializer,
            _task=_task,
        )
        loop = asyncio.get_running_loop()
        res = self._resources(loop)
        backend = None
        reply_to = None
        if not plan.ignore_result:
            backend = res.backend if res.backend is not None else await self.abackend()
            reply_to = await backend.prepare_reply()
            res.reply_to, res.reply_from = reply_to, backend
        tid, envelope = plan.message(reply_to)
        return await self._publish_task(plan, tid, envelope, backend)

    async def _publish_task(
        self, plan: _Plan, tid: str, envelope: Envelope, backend: ResultBackend | None
    ) -> AsyncResult:
        """Publish a composed task message (declaring its route first, once per connection)
        on the running loop; the second half of :meth:`asend_task`."""
        loop = asyncio.get_running_loop()
        res = self._resources(loop)
        route = plan.route
        transport = res.transport
        if transport is None or res.declared_routes.get(id(route)) is not route:
            transport = await self._declare_route(route)
        publishing = transport.publish(
            envelope,
            exchange=route.exchange.name,
            routing_key=route.routing_key,
            mandatory=True,
            delay=plan.delay,
        )
        # A reply proves a worker holds the task as surely as the broker's confirm does, and
        # can come first (the confirm of a persistent message waits for a disk sync): the send
        # is done at whichever comes first. Only for ids made here and now, whose replies can
        # only be about this message.
        replied = (
            backend.watch_replies(tid)
            if backend is not None and plan.task_id is None and plan.delay is None
            else None
        )
        try:
            if replied is None:
                await publishing
            else:
                await _confirmed_or_replied(publishing, replied)
        except Unroutable as exc:
            raise plan.unroutable(exc) from exc
        finally:
            if replied is not None:
                assert backend is not None
                backend.unwatch_replies(tid, replied)
        return AsyncResult(tid, app=self, task_name=plan.name, backend=backend, loop=loop)

    def _plan(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        *,
        queue: str | None = None,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        ignore_result: bool | None = None,
        time_limit: float | None = None,
        serializer: str | None = None,
        _task: Task | None = None,
    ) -> _Plan:
        """Everything about a send that needs no I/O: the route, the times, the options (any
        thread). Raises as :meth:`asend_task` does for a route that cannot be resolved."""
        task = _task if _task is not None else self._tasks.get(name)
        args = tuple(args) if args else ()
        kwargs = dict(kwargs) if kwargs else {}
        options: dict[str, Any] | None = None
        if (
            queue is not None
            or exchange is not None
            or exchange_type is not None
            or routing_key is not None
            or priority is not None
        ):
            options = {
                key: value
                for key, value in (
                    ("queue", queue),
                    ("exchange", exchange),
                    ("exchange_type", exchange_type),
                    ("routing_key", routing_key),
                    ("priority", priority),
                )
                if value is not None
            }
        route = self.router.route(name, args, kwargs, options=options, task=task)
        delay: float | None = None
        eta_at: datetime | None = None
        expires_at: datetime | None = None
        if countdown is not None or eta is not None or expires is not None:
            now = datetime.now(UTC)
            if countdown is not None:
                delay = float(countdown)
            elif eta is not None:
                aware = eta if eta.tzinfo is not None else eta.replace(tzinfo=UTC)
                delay = (aware - now).total_seconds()
            if delay is not None and delay <= 0:
                delay = None
            if delay is not None:
                eta_at = now + timedelta(seconds=delay)
            if isinstance(expires, datetime):
                expires_at = expires if expires.tzinfo is not None else expires.replace(tzinfo=UTC)
            elif expires is not None:
                expires_at = now + timedelta(seconds=float(expires))
        if ignore_result is None:
            ignore_result = task.ignore_result if task is not None else self.conf.task_ignore_result
        if time_limit is None and task is not None:
            time_limit = task.time_limit
        return _Plan(
            name=name,
            args=args,
            kwargs=kwargs,
            route=route,
            delay=delay,
            eta=eta_at,
            expires=expires_at,
            task_id=task_id,
            headers=headers,
            ignore_result=ignore_result,
            time_limit=time_limit,
            serializer=serializer or self.conf.task_serializer,
        )

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Sync twin of :meth:`asend_task` (same options)."""
        sent = self._send_here(name, args, kwargs, options)
        if sent is not None:
            return sent
        return self.run_sync(self.asend_task(name, args, kwargs, **options))

    def _send_here(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> AsyncResult | None:
        """:meth:`send_task` without a coroutine, when the transport can publish from a
        thread (RabbitMQ) and the private loop already declared the route and prepared the
        reply address; None to send through the loop.

        This thread writes the message onto the connection and waits for the broker's confirm
        (or, as :meth:`asend_task` does, the task's reply, whichever comes first), which the
        loop reads: run here if no other call runs it (see ``_LoopThread``). A connection lost
        before the confirm sends the message again through the loop, as a publish on the loop
        would.
        """
        loop = _SYNC.current()
        res = self._loops.get(loop) if loop is not None else None
        if res is None or res.transport is None or _SYNC.in_loop_thread():
            return None
        plan = self._plan(name, args, kwargs, **options)
        route = plan.route
        if plan.delay is not None or res.declared_routes.get(id(route)) is not route:
            return None
        transport = res.transport
        backend = None
        reply_to = None
        if not plan.ignore_result:
            backend = res.backend
            if backend is None or res.reply_from is not backend:
                return None
            reply_to = res.reply_to
        tid, envelope = plan.message(reply_to)
        wakeup = Wakeup()
        watching = (
            backend is not None and plan.task_id is None and backend.watch_replies_here(tid, wakeup)
        )
        try:
            published = transport.publish_from_thread(
                envelope,
                exchange=route.exchange.name,
                routing_key=route.routing_key,
                mandatory=True,
                wakeup=wakeup,
            )
            if published is not None:
                if not self._wait_for(wakeup, published.timeout):
                    raise published.expire()
                # Not done: the task's reply came first, which proves a worker has it.
                if not published.done or published.result() is not None:
                    return AsyncResult(tid, app=self, task_name=name, backend=backend, loop=loop)
        except Unroutable as exc:
            raise plan.unroutable(exc) from exc
        finally:
            if watching:
                assert backend is not None
                backend.unwatch_replies_here(tid, wakeup)
        # Not written, or the connection went before RabbitMQ answered: through the loop.
        return self.run_sync(self._publish_task(plan, tid, envelope, backend))

    def _task_name(self, fn: Callable[..., Any]) -> str:
        module = getattr(fn, "__module__", None) or "__main__"
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', 'task'))}"

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        ignore_result: bool | None = None,
        acks_late: bool | None = None,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        autoretry_for: Sequence[type[BaseException]] = (),
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        time_limit: float | None = None,
        bind: bool = False,
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        ignore_result: bool | None = None,
        acks_late: bool | None = None,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        autoretry_for: Sequence[type[BaseException]] = (),
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        time_limit: float | None = None,
        bind: bool = False,
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a function (plain or ``async def``) as a task; usable with or without ().

        ``name`` defaults to ``module.qualname``. Registering a second function under a name
        already taken raises ConfigurationError. See :class:`Task` for the options.
        """

        def register(func: Callable[..., Any]) -> Task:
            task_name = name or self._task_name(func)
            existing = self._tasks.get(task_name)
            if existing is not None and existing.fn is not func:
                raise ConfigurationError(
                    f"task name {task_name!r} is already registered for {existing.fn!r}; "
                    "give one of them another name="
                )
            task = Task(
                self,
                func,
                name=task_name,
                queue=queue,
                exchange=exchange,
                exchange_type=exchange_type,
                routing_key=routing_key,
                priority=priority,
                ignore_result=ignore_result,
                acks_late=acks_late,
                max_retries=max_retries,
                default_retry_delay=default_retry_delay,
                autoretry_for=autoretry_for,
                retry_backoff=retry_backoff,
                retry_backoff_max=retry_backoff_max,
                time_limit=time_limit,
                bind=bind,
            )
            self._tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register
