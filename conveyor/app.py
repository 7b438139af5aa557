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
no other call is running it, in a background thread between calls (:mod:`conveyor.sync_loop`).
Where a transport can publish from another thread (RabbitMQ), ``send_task`` writes the message from
the calling thread once the loop has declared its route, and the loop only reads the broker's
confirm (see ``App._send_here``).
"""

from __future__ import annotations

import asyncio
import operator
import os
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

from conveyor.config import Settings
from conveyor.errors import ConfigurationError, Unroutable
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.task_message import TaskMessage, encode_task
from conveyor.results import ResultBackend, open_backend
from conveyor.results.async_result import AsyncResult
from conveyor.routing.entities import Broadcast, Exchange, Queue
from conveyor.routing.router import Route, Router
from conveyor.routing.settings import ROUTING_SETTING_NAMES
from conveyor.sync_loop import SYNC_LOOP
from conveyor.task import Task, current_request
from conveyor.task_ids import new_task_id
from conveyor.transports import Transport, open_transport
from conveyor.transports.base import Wakeup

__all__ = ["App", "default_broker_url"]

T = TypeVar("T")

_routing_values = operator.attrgetter(*ROUTING_SETTING_NAMES)


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
        SYNC_LOOP.forget(self)
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
        # Holding the values (not their ids) means a replaced one is never mistaken for the old.
        values = _routing_values(self.conf)
        router = self._router
        if router is None or not all(map(operator.is_, values, self._router_values)):
            router = self._router = Router(self.conf.routing_settings())
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
        return SYNC_LOOP.wait_for(wakeup, timeout)

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the private event loop and return its result (the sync facade)."""
        if SYNC_LOOP.in_loop_thread():
            coro.close()  # never run: the call below refuses
        return SYNC_LOOP.run(lambda: coro)

    def _resources(self, loop: asyncio.AbstractEventLoop | None = None) -> _LoopResources:
        if loop is None:
            loop = asyncio.get_running_loop()
        last = self._last_resources
        if last is not None and last[0]() is loop:
            return last[1]
        res = self._loops.get(loop)
        if res is None:
            res = self._loops[loop] = _LoopResources()
            if loop is SYNC_LOOP.current():
                SYNC_LOOP.close_at_exit(res)
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
        if SYNC_LOOP.current() is not None and not SYNC_LOOP.in_loop_thread():
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
        loop reads: run here if no other call runs it (see :mod:`conveyor.sync_loop`). A
        connection lost before the confirm sends the message again through the loop, as a
        publish on the loop would.
        """
        loop = SYNC_LOOP.current()
        res = self._loops.get(loop) if loop is not None else None
        if res is None or res.transport is None or SYNC_LOOP.in_loop_thread():
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
