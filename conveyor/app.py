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
Where a transport can publish from another thread (RabbitMQ), ``send_task`` writes the message
from the calling thread once the loop has declared its route, and the loop only reads the
broker's confirm (see ``App._send_from_thread``). What a send needs before any I/O is planned by
:func:`conveyor.sending.plan`.
"""

from __future__ import annotations

import asyncio
import operator
import os
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack, overload
from urllib.parse import urlsplit

from conveyor import eager, sending
from conveyor.config import Settings
from conveyor.errors import ConfigurationError, Unroutable
from conveyor.options import NO_OPTIONS, SendArgs, SendOptions, TaskArgs, TaskOptions
from conveyor.protocol.envelope import Envelope
from conveyor.results import ResultBackend, backend_url, open_backend
from conveyor.results.async_result import AsyncResult
from conveyor.routing.entities import Broadcast, Exchange, Queue
from conveyor.routing.router import Route, Router
from conveyor.routing.settings import ROUTING_SETTING_NAMES
from conveyor.security import SigningSettings
from conveyor.settings_check import check_settings
from conveyor.sync_loop import SYNC_LOOP
from conveyor.task import Task
from conveyor.transports import Transport, open_transport
from conveyor.transports.base import Wakeup
from conveyor.unconfirmed import Unconfirmed

if TYPE_CHECKING:
    from conveyor.canvas.signatures import Signature
    from conveyor.protocol.signing import MessageSigning

__all__ = ["App", "default_broker_url"]

T = TypeVar("T")

_routing_values = operator.attrgetter(*ROUTING_SETTING_NAMES)


def default_broker_url() -> str:
    """``CONVEYOR_BROKER_URL`` if set, else the embedded broker's SQLite file in the user's
    state directory (``CONVEYOR_STATE_DIR``, else a per-user directory such as
    ``~/.local/state/conveyor``), so that every process of a user on one machine meets on it
    whatever folder it was started from.
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


