"""Publishing to RabbitMQ with confirms, pipelined; and what a thread's publish waits on.

Every publish goes over the session's ``PUBLISH`` channel in confirm mode and waits for its own
confirm while many are in flight. Every publish is sent ``mandatory``, so an unroutable message
comes back: it counts 0 (or raises Unroutable when the caller asked for ``mandatory``), and 1
when RabbitMQ routed it; RabbitMQ does not say to how many queues, so 1 means "one or more".
Returns are matched to their publish by message id. Replies to direct reply-to addresses go
on the ``REPLY`` channel without ``mandatory`` (RabbitMQ returns such a message even when it
delivered it) and are done once written. A thread's publish (``publish_from_thread``, written
in the transport itself so that the thread's path stays one call deep) gets a
:class:`ThreadPublished`, or :data:`WRITTEN` for a reply.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import Mapping
from typing import Any

from conveyor.errors import NotFound
from conveyor.protocol.envelope import Envelope
from conveyor.transports.amqp.channel import ThreadConfirm
from conveyor.transports.amqp.codec import encode_properties, message_frames
from conveyor.transports.amqp.errors import (
    Nacked,
    is_channel_error,
    nacked,
    reply_text,
    retrieve,
    unconfirmed,
    unroutable,
)
from conveyor.transports.amqp.session import ChannelRole, Session
from conveyor.transports.base import Outgoing, Published

__all__ = ["DIRECT_REPLY_TO", "REPLY_PREFIX", "WRITTEN", "Publisher", "ThreadPublished", "Written"]

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_PREFIX = DIRECT_REPLY_TO + "."
_NO_EXCHANGE = re.compile(r"no exchange '(.*)' in vhost")


class Publisher:
    """Publishes encoded messages over a session's shared channels (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._options = session.options
        # Message ids for publishes that carry none (returns are matched by id): unique, cheap.
        self._message_ids_prefix = f"{uuid.uuid4().hex}."
        self._message_ids = itertools.count(1)

    def message_id(self, envelope: Envelope) -> str:
        """The envelope's own id, or a new one from this publisher's counter (any thread)."""
        return envelope.message_id or f"{self._message_ids_prefix}{next(self._message_ids)}"

    async def publish(
        self,
        envelope: Envelope,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        headers: Mapping[str, Any] | None,
        *,
        target: tuple[str, str] | None = None,
    ) -> int:
        """Publish ``envelope`` (with ``headers`` instead of its own, if given) and wait for its
        confirm: 1 if routed, 0 if returned, Unroutable if returned and ``mandatory`` (naming
        ``target``, the exchange and routing key it was meant for, if not these).

        Raises NotFound for a missing exchange, TransportError if RabbitMQ refuses or does not
        confirm in ``confirm_timeout``, BrokerUnavailable past ``reconnect_timeout``.
        """
        session = self._session
        message_id = self.message_id(envelope)
        flags, properties = encode_properties(
            envelope, envelope.headers if headers is None else headers, message_id
        )
        # RabbitMQ returns a mandatory message to a direct reply-to address even when it
        # delivers it, so replies go without mandatory (and count as routed).
        reply = not exchange and routing_key.startswith(REPLY_PREFIX)
        loop = session.loop or asyncio.get_running_loop()
        deadline = loop.time() + self._options.reconnect_timeout
        retried = False
        while True:
            channel = await session.shared_channel(
                ChannelRole.REPLY if reply else ChannelRole.PUBLISH, deadline
            )
            raw = channel.raw
            connection = raw.connection
            confirm_by = loop.time() + self._options.confirm_timeout
            try:
                if raw.in_flight(message_id) is not None or not connection.can_write:
                    async with asyncio.timeout_at(confirm_by):
                        # Returns are matched by message id: never two with one id in flight.
                        while (waiting := raw.in_flight(message_id)) is not None:
                            await asyncio.wait([waiting])
                        await connection.writable()
                frames = message_frames(
                    raw.number,
                    connection.frame_max - 8,
                    exchange,
                    routing_key,
                    not reply,
                    properties,
                    flags,
                    envelope.body,
                )
                confirmed = raw.publish(frames, message_id, confirm_by)
                if reply:
                    # Direct reply-to stores nothing: RabbitMQ passes the message to the
                    # caller's connection or drops it, so it goes on a channel without
                    # confirms. Anything written after this on the connection (the task's
                    # ack) reaches RabbitMQ after it, which is all a reply needs.
                    confirmed.add_done_callback(retrieve)
                    return 1
                if await confirmed:
                    return 1
                break
            except Nacked as exc:
                raise nacked(exchange) from exc
            except TimeoutError:
                raise unconfirmed(self._options.confirm_timeout) from None
            except BaseException as exc:
                if is_channel_error(exc):
                    self._check_exchange(exc, exchange)
                    if not retried:
                        retried = True  # another publish broke the shared channel: try once more
                        await session.retry_after(exc, deadline)
                        continue
                await session.recover(exc, f"publishing to {exchange!r}", deadline)
        if not mandatory:
            return 0
        raise unroutable(*(target or (exchange, routing_key)))

    def _check_exchange(self, exc: BaseException, exchange: str) -> None:
        """Raise NotFound if ``exc`` says that ``exchange`` does not exist (any more)."""
        missing = _NO_EXCHANGE.search(reply_text(exc))
        if missing and missing.group(1) == exchange:
            self._session.known_exchanges.discard(exchange)
            raise NotFound(
                f"exchange {exchange!r} does not exist: declare it before publishing to it"
            ) from exc


class Written(Published):
    """A message the broker does not store, written: done at once."""

    timeout = 0.0

    @property
    def done(self) -> bool:
        return True

    def result(self) -> int:
        return 1

    def expire(self) -> BaseException:
        return AssertionError("a written reply has nothing to wait for")


WRITTEN = Written()


class ThreadPublished(Published):
    """A thread's publish on the ``PUBLISH`` channel, waiting for RabbitMQ's confirm."""

    def __init__(self, confirm: ThreadConfirm, message: Outgoing, timeout: float) -> None:
        self._confirm = confirm
        self._message = message
        self.timeout = timeout

    @property
    def done(self) -> bool:
        return self._confirm.settled

    def result(self) -> int | None:
        confirm, message = self._confirm, self._message
        if confirm.error is not None:
            if isinstance(confirm.error, Nacked):
                raise nacked(message.exchange) from confirm.error
            return None  # channel or connection gone: publish again on the loop
        if confirm.value:
            return 1
        if not message.mandatory:
            return 0
        raise unroutable(message.exchange, message.routing_key)

    def expire(self) -> BaseException:
        self._confirm.forget()
        return unconfirmed(self.timeout)
