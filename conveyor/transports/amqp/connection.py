"""One AMQP 0-9-1 connection over asyncio: the handshake, the frame reader, writes and heartbeats.

Frames are parsed straight from the receive buffer and handed to their channel without a task
per message, and everything written in one event-loop turn leaves in one socket write. A thread
may write whole frames straight to the socket when nothing is queued ahead of them, or add them
to the output the loop writes next (a loop of sends then costs one socket write per batch).

Errors: :class:`~.errors.ConnectionClosed` when the connection is gone (with RabbitMQ's reply
code and text when it closed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import ssl
import threading
import time
from typing import Any

from pamqp import commands as spec
from pamqp.base import Frame
from pamqp.header import ProtocolHeader

from conveyor.transports.amqp.channel import Channel
from conveyor.transports.amqp.codec import (
    CLASS_METHOD,
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_METHOD,
    HEAD,
    HEARTBEAT,
    method_frame,
    unmarshal,
)
from conveyor.transports.amqp.errors import AMQPError, ConnectionClosed, retrieve

__all__ = ["Connection"]

log = logging.getLogger(__name__)


class Connection(asyncio.Protocol):
    """One AMQP connection. Open with :meth:`open`; ``closed`` resolves when it ends (with
    ConnectionClosed as its exception unless we closed it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.closed: asyncio.Future[None] = loop.create_future()
        self.closed.add_done_callback(retrieve)
        self.channels: dict[int, Channel] = {}
        self.frame_max = 131072
        self.channel_max = 2047
        self.heartbeat = 0
        self.server_properties: dict[str, Any] = {}
        self.blocked = asyncio.Event()
        self.blocked.set()  # set while *not* blocked
        self._transport: asyncio.Transport | None = None
        self._fd = -1  # the socket's, for threads' writes: -1 over TLS
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flushing = False
        self._writing = False  # flush is writing outside the lock
        self._wake_due = False  # a thread gathered output and must ask the loop to flush it
        self.write_lock = threading.Lock()  # write, flush and write_from_thread
        self._lost = False  # connection_lost ran: the socket is about to close
        self._writable = asyncio.Event()
        self._writable.set()
        self._handshake: asyncio.Queue[Any] = asyncio.Queue()
        self._opened = False
        self._last_received = loop.time()
        self._last_sent = loop.time()
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._close_ok: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        vhost: str,
        user: str,
        password: str,
        heartbeat: int,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        client_name: str | None = None,
    ) -> Connection:
        """Connect, authenticate (PLAIN) and open ``vhost``.

        Raises ConnectionClosed (RabbitMQ refused: bad login, unknown vhost) or OSError.
        """
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: cls(loop),
            host,
            port,
            ssl=ssl_context,
            server_hostname=(server_hostname or host) if ssl_context else None,
        )
        try:
            await protocol._start(vhost, user, password, heartbeat, client_name)
        except BaseException:
            protocol.abort()
            raise
        return protocol

    async def _start(
        self, vhost: str, user: str, password: str, heartbeat: int, client_name: str | None
    ) -> None:
        assert self._transport is not None
        self._transport.write(ProtocolHeader().marshal())
        start = await self._handshake_frame(spec.Connection.Start)
        self.server_properties = dict(start.server_properties or {})
        properties: dict[str, Any] = {
            "product": "conveyor",
            "platform": f"Python {platform.python_version()}",
            "capabilities": {
                "authentication_failure_close": True,
                "basic.nack": True,
                "connection.blocked": True,
                "consumer_cancel_notify": True,
                "publisher_confirms": True,
            },
        }
        if client_name:
            properties["connection_name"] = client_name
        self._transport.write(
            method_frame(
                0,
                spec.Connection.StartOk(
                    client_properties=properties,
                    mechanism="PLAIN",
                    response=f"\0{user}\0{password}",
                ),
            )
        )
        tune = await self._handshake_frame(spec.Connection.Tune)
        self.channel_max = min(tune.channel_max or 2047, 2047)
        self.frame_max = tune.frame_max or 131072
        server_heartbeat = tune.heartbeat or 0
        self.heartbeat = (
            min(heartbeat, server_heartbeat) if heartbeat and server_heartbeat else heartbeat
        )
        self._transport.write(
            method_frame(
                0,
                spec.Connection.TuneOk(
                    channel_max=self.channel_max,
                    frame_max=self.frame_max,
                    heartbeat=self.heartbeat,
                ),
            )
        )
        self._transport.write(method_frame(0, spec.Connection.Open(virtual_host=vhost)))
        await self._handshake_frame(spec.Connection.OpenOk)
        self._opened = True
        if self.heartbeat:
            self._schedule_heartbeat()

    async def _handshake_frame(self, kind: type[Frame]) -> Any:
        frame = await self._handshake.get()
        if isinstance(frame, BaseException):
            raise frame
        if isinstance(frame, spec.Connection.Close):
            raise ConnectionClosed(frame.reply_code or 0, frame.reply_text or "")
        if not isinstance(frame, kind):
            raise ConnectionClosed(0, f"expected {kind.name}, got {frame!r}")
        return frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        # Threads write only to a plain TCP socket (TLS state belongs to the loop's transport).
        tls = transport.get_extra_info("sslcontext") is not None
        self._fd = sock.fileno() if sock is not None and not tls else -1

    def connection_lost(self, exc: Exception | None) -> None:
        # asyncio closes the socket right after this returns: a thread still writing to it
        # finishes first, and none starts after (see write_from_thread).
        with self.write_lock:
            self._lost = True
        reason = ConnectionClosed(0, f"connection lost: {exc!r}" if exc else "connection closed")
        self._shutdown(reason)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._last_received = self.loop.time()
        buffer = self._buffer
        if buffer:
            buffer += data
            data = bytes(buffer)  # slices of bytes are bytes: one copy per frame, not two
        pos, size = 0, len(data)
        channels = self.channels
        try:
            while size - pos >= 8:
                kind, channel, length = HEAD.unpack_from(data, pos)
                end = pos + 7 + length
                if end >= size:
                    break
                if data[end] != FRAME_END:
                    raise ConnectionClosed(501, "malformed frame from the broker")
                payload = data[pos + 7 : end]
                if kind == FRAME_METHOD:
                    self._on_method(channel, payload)
                elif kind == FRAME_HEADER:
                    target = channels.get(channel)
                    if target is not None:
                        target.on_header(payload)
                elif kind == FRAME_BODY:
                    target = channels.get(channel)
                    if target is not None:
                        target.on_body(payload)
                pos = end + 1
        except ConnectionClosed as exc:
            self._shutdown(exc)
            self.abort()
            return
        except Exception as exc:
            # A frame conveyor cannot read: the connection's state is unknown from here on.
            log.exception("cannot read a frame from RabbitMQ; closing the connection")
            self._shutdown(ConnectionClosed(501, f"cannot read a frame from the broker: {exc}"))
            self.abort()
            return
        if buffer:
            del buffer[:pos]
        elif pos < size:
            buffer += data[pos:]

    def _on_method(self, channel: int, payload: bytes) -> None:
        key = CLASS_METHOD.unpack_from(payload)
        if channel:
            target = self.channels.get(channel)
            if target is not None:
                target.on_method(key, payload)
            return
        frame = unmarshal(0, payload)
        if not self._opened:
            self._handshake.put_nowait(frame)
        elif isinstance(frame, spec.Connection.Close):
            self.write(method_frame(0, spec.Connection.CloseOk()))
            self._shutdown(ConnectionClosed(frame.reply_code or 0, frame.reply_text or ""))
            self.flush()
            if self._transport is not None:
                self._transport.close()
        elif isinstance(frame, spec.Connection.CloseOk):
            if self._close_ok is not None and not self._close_ok.done():
                self._close_ok.set_result(None)
        elif isinstance(frame, spec.Connection.Blocked):
            self.blocked.clear()
        elif isinstance(frame, spec.Connection.Unblocked):
            self.blocked.set()

    def write(self, data: bytes) -> None:
        """Send bytes: the first write of an event-loop turn goes out at once (latency), later
        ones in the same turn are gathered into one write at its end (throughput)."""
        with self.write_lock:
            self.write_locked(data)

    def write_locked(self, data: bytes) -> None:
        """:meth:`write`, with ``write_lock`` held by the caller (on the event loop)."""
        if self._flushing:
            self._out.append(data)
            return
        self._flushing = True
        self.loop.call_soon(self.flush)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self._last_sent = self.loop.time()

    def flush(self) -> None:
        """Write what was gathered (on the loop), in one write."""
        with self.write_lock:
            self._flushing = False
            if not self._out:
                return
            data = b"".join(self._out)
            self._out.clear()
            # Written outside the lock (the socket write lets threads run, and they may gather
            # meanwhile); no thread writes straight to the socket until it is done.
            self._writing = True
        try:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(data)
                self._last_sent = self.loop.time()
        finally:
            self._writing = False

    def write_from_thread(self, data: bytes, *, gather: bool = False) -> bool:
        """Send whole frames from a thread other than the event loop's.

        Only while RabbitMQ does not block publishers, the socket took everything written so
        far (nothing waits in the transport's buffer), and the connection is plain TCP (not
        TLS); otherwise nothing is written and the result is False: send through the loop
        instead. Holds the lock every write takes, so frames
        never interleave and leave in the order they were given.

        With nothing queued ahead of them and ``gather`` false, the frames go straight to the
        socket (the lowest latency: one send waiting for its answer). Otherwise (``gather``:
        more are on their way, as in a loop of pipelined sends) they join the output the loop
        writes in its next flush, one socket write for all that gathered meanwhile: a thread
        writing each message itself gives the GIL away on every write. Never waits on the
        socket: what it does not take at once goes first in the loop's next flush.
        """
        with self.write_lock:
            written = self.write_from_thread_locked(data, gather=gather)
        self.wake_from_thread()
        return written

    def write_from_thread_locked(self, data: bytes, *, gather: bool = False) -> bool:
        """:meth:`write_from_thread`, with ``write_lock`` held by the caller, who calls
        :meth:`wake_from_thread` once it has released the lock."""
        transport = self._transport
        if (
            transport is None
            or self._fd < 0
            or self._lost
            or transport.is_closing()
            or not self.blocked.is_set()
            or transport.get_write_buffer_size()
        ):
            return False
        if gather or self._out or self._writing:
            return self._gather_from_thread(data)
        try:
            sent = os.write(self._fd, data)
        except OSError:  # would block, or the connection is going (the loop will see)
            return False
        self._last_sent = time.monotonic()  # the loop's clock
        if sent < len(data):
            self._gather_from_thread(data[sent:])
        return True

    def _gather_from_thread(self, data: bytes) -> bool:
        """Queue ``data`` for the loop's next flush (the caller then calls
        :meth:`wake_from_thread`); False if the loop is closed (then nothing is queued)."""
        if self.loop.is_closed():
            return False
        self._out.append(data)
        if not self._flushing:
            self._flushing = True
            self._wake_due = True
        return True

    def wake_from_thread(self) -> None:
        """Ask the loop for the flush that output gathered from a thread waits for, if none is
        asked yet; called after ``write_lock`` is released (waking the loop is a socket write,
        and the loop's flush takes the lock)."""
        if self._wake_due:
            self._wake_due = False
            with contextlib.suppress(RuntimeError):  # a closed loop: the socket is gone
                self.loop.call_soon_threadsafe(self.flush)

    @property
    def can_write(self) -> bool:
        """True unless the socket's write buffer is full or RabbitMQ blocks publishers."""
        return self._writable.is_set() and self.blocked.is_set()

    async def writable(self) -> None:
        """Wait while the socket's write buffer is full or RabbitMQ blocks publishers."""
        if not self._writable.is_set():
            await self._writable.wait()
        if not self.blocked.is_set():
            await self.blocked.wait()

    async def drain(self) -> None:
        """Wait until everything queued so far has left the socket's write buffer."""
        self.flush()
        transport = self._transport
        while transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size() == 0:
                return
            await asyncio.sleep(0.001)

    async def channel(self, *, confirms: bool = False) -> Channel:
        """Open a new channel (with ``confirm.select`` if ``confirms``)."""
        if self.closed.done():
            raise self.closed.exception() or ConnectionClosed(0, "connection closed")
        number = next(n for n in range(1, self.channel_max + 1) if n not in self.channels)
        channel = Channel(self, number)
        self.channels[number] = channel
        try:
            await channel.open()
            if confirms:
                await channel.select_confirms()
        except BaseException:
            self.channels.pop(number, None)
            raise
        return channel

    def release(self, channel: Channel) -> None:
        """Free ``channel``'s number (the channel closed)."""
        if self.channels.get(channel.number) is channel:
            del self.channels[channel.number]

    def _schedule_heartbeat(self) -> None:
        self._heartbeat_timer = self.loop.call_later(self.heartbeat / 2, self._beat)

    def _beat(self) -> None:
        if self.closed.done():
            return
        now = self.loop.time()
        if now - self._last_received > self.heartbeat * 2.5:
            self._shutdown(
                ConnectionClosed(0, f"no heartbeat from the broker for {self.heartbeat * 2.5:g} s")
            )
            self.abort()
            return
        if now - self._last_sent >= self.heartbeat / 2:
            self.write(HEARTBEAT)
        self._schedule_heartbeat()

    def _shutdown(self, reason: ConnectionClosed) -> None:
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        if not self._opened:
            self._handshake.put_nowait(reason)
        for channel in list(self.channels.values()):
            channel.fail(reason)
        self.channels.clear()
        if not self.closed.done():
            self.closed.set_exception(reason)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        """Close gracefully (idempotent): pending writes go first, then ``connection.close``."""
        if self.closed.done():
            return
        self._close_ok = self.loop.create_future()
        self.write(
            method_frame(
                0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
            )
        )
        with contextlib.suppress(TimeoutError, AMQPError):
            await asyncio.wait_for(asyncio.shield(self._close_ok), 5)
        self._shutdown(ConnectionClosed(200, "closed by the client"))
        if self._transport is not None:
            self._transport.close()
