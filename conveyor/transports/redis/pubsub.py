"""One connection in subscribe mode, shared by every subscriber of a client: :class:`PubSubHub`.

It reconnects by itself and tells subscribers when they may have missed a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import AbstractConnection

from conveyor.errors import BrokerUnavailable
from conveyor.transports.background import stop_task
from conveyor.transports.redis.client import LOST, Backoff, log
from conveyor.urls import redacted

__all__ = ["Callback", "PubSubHub"]

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
        await stop_task(reader)
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
        with contextlib.suppress(*LOST):
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
            except LOST as exc:
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