async def _confirmed_or_replied(
    publishing: Coroutine[Any, Any, None], replied: asyncio.Future[None]
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
        # (exchange, routing key) that a send had confirmed on this transport: later sync sends
        # there return before their confirm (see conveyor.unconfirmed).
        self.confirmed_routes: set[tuple[str, str]] = set()
        self.unconfirmed = Unconfirmed(0)
        # What reply_from (the backend) last gave as the reply address (prepare_reply).
        self.reply_to: str | None = None
        self.reply_from: ResultBackend | None = None

    def forget_declared(self) -> None:
        """Forget what was declared and confirmed: a new transport knows none of it."""
        self.declared.clear()
        self.declared_routes.clear()
        self.confirmed_routes.clear()

    def route_declared(self, route: Route) -> bool:
        """Whether the exchange and queue of ``route`` (this very object) are declared on
        this transport."""
        return self.declared_routes.get(id(route)) is route

    def remember_declared(self, route: Route) -> None:
        """Note ``route`` as declared (a cache by identity, kept small)."""
        if len(self.declared_routes) >= 1024:
            self.declared_routes.clear()
        self.declared_routes[id(route)] = route

    def route_confirmed(self, route: Route) -> bool:
        """Whether a send to the exchange and routing key of ``route`` was confirmed on this
        transport (later sync sends there may return before their confirm)."""
        return (route.exchange.name, route.routing_key) in self.confirmed_routes

    def remember_confirmed(self, route: Route) -> None:
        """Note that a send on ``route`` was confirmed (a cache kept small)."""
        if len(self.confirmed_routes) >= 1024:
            self.confirmed_routes.clear()
        self.confirmed_routes.add((route.exchange.name, route.routing_key))

    async def close(self) -> None:
        SYNC_LOOP.forget(self)
        try:
            await self.unconfirmed.drain()
        except asyncio.CancelledError:
            self.unconfirmed.cancel()  # each is logged with its task id as it ends
            raise
        backend, transport = self.backend, self.transport
        self.backend = self.transport = self.reply_from = None
        self.forget_declared()
        try:
            if backend is not None:
                await backend.close()
        finally:
            if transport is not None:
                await transport.close()


class App:
    """A conveyor application: settings (``conf``), registered tasks and the broker they use.

    ``broker`` and ``result_backend`` are URLs (they override ``broker_url`` / ``result_backend``
    in ``config``); ``config`` is a dict, an object, a module or a module path whose settings
    are loaded into :attr:`conf`. An unknown setting name is a ConfigurationWarning naming it;
    a wrong value raises ConfigurationError (see :func:`conveyor.settings_check.check_settings`):
    here, not at the first send.
    """

    # What :meth:`task` makes; an integration may give its tasks more methods (a subclass).
    task_class: type[Task] = Task

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
        self._take_settings(config, broker, result_backend)
        self._tasks: dict[str, Task] = {}
        self._signing = SigningSettings()
        self._router: Router | None = None
        self._router_values: tuple[Any, ...] = ()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
            weakref.WeakKeyDictionary()
        )
        # The loop used last and its resources: most programs use one loop.
        self._last_resources: (
            tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopResources] | None
        ) = None
        self._check_settings()

    def _take_settings(
        self,
        config: Mapping[str, Any] | object | None,
        broker: str | None,
        result_backend: str | None,
    ) -> None:
        """Load ``config`` into :attr:`conf`, then the ``broker`` and ``result_backend`` URLs
        over it (None: not given)."""
        if config is not None:
            self.conf.update_from(config)
        if broker is not None:
            self.conf.broker_url = broker
        if result_backend is not None:
            self.conf.result_backend = result_backend

    def _check_settings(self) -> None:
        """Raise ConfigurationError for a wrong setting now; keep the Router it builds."""
        self._router = check_settings(self.conf, host=self)
        self._router_values = _routing_values(self.conf)

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'}>"

    def config_from_object(
        self, source: Mapping[str, Any] | object, *, namespace: str | None = None
    ) -> None:
        """Load settings from a dict, an object, a module or a module path such as
        ``"proj.celeryconfig"``; with ``namespace="CELERY"`` only ``CELERY_*`` names, as Celery
        (see :meth:`Settings.update_from`). Unknown names are ConfigurationWarnings;
        a wrong value raises ConfigurationError, as :class:`App` does."""
        self.conf.update_from(source, namespace=namespace)
        self._check_settings()

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
    def signing(self) -> MessageSigning | None:
        """Message signing as the ``security_*`` settings ask (None: off), rebuilt when one is
        reassigned. Raises ConfigurationError for a wrong one (see :mod:`conveyor.security`)."""
        return self._signing.get(self.conf, self.main)

    @property
    def broker_url(self) -> str:
        """``conf.broker_url``, else :func:`default_broker_url`."""
        return self.conf.broker_url or default_broker_url()

    @property
    def backend_url(self) -> str:
        """``conf.result_backend`` (Celery's bare names such as ``"rpc"`` read as URLs), else
        the default for the broker (see default_backend_url)."""
        configured = self.conf.result_backend
        return backend_url(configured) if configured else default_backend_url(self.broker_url)

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
                res.forget_declared()
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
            res.unconfirmed.raise_failure()

    async def aflush(self) -> None:
        """Wait until the broker has confirmed every send the sync API returned from early on
        this event loop (see :mod:`conveyor.unconfirmed`); raise the first that failed."""
        res = self._resources()
        await res.unconfirmed.drain()
        res.unconfirmed.raise_failure()

    def flush(self) -> None:
        """Block until the broker has confirmed every task this process sent through the sync
        API (``send_task``, ``delay``, ``apply_async`` return before the confirm once a route
        has had one); raise the first send that failed after returning (Unroutable,
        BrokerUnavailable...), logged already with its task id."""
        if SYNC_LOOP.current() is not None and not SYNC_LOOP.in_loop_thread():
            self.run_sync(self.aflush())

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
            res.remember_declared(route)
        return transport

    def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendArgs],
    ) -> Coroutine[Any, Any, AsyncResult]:
        """Send task ``name`` with ``args``/``kwargs``; its code need not exist in this process.

        ``options`` are those of :class:`~conveyor.options.SendOptions`: routing options
        override the task's attributes and ``task_routes``; ``countdown``/``eta`` delay it,
        ``expires`` revokes it if it runs late; ``headers`` travel with the message. Declares
        the exchange and queue the route names (once per connection), then publishes, and
        returns once the broker has the message: its confirm came, or (``rpc://``, an id made
        here) the task's reply came first.

        Raises ConfigurationError for an unknown option (at the call, as a wrong keyword
        would); when awaited, RoutingError for a route that cannot be resolved, Unroutable if no
        queue takes the message, ProtocolError for arguments JSON cannot hold, BrokerUnavailable.
        """
        # A plain function returning asend's coroutine: no extra coroutine on the send path.
        return self.asend(name, args, kwargs, SendOptions.of(options))

    async def asend(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: SendOptions = NO_OPTIONS,
        *,
        task: Task | None = None,
    ) -> AsyncResult:
        """:meth:`asend_task` with the options as one record; ``task`` is the registered task
        when the caller holds it (else looked up by ``name``). Raises as :meth:`asend_task`."""
        begun = self._begin(name, args, kwargs, options, task)
        if isinstance(begun, eager.EagerRun):
            return await eager.aapply_eagerly(begun)
        tid, envelope, backend = await self._prepare(begun)
        return await self._publish_task(begun, tid, envelope, backend)

    async def _prepare(self, plan: sending.Plan) -> tuple[str, Envelope, ResultBackend | None]:
        """The task id and signed message of ``plan``, and the backend its result comes back
        through (None: results ignored), the reply address prepared on this loop."""
        res = self._resources()
        backend = None
        reply_to = None
        if not plan.ignore_result:
            backend = res.backend if res.backend is not None else await self.abackend()
            reply_to = await backend.prepare_reply()
            res.reply_to, res.reply_from = reply_to, backend
        tid, envelope = self._compose(plan, reply_to)
        return tid, envelope, backend

    async def _asend_early(self, plan: sending.Plan) -> AsyncResult:
        """The sync API's send of ``plan``: :meth:`asend`, returning early (see
        :meth:`_publish_early`)."""
        tid, envelope, backend = await self._prepare(plan)
        return await self._publish_early(plan, tid, envelope, backend)

    async def _publish_early(
        self, plan: sending.Plan, tid: str, envelope: Envelope, backend: ResultBackend | None
    ) -> AsyncResult:
        """:meth:`_publish_task` for the sync API: on a route that already had a send
        confirmed on this transport, return once the publish has started, and leave it to
        :mod:`conveyor.unconfirmed` until the broker confirms it (at most
        ``task_publish_window`` at once). Raises first the oldest earlier send that failed
        after returning."""
        loop = asyncio.get_running_loop()
        res = self._resources(loop)
        unconfirmed = res.unconfirmed
        unconfirmed.raise_failure()
        unconfirmed.window = self.conf.task_publish_window
        route = plan.route
        transport = res.transport
        if transport is None or unconfirmed.window <= 0 or not res.route_confirmed(route):
            result = await self._publish_task(plan, tid, envelope, backend)
            unconfirmed.attach(res.transport)
            return result
        if not res.route_declared(route):
            # Another route object to a confirmed exchange and routing key (another task's):
            # known from now on, so that the next sends of it need not come through here.
            transport = await self._declare_route(route)
        await unconfirmed.add(plan.publish(transport, envelope), tid, plan.name)
        return plan.result(tid, self, backend, loop)

    def _compose(self, plan: sending.Plan, reply_to: str | None) -> tuple[str, Envelope]:
        """The task id and the message of ``plan``, signed when signing is on."""
        tid, envelope = plan.message(reply_to)
        if (signing := self.signing) is not None:
            envelope = signing.sign(envelope)
        return tid, envelope

    async def _publish_task(
        self, plan: sending.Plan, tid: str, envelope: Envelope, backend: ResultBackend | None
    ) -> AsyncResult:
        """Publish a composed task message (declaring its route first, once per connection)
        on the running loop; the second half of :meth:`asend`."""
        loop = asyncio.get_running_loop()
        res = self._resources(loop)
        route = plan.route
        transport = res.transport
        if transport is None or not res.route_declared(route):
            transport = await self._declare_route(route)
        publishing = plan.publish(transport, envelope)
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
        finally:
            if replied is not None:
                assert backend is not None
                backend.unwatch_replies(tid, replied)
        if res.transport is transport:
            res.remember_confirmed(route)
        return plan.result(tid, self, backend, loop)

    def _begin(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: SendOptions,
        task: Task | None,
    ) -> sending.Plan | eager.EagerRun:
        """The first step of every send, the only one given its five parts: with
        ``task_always_eager`` its run here and now (NotRegistered for a task not registered
        in this process), else its plan (RoutingError for a route that cannot be resolved),
        which the sync and async paths then carry."""
        if self.conf.task_always_eager:
            found = eager.registered(self._tasks, name, task)
            return eager.EagerRun.start(self, self.conf, found, args, kwargs, options)
        return sending.plan(
            name,
            args,
            kwargs,
            options,
            task=task if task is not None else self._tasks.get(name),
            router=self.router,
            conf=self.conf,
        )

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendArgs],
    ) -> AsyncResult:
        """Sync twin of :meth:`asend_task` (same options)."""
        return self.send(name, args, kwargs, SendOptions.of(options))

    def send(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: SendOptions = NO_OPTIONS,
        *,
        task: Task | None = None,
    ) -> AsyncResult:
        """Sync twin of :meth:`asend`."""
        begun = self._begin(name, args, kwargs, options, task)
        if isinstance(begun, eager.EagerRun):
            return eager.apply_eagerly(begun)
        sent = self._send_from_thread(begun)
        if sent is not None:
            return sent
        return self.run_sync(self._asend_early(begun))

    def _send_from_thread(self, plan: sending.Plan) -> AsyncResult | None:
        """:meth:`send` of ``plan`` without a coroutine, when the transport can publish from a
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
        unconfirmed = res.unconfirmed
        unconfirmed.raise_failure()
        route = plan.route
        if plan.delay is not None or not res.route_declared(route):
            return None
        transport = res.transport
        backend = None
        reply_to = None
        if not plan.ignore_result:
            backend = res.backend
            if backend is None or res.reply_from is not backend:
                return None
            reply_to = res.reply_to
        tid, envelope = self._compose(plan, reply_to)
        if self.conf.task_publish_window > 0 and res.route_confirmed(route):
            # Pipelined: written from here and left to the loop until confirmed, if it can be.
            unconfirmed.window = self.conf.task_publish_window
            if unconfirmed.transport is transport and (
                unconfirmed.publish_from_thread(transport, plan, tid, envelope)
                or unconfirmed.hand_over(plan, tid, envelope)
            ):
                return plan.result(tid, self, backend, loop)
            return self.run_sync(self._publish_early(plan, tid, envelope, backend))
        wakeup = Wakeup()
        watching = (
            backend is not None
            and plan.task_id is None
            and backend.watch_replies_from_thread(tid, wakeup)
        )
        try:
            published = plan.publish_from_thread(transport, envelope, wakeup)
            if published is not None:
                if not self._wait_for(wakeup, published.timeout):
                    raise published.expire()
                # Not done: the task's reply came first, which proves a worker has it.
                if not published.done or published.result() is not None:
                    return plan.result(tid, self, backend, loop)
        except Unroutable as exc:
            raise plan.unroutable(exc) from exc
        finally:
            if watching:
                assert backend is not None
                backend.unwatch_replies_from_thread(tid, wakeup)
        # Not written, or the connection went before RabbitMQ answered: through the loop.
        return self.run_sync(self._publish_early(plan, tid, envelope, backend))

    def signature(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        **options: Any,
    ) -> Signature:
        """A signature of task ``name`` sent with this App (its code need not be here);
        ``options`` are send options, ``immutable`` as for ``task.si``."""
        from conveyor.canvas.signatures import Signature

        return Signature(name, args, kwargs, options, immutable=immutable, app=self)

    def _task_name(self, fn: Callable[..., Any]) -> str:
        module = getattr(fn, "__module__", None) or "__main__"
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', 'task'))}"

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(
        self, fn: None = None, /, **options: Unpack[TaskArgs]
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self, fn: Callable[..., Any] | None = None, /, **options: Unpack[TaskArgs]
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a function (plain or ``async def``) as a task; usable with or without ().

        ``options`` are those of :class:`~conveyor.options.TaskOptions`; ``name`` defaults to
        ``module.qualname``. Raises ConfigurationError for an unknown or invalid option, and
        for a second function registered under a name already taken.
        """

        def register(func: Callable[..., Any]) -> Task:
            defined = TaskOptions.of(options, default_name=self._task_name(func))
            existing = self._tasks.get(defined.name)
            if existing is not None and existing.fn is not func:
                raise ConfigurationError(
                    f"task name {defined.name!r} is already registered for {existing.fn!r}; "
                    "give one of them another name="
                )
            task = self._tasks[defined.name] = self.task_class(self, func, defined)
            return task

        if fn is not None:
            return register(fn)
        return register
