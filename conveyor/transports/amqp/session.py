"""The supervised connection to RabbitMQ: connect, reconnect, restore what was declared, retry.

One connection. Declarations, deletes and stats go over the ``COMMAND`` channel; ``basic.get``
over the ``GET`` channel (so a failed declaration never requeues a message someone holds);
publishes over the ``PUBLISH`` channel, in confirm mode; replies to direct reply-to addresses
over the ``REPLY`` channel, without confirms (RabbitMQ stores nothing for them). A shared channel
that RabbitMQ closes after an error is opened again on next use; each consumer has its own.

Heartbeats detect a dead peer; when the connection is lost the session reconnects with
exponential backoff and jitter, declares again every exchange, queue and binding it was told
to remember, and resubscribes every consumer. Deliveries of the lost connection are dropped
locally (RabbitMQ requeues them) and settling them is a no-op. Calls wait for the connection,
up to ``reconnect_timeout`` seconds, and try again (:meth:`Session.retrying`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.errors import BrokerUnavailable, ConveyorError
from conveyor.transports.amqp.acks import AckingChannel
from conveyor.transports.amqp.channel import Channel
from conveyor.transports.amqp.connection import Connection
from conveyor.transports.amqp.errors import being_cancelled, failure, unavailable
from conveyor.transports.amqp.options import Address, Options

if TYPE_CHECKING:
    from conveyor.transports.amqp.consumer import AMQPConsumer

__all__ = ["ChannelRole", "Session"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_RECONNECT_BASE_DELAY = 0.2
_RETRY_DELAY = 0.01
# Set while the supervisor restores topology on a new connection, which is not "ready" yet.
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("_RESTORING", default=False)


class ChannelRole(enum.StrEnum):
    """What a shared channel carries (a str enum: it keys a dict on the publish path)."""

    COMMAND = "command"
    GET = "get"
    PUBLISH = "publish"
    REPLY = "reply"


class Session:
    """One supervised connection, its channels, and what to restore after a reconnect.

    Public state the transport's parts share: ``channels`` (every open channel by serial),
    ``consumers`` (by tag, resubscribed after a reconnect), ``known_exchanges`` (known to exist
    since the connection opened), ``closed`` (closed for good) and ``last_error``.
    """

    def __init__(self, address: Address, options: Options) -> None:
        self.address = address
        self.options = options
        self.connection: Connection | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the one it connected on
        self.closed = False
        self.last_error: BaseException | None = None
        self.channels: dict[int, AckingChannel] = {}
        self.consumers: dict[str, AMQPConsumer] = {}
        self.known_exchanges: set[str] = set()
        self.topology: dict[tuple[Any, ...], Callable[[], Awaitable[Any]]] = {}
        self.shared: dict[ChannelRole, AckingChannel] = {}
        self._shared_locks: dict[ChannelRole, asyncio.Lock] = {}
        self._ready = asyncio.Event()
        self._opened = False
        self._supervisor: asyncio.Task[None] | None = None
        self._serials = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        """Open the connection (idempotent); BrokerUnavailable if RabbitMQ can't be reached."""
        if self.closed:
            raise BrokerUnavailable("this transport was closed; open a new one")
        if self._opened:
            return
        try:
            self.connection = await self._open_connection()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise unavailable(self.address.display, exc) from exc
        self._opened = True
        self._ready.set()
        self.loop = asyncio.get_running_loop()
        self._supervisor = self.loop.create_task(self._supervise())

    async def _open_connection(self) -> Connection:
        address = self.address
        async with asyncio.timeout(self.options.connect_timeout):
            return await Connection.open(
                address.host,
                address.port,
                vhost=address.vhost,
                user=address.user,
                password=address.password,
                heartbeat=self.options.heartbeat,
                ssl_context=self.options.ssl_context,
                server_hostname=address.server_hostname,
                client_name=self.options.client_name,
            )

    async def _supervise(self) -> None:
        while not self.closed:
            connection = self.connection
            assert connection is not None
            try:
                await asyncio.shield(connection.closed)
            except asyncio.CancelledError:
                if being_cancelled():
                    raise
            except Exception as exc:
                self.last_error = exc
            if self.closed:
                return
            log.warning(
                "lost the connection to RabbitMQ at %s (%r); reconnecting",
                self.address.display,
                self.last_error,
            )
            self._connection_lost()
            await self._reconnect()

    def _connection_lost(self) -> None:
        self._ready.clear()
        for task in list(self._tasks):
            # Resubscribing after a channel error: the supervisor resubscribes every consumer
            # now, and one still waiting would hold its consumer's lock against it.
            task.cancel()
        self.channels.clear()
        self.shared.clear()
        self.known_exchanges.clear()
        for consumer in list(self.consumers.values()):
            consumer.channel_lost()

    async def _reconnect(self) -> None:
        attempt = 0
        while not self.closed:
            delay = min(self.options.reconnect_max_delay, _RECONNECT_BASE_DELAY * 2**attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            attempt += 1
            try:
                reconnected = await self._reopen()
            except asyncio.CancelledError:
                if being_cancelled():
                    raise
                continue
            if reconnected:
                log.warning("reconnected to RabbitMQ at %s", self.address.display)
                self._ready.set()
                return

    async def _reopen(self) -> bool:
        """Open a new connection and restore onto it; False if it must be tried again."""
        try:
            self.connection = await self._open_connection()
        except Exception as exc:
            self.last_error = exc
            log.info("RabbitMQ at %s is still unreachable: %r", self.address.display, exc)
            return False
        token = _RESTORING.set(True)
        try:
            await self._restore()
        except Exception as exc:
            self.last_error = exc
            log.warning("could not restore the topology on RabbitMQ: %r", exc)
            return not self.connection.closed.done()
        finally:
            _RESTORING.reset(token)
        return True

    async def _restore(self) -> None:
        """Declare again what was remembered, then resubscribe every consumer."""
        for key, declare in list(self.topology.items()):
            try:
                await declare()
            except BrokerUnavailable:
                raise
            except ConveyorError as exc:
                log.error("could not declare %s again after reconnecting: %s", key, exc)
        for consumer in list(self.consumers.values()):
            await consumer.resubscribe()

    async def close(self) -> None:
        """End every consumer, send pending acks, and close the connection (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        for task in list(self._tasks):
            task.cancel()
        for consumer in list(self.consumers.values()):
            consumer.abandon()
        self.consumers.clear()
        for channel in list(self.channels.values()):
            channel.send_pending()  # written before connection.close, which RabbitMQ reads after
        self.channels.clear()
        self.shared.clear()
        connection, self.connection = self.connection, None
        self._ready.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def connected(self, deadline: float) -> Connection:
        """The open connection, waited for until the loop time ``deadline`` after a loss.

        Raises BrokerUnavailable when closed, not connected yet, or still lost at ``deadline``.
        """
        if self.closed:
            raise BrokerUnavailable("this transport is closed; open a new one")
        if not self._opened:
            raise BrokerUnavailable("the transport is not connected: call connect() first")
        if _RESTORING.get():
            if self.connection is None or self.connection.closed.done():
                raise unavailable(self.address.display, self.last_error)
            return self.connection
        while True:
            connection = self.connection
            if connection is not None and connection.closed.done():
                # Lost, and the supervisor has not run yet (it sets this again once
                # reconnected): wait for it rather than retry on the dead connection.
                self._ready.clear()
            if self._ready.is_set():
                assert connection is not None
                return connection
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    await self._ready.wait()
            except TimeoutError:
                raise BrokerUnavailable(
                    f"RabbitMQ at {self.address.display} has been unreachable for "
                    f"{self.options.reconnect_timeout:g} s (last error: {self.last_error!r}); "
                    "check that it is running"
                ) from None
            if self.closed:
                raise BrokerUnavailable("this transport is closed; open a new one")

    def spawn(self, coroutine: Awaitable[None]) -> None:
        """Run ``coroutine`` in the background (logged if it fails, cancelled on a loss)."""

        async def guarded() -> None:
            try:
                await coroutine
            except Exception:
                log.warning("background work on RabbitMQ failed", exc_info=True)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def deadline(self) -> float:
        """The loop time until which a call starting now waits for a lost connection."""
        return asyncio.get_running_loop().time() + self.options.reconnect_timeout

    def _register(self, raw: Channel, owner: AMQPConsumer | None) -> AckingChannel:
        channel = AckingChannel(next(self._serials), raw, owner)
        self.channels[channel.serial] = channel
        raw.closed.add_done_callback(lambda _: self.channels.pop(channel.serial, None))
        return channel

    async def open_channel(self, owner: AMQPConsumer) -> AckingChannel:
        """A new channel of ``owner``'s own (no confirms)."""
        connection = await self.connected(self.deadline())
        return self._register(await connection.channel(confirms=False), owner)

    async def shared_channel(
        self, role: ChannelRole, deadline: float | None = None
    ) -> AckingChannel:
        """The open shared channel for ``role``, opened (again) if needed. Only ``PUBLISH`` is in
        confirm mode: ``REPLY`` carries replies to direct reply-to addresses, which RabbitMQ does
        not store (a confirm would say nothing)."""
        deadline = deadline or self.deadline()
        while True:
            channel = self.shared.get(role)
            if channel is not None and channel.alive:
                return channel
            # Wait for the connection outside the lock: the supervisor needs channels to restore.
            connection = await self.connected(deadline)
            async with self._shared_locks.setdefault(role, asyncio.Lock()):
                channel = self.shared.get(role)
                if channel is not None and channel.alive:
                    return channel
                if connection is not self.connection or connection.closed.done():
                    continue
                raw = await connection.channel(confirms=role is ChannelRole.PUBLISH)
                channel = self._register(raw, owner=None)
                self.shared[role] = channel
                return channel

    async def retrying(self, what: str, attempt: Callable[[float], Awaitable[T]]) -> T:
        """``await attempt(deadline)`` until it succeeds, trying again while the channel or
        connection goes away under it, until ``reconnect_timeout`` has passed.

        Raises what :func:`~.errors.failure` makes of an error (a conveyor error naming
        ``what``), or BrokerUnavailable once the deadline has passed.
        """
        deadline = self.deadline()
        while True:
            try:
                return await attempt(deadline)
            except BaseException as exc:
                await self.recover(exc, what, deadline)

    async def recover(self, exc: BaseException, what: str, deadline: float) -> None:
        """After ``exc`` failed an attempt at ``what``: raise the error to report, or wait to try
        again (:meth:`retry_after`). For loops that cannot afford :meth:`retrying`'s layer."""
        error = failure(exc, what)
        if error is exc:
            raise exc
        if error is not None:
            raise error from exc
        await self.retry_after(exc, deadline)

    async def retry_after(self, exc: BaseException, deadline: float) -> None:
        """Wait a moment before trying again after ``exc``; BrokerUnavailable past ``deadline``."""
        if not isinstance(exc, asyncio.CancelledError):
            self.last_error = exc
        if asyncio.get_running_loop().time() >= deadline:
            raise unavailable(self.address.display, self.last_error)
        await asyncio.sleep(_RETRY_DELAY)

    async def call(
        self, role: ChannelRole, what: str, operation: Callable[[Channel], Awaitable[T]]
    ) -> T:
        """Run ``operation`` on the shared channel for ``role`` (see :meth:`retrying`)."""

        async def attempt(deadline: float) -> T:
            channel = await self.shared_channel(role, deadline)
            return await operation(channel.raw)

        return await self.retrying(what, attempt)

    def remember(self, key: tuple[Any, ...], declare: Callable[[], Awaitable[Any]]) -> None:
        """Run ``declare`` again after every reconnect (``key`` names it; one per key)."""
        self.topology[key] = declare

    def forget(self, kind: str, name: str) -> None:
        """Stop restoring the ``kind`` ("exchange" or "queue") ``name`` and its queue bindings."""
        self.topology.pop((kind, name), None)
        field = 2 if kind == "exchange" else 1  # ("binding", queue, exchange, key, arguments)
        for key in [k for k in self.topology if k[0] == "binding" and k[field] == name]:
            del self.topology[key]

    def send_pending(self) -> None:
        """Put every queued ack and nack on the wire before a call that should see them."""
        for channel in list(self.channels.values()):
            if channel.acks or channel.nacks:
                channel.send_pending()

    def unacked(self, queue: str) -> int:
        """How many deliveries from ``queue`` this connection holds unsettled."""
        return sum(
            1
            for channel in self.channels.values()
            for tag, held in channel.unsettled.items()
            if held == queue and tag not in channel.acks
        )
