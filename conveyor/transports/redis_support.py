"""What the Redis transport and the Redis result backend share: clients, errors, retries, pub/sub.

- :func:`make_client` builds a redis-py asyncio client (hiredis parser) from a ``redis://`` or
  ``rediss://`` URL, raising ConfigurationError for a malformed one.
- :func:`run` calls Redis, retrying with exponential backoff while the connection is lost (the
  calls it runs must be idempotent), and maps redis-py errors to conveyor errors.
- :class:`PubSubHub` shares one subscribed connection among every subscriber of a client; it
  reconnects by itself and tells subscribers when they may have missed a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from conveyor.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    TransportError,
)
from conveyor.urls import redacted

__all__ = [
    "CLIENT_QUERY_OPTIONS",
    "Backoff",
    "PubSubHub",
    "RedisLink",
    "check_url",
    "make_client",
    "map_error",
    "redacted",
    "run",
]

log = logging.getLogger("conveyor.redis")

T = TypeVar("T")

_LOST = (rexc.ConnectionError, rexc.TimeoutError, OSError)


# Query parameters handed to redis-py; conveyor's own options are taken out before.
CLIENT_QUERY_OPTIONS = frozenset(URL_QUERY_ARGUMENT_PARSERS) - {"socket_timeout", "timeout"} | {
    "client_name",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_ciphers",
}


def check_url(url: str, *, own_options: Iterable[str] = ()) -> None:
    """Raise ConfigurationError unless ``url`` is a Redis URL redis-py reads as written.

    ``own_options`` are query parameters the caller takes out itself.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ConfigurationError(
            f"not a Redis URL: {redacted(url)!r}; write redis://host:6379/0 or rediss://..."
        )
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigurationError(
            f"bad Redis URL {redacted(url)!r}: the path names the database, a number such as "
            f"/0, not {parts.path!r}"
        )
    allowed = CLIENT_QUERY_OPTIONS | set(own_options)
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name not in allowed:
            raise ConfigurationError(
                f"unknown option {name!r} in Redis URL {redacted(url)!r}: the options are "
                f"{', '.join(sorted(allowed))}"
            )
    try:
        parse_url(url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad Redis URL {redacted(url)!r}: {exc}") from exc


def make_client(url: str, **options: Any) -> aioredis.Redis:
    """An unconnected asyncio client for ``url`` (``redis://host:port/db``, ``rediss://``).

    The client has no socket timeout of its own: redis-py enforces one with ``asyncio.wait_for``,
    which on Python 3.11 can swallow a cancellation; :func:`run` bounds each call instead.
    redis-py's own retries are limited to one immediate retry on a fresh connection (a pooled
    connection the server closed); longer outages are :func:`run`'s business.
    """
    check_url(url)
    try:
        return aioredis.Redis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=options.pop("socket_connect_timeout", 5.0),
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            **options,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad Redis URL {redacted(url)!r}: {exc}") from exc


def map_error(exc: BaseException, url: str, doing: str) -> ConveyorError:
    """The conveyor error for a redis-py error raised while ``doing`` something."""
    where = redacted(url)
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError):
        return ConfigurationError(
            f"Redis at {where} refused the credentials while {doing}: {exc}; fix the user and "
            "password in the URL"
        )
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith("WRONGTYPE"):
        return ConfigurationError(
            f"Redis at {where} holds keys of another program where conveyor keeps its own "
            f"({exc}); use another database or set the key prefix option"
        )
    if isinstance(exc, _LOST):
        return BrokerUnavailable(
            f"cannot reach Redis at {where} while {doing}: {exc}; check that Redis is running "
            "and the URL is right"
        )
    return TransportError(f"Redis at {where} failed while {doing}: {exc}")


class Backoff:
    """Exponential backoff with full jitter, from ``base`` up to ``cap`` seconds."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        """The next delay to sleep."""
        delay = min(self.cap, self.base * 2**self.attempts)
        self.attempts += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        """Start again from ``base``."""
        self.attempts = 0


async def run(
    call: Callable[[], Awaitable[T]],
    *,
    url: str,
    doing: str,
    patience: float,
    timeout: float | None = 10.0,
) -> T:
    """Await ``call()``, retrying with backoff for up to ``patience`` seconds of lost connection.

    Each attempt may take ``timeout`` seconds (None: ``call`` bounds itself, as
    :class:`RedisLink` calls do) before the connection counts as lost. ``call``
    must be safe to repeat: a lost reply does not say whether Redis ran the command. Raises
    BrokerUnavailable when Redis stays unreachable, ConfigurationError for refused credentials
    or foreign keys, TransportError for any other Redis error.
    """
    backoff: Backoff | None = None
    give_up = 0.0
    while True:
        try:
            if timeout is None:
                return await call()
            try:
                async with asyncio.timeout(timeout):
                    return await call()
            except TimeoutError as exc:
                raise rexc.TimeoutError(f"no answer within {timeout} s") from exc
        except (rexc.AuthenticationError, rexc.AuthorizationError) as exc:
            raise map_error(exc, url, doing) from exc
        except _LOST as exc:
            now = time.monotonic()
            if backoff is None:
                backoff = Backoff()
                give_up = now + patience
                log.warning(
                    "lost Redis at %s while %s (%s); reconnecting", redacted(url), doing, exc
                )
            if now >= give_up:
                raise map_error(exc, url, doing) from exc
            await asyncio.sleep(min(backoff.next(), max(0.0, give_up - now)))
        except rexc.RedisError as exc:
            raise map_error(exc, url, doing) from exc


class RedisLink:
    """One connection with commands pipelined on it, shared by every caller of an event loop.

    Each call writes its command at once and gets the reply matched to it in order, so
    concurrent callers share one socket with no pool and no lock (redis-py's client spends more
    on its pool and wrappers than Redis spends on the command). A reply that does not come
    within ``timeout`` seconds, or a lost connection, fails every pending call with a
    redis-py connection error (for :func:`run` to retry) and the next call reconnects.
    """

    def __init__(self, client: aioredis.Redis, *, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._conn: AbstractConnection | None = None
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[AbstractConnection] | None = None
        self._shas: dict[str, str] = {}
        self._closed = False

    async def _connection(self) -> AbstractConnection:
        conn = self._conn
        if conn is not None and conn.is_connected:
            return conn
        if self._closed:
            raise rexc.ConnectionError("the connection to Redis was closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> AbstractConnection:
        try:
            pool = self._client.connection_pool
            conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            waiters: deque[asyncio.Future[Any]] = deque()
            self._conn, self._waiters = conn, waiters
            self._reader = asyncio.get_running_loop().create_task(
                self._read(conn, waiters), name="conveyor-redis-link"
            )
            return conn
        finally:
            self._connecting = None

    async def _read(self, conn: AbstractConnection, waiters: deque[asyncio.Future[Any]]) -> None:
        error: BaseException = rexc.ConnectionError("the connection to Redis was closed")
        try:
            while True:
                try:
                    reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                except rexc.ResponseError as exc:
                    if waiters:
                        fut = waiters.popleft()
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if waiters:
                    fut = waiters.popleft()
                    if not fut.done():
                        fut.set_result(reply)
        except (*_LOST, rexc.RedisError) as exc:
            error = exc if isinstance(exc, _LOST) else rexc.ConnectionError(str(exc))
        finally:
            self._drop(conn, waiters, error)

    def _drop(
        self, conn: AbstractConnection, waiters: deque[asyncio.Future[Any]], error: BaseException
    ) -> None:
        """Close ``conn`` and fail the calls waiting on it (idempotent)."""
        if self._conn is conn:
            self._conn = None
            reader, self._reader = self._reader, None
            if reader is not None and reader is not asyncio.current_task():
                reader.cancel()
        conn._close()  # type: ignore[no-untyped-call]
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_exception(rexc.ConnectionError(str(error) or type(error).__name__))

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (ResponseError for an error reply)."""
        conn = await self._connection()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        waiters.append(fut)
        writer = conn._writer
        if writer is None:
            self._drop(conn, waiters, rexc.ConnectionError("connection lost while sending"))
        else:
            writer.writelines(conn.pack_command(*args))
        try:
            async with asyncio.timeout(self._timeout):
                return await fut
        except TimeoutError:
            error = rexc.TimeoutError(f"no reply from Redis within {self._timeout} s")
            self._drop(conn, waiters, error)
            raise error from None

    async def run_script(self, source: str, args: Sequence[Any]) -> Any:
        """EVALSHA ``source`` (loading it on first use or after a SCRIPT FLUSH) with ``args``."""
        sha = self._shas.get(source)
        if sha is not None:
            try:
                return await self.execute("EVALSHA", sha, 0, *args)
            except rexc.NoScriptError:
                pass
        sha = await self.execute("SCRIPT", "LOAD", source)
        self._shas[source] = sha.decode() if isinstance(sha, bytes) else str(sha)
        return await self.execute("EVALSHA", self._shas[source], 0, *args)

    async def close(self) -> None:
        """Disconnect; pending calls fail (idempotent)."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            self._drop(conn, self._waiters, rexc.ConnectionError("the Redis link was closed"))


Callback = Callable[[bytes | None], None]

_UNSUBSCRIBE_DELAY = 0.05


# hiredis 3.2 and later tell RESP3 pushes from replies; without that, only subscribe.
_PUSH: type | None = getattr(hiredis, "PushNotification", None)


def _resp3(conn: AbstractConnection) -> bool:
    return _PUSH is not None and str(getattr(conn, "protocol", "2")) == "3"


def _is_push(conn: AbstractConnection, reply: Any) -> bool:
    # RESP3 marks pub/sub messages as pushes; on RESP2 everything the connection reads is one
    return not _resp3(conn) or (_PUSH is not None and isinstance(reply, _PUSH))


class PubSubHub:
    """One connection in subscribe mode, shared by every subscriber of a client.

    ``callback(data)`` runs (on the event loop, synchronously) for each message on a channel it
    subscribed; ``callback(None)`` after the subscription was (re)established, when messages
    may have been missed. The hub reconnects with backoff and subscribes again by itself, so a
    subscriber never has to. On RESP3 (redis-py's default) the connection also runs commands
    between its messages: :meth:`subscribe_then` subscribes and reads in one round trip.
    """

    def __init__(self, client: aioredis.Redis, *, url: str, ping_every: float = 15.0) -> None:
        self._client = client
        self._url = url
        self._ping_every = ping_every
        self._subscribers: dict[bytes, dict[int, Callback]] = {}
        self._active: set[bytes] = set()
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        self._conn: AbstractConnection | None = None
        self._live: AbstractConnection | None = None  # connected and subscribed to everything
        self._sending: set[asyncio.Task[None]] = set()
        self._leaving: set[bytes] = set()
        self._leave_timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._replies: deque[asyncio.Future[Any]] = deque()
        self._closed = False
        self._next_id = 0

    async def subscribe(self, channel: bytes, callback: Callback) -> int:
        """Subscribe ``callback`` to ``channel``; return once Redis confirmed the subscription.

        Returns an id for :meth:`unsubscribe`. Waits through a lost connection (the hub
        reconnects); raises BrokerUnavailable only if the hub was closed.
        """
        if self._closed:
            raise BrokerUnavailable(f"the Redis subscriber for {redacted(self._url)} is closed")
        self._next_id += 1
        sid = self._next_id
        subs = self._subscribers.setdefault(channel, {})
        first = not subs
        subs[sid] = callback
        if channel in self._active:
            return sid
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(fut)
        self._ensure_reader()
        if first and self._live is not None:
            await self._send_quietly(self._live, "SUBSCRIBE", channel)
        try:
            await fut
        except BaseException:
            waiting = self._confirmations.get(channel, [])
            if fut in waiting:
                waiting.remove(fut)
            if not waiting:
                self._confirmations.pop(channel, None)
            self.unsubscribe(channel, sid)
            raise
        return sid

    async def subscribe_then(
        self, channel: bytes, callback: Callback, *commands: Sequence[Any]
    ) -> tuple[int, list[Any]]:
        """Subscribe ``callback`` to ``channel`` and run ``commands`` right after on the same
        connection: they see everything stored before the subscription took effect, and the
        subscription everything after. Returns the subscriber id and the commands' replies.

        Raises redis-py's ConnectionError, having subscribed nothing, when there is no live
        RESP3 connection or it is lost before the replies come: use :meth:`subscribe` and run
        the commands elsewhere then.
        """
        conn = self._live
        if conn is None or conn._writer is None or not _resp3(conn) or self._closed:
            raise rexc.ConnectionError("the subscriber connection cannot run commands now")
        self._next_id += 1
        sid = self._next_id
        subs = self._subscribers.setdefault(channel, {})
        first = not subs
        subs[sid] = callback
        self._leaving.discard(channel)
        loop = asyncio.get_running_loop()
        replies = [loop.create_future() for _ in commands]
        self._replies.extend(replies)
        batch = [("SUBSCRIBE", channel)] if first and channel not in self._active else []
        conn._writer.writelines(conn.pack_commands([*batch, *commands]))
        try:
            return sid, [await reply for reply in replies]
        except BaseException:
            self.unsubscribe(channel, sid)
            raise

    def unsubscribe(self, channel: bytes, sid: int) -> None:
        """Stop calling subscriber ``sid`` of ``channel`` (idempotent)."""
        subs = self._subscribers.get(channel)
        if subs is None or subs.pop(sid, None) is None or subs:
            return
        del self._subscribers[channel]
        self._active.discard(channel)
        # Unsubscribing is batched: one command for many channels, off the callers' path.
        self._leaving.add(channel)
        if self._leave_timer is None:
            self._leave_timer = asyncio.get_running_loop().call_later(
                _UNSUBSCRIBE_DELAY, self._unsubscribe_leaving
            )

    def _unsubscribe_leaving(self) -> None:
        self._leave_timer = None
        channels = [c for c in self._leaving if c not in self._subscribers]
        self._leaving.clear()
        if channels and self._live is not None:
            task = asyncio.get_running_loop().create_task(
                self._send_quietly(self._live, "UNSUBSCRIBE", *channels)
            )
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Disconnect and stop; pending subscriptions fail with BrokerUnavailable."""
        self._closed = True
        self._live = None
        if self._leave_timer is not None:
            self._leave_timer.cancel()
            self._leave_timer = None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_replies(BrokerUnavailable("the Redis subscriber closed"))
        if self._conn is not None:
            await self._conn.disconnect(nowait=True)
            self._conn = None
        for futures in self._confirmations.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(
                        BrokerUnavailable(f"the Redis subscriber for {redacted(self._url)} closed")
                    )
        self._confirmations.clear()
        self._subscribers.clear()
        self._active.clear()

    async def _send_quietly(self, conn: AbstractConnection, *args: Any) -> None:
        # redis-py reconnects a closed connection to send on it: never do that to a stale one
        if self._closed or conn is not self._live or not conn.is_connected:
            return
        with contextlib.suppress(*_LOST):
            await conn.send_command(*args)

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(
                self._read_forever(), name="conveyor-redis-pubsub"
            )

    def _notify_all(self) -> None:
        for subs in list(self._subscribers.values()):
            for callback in list(subs.values()):
                callback(None)

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel, data = reply[0], reply[1], reply[2]
        if kind == b"message":
            for callback in list(self._subscribers.get(channel, {}).values()):
                callback(data)
        elif kind == b"subscribe" and channel in self._subscribers:
            self._active.add(channel)
            for fut in self._confirmations.pop(channel, []):
                if not fut.done():
                    fut.set_result(None)
            for callback in list(self._subscribers[channel].values()):
                callback(None)

    @staticmethod
    def _settle(fut: asyncio.Future[Any], reply: Any) -> None:
        if fut.done():
            return
        if isinstance(reply, BaseException):
            fut.set_exception(reply)
        else:
            fut.set_result(reply)

    def _fail_replies(self, error: BaseException) -> None:
        while self._replies:
            fut = self._replies.popleft()
            if not fut.done():
                fut.set_exception(rexc.ConnectionError(str(error) or type(error).__name__))

    async def _read_forever(self) -> None:
        backoff = Backoff()
        reconnecting = False
        pinged = False
        while not self._closed:
            conn = self._conn
            try:
                if conn is None or not conn.is_connected:
                    conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                    self._conn = conn
                    self._active.clear()
                    await conn.connect()
                    sent = list(self._subscribers)
                    if sent:
                        await conn.send_command("SUBSCRIBE", *sent)
                    self._live = conn
                    late = [c for c in self._subscribers if c not in sent]
                    if late:
                        await conn.send_command("SUBSCRIBE", *late)
                    if reconnecting:
                        log.info("reconnected to Redis at %s", redacted(self._url))
                        reconnecting = False
                try:
                    async with asyncio.timeout(self._ping_every):
                        reply = await conn.read_response(
                            timeout=math.inf, push_request=True, disconnect_on_error=False
                        )
                except TimeoutError:
                    if pinged:
                        raise rexc.TimeoutError(
                            "no answer to PING on the subscriber connection"
                        ) from None
                    self._replies.append(asyncio.get_running_loop().create_future())
                    await conn.send_command("PING")
                    pinged = True
                    continue
                except rexc.ResponseError as exc:
                    if self._replies:
                        self._settle(self._replies.popleft(), exc)
                    continue
                pinged = False
                if _is_push(conn, reply):
                    self._handle(reply)
                elif self._replies:
                    self._settle(self._replies.popleft(), reply)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except _LOST as exc:
                self._live = None
                pinged = False
                self._fail_replies(exc)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                self._conn = None
                self._active.clear()
                if not reconnecting:
                    log.warning(
                        "lost the Redis subscriber connection to %s (%s); reconnecting",
                        redacted(self._url),
                        exc,
                    )
                    reconnecting = True
                self._notify_all()
                await asyncio.sleep(backoff.next())
            except rexc.RedisError as exc:
                log.warning("Redis subscriber error from %s: %s", redacted(self._url), exc)
                await asyncio.sleep(backoff.next())
