"""The RabbitMQ transport's errors: the wire layer's own, and conveyor's for each of them.

The wire layer raises :class:`ConnectionClosed` when the connection is gone (with RabbitMQ's
reply code and text when it closed it), :class:`ChannelClosed` when RabbitMQ closed a channel
after an error, :class:`Nacked` when it refused a published message. :func:`failure` is where
they become conveyor errors (``raise ... from exc``) for every call that may be retried after a
lost connection; the functions below it word the errors publishing raises.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor.errors import (
    BrokerUnavailable,
    NotFound,
    PreconditionFailed,
    TopologyError,
    TransportError,
    Unroutable,
)

__all__ = ["AMQPError", "ChannelClosed", "ConnectionClosed", "Nacked", "failure"]


class AMQPError(Exception):
    """Base of the wire layer's errors; ``code`` and ``text`` are RabbitMQ's when it sent them."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}" if code else text)
        self.code = code
        self.text = text


class ConnectionClosed(AMQPError):
    """The connection is closed: by RabbitMQ (with its reason), by us, or lost."""


class ChannelClosed(AMQPError):
    """RabbitMQ closed the channel: 404 not found, 405 locked, 406 precondition, 403 refused."""


class Nacked(AMQPError):
    """RabbitMQ refused a published message (``basic.nack``)."""


def retrieve(future: asyncio.Future[Any]) -> None:
    """Done callback that marks a future's exception as seen (no "never retrieved" warning)."""
    if not future.cancelled():
        future.exception()


def reply_text(exc: BaseException) -> str:
    return exc.text if isinstance(exc, AMQPError) else str(exc)


def is_channel_error(exc: BaseException) -> bool:
    """True for RabbitMQ's channel errors about what was asked (not a lost connection)."""
    return isinstance(exc, ChannelClosed) and exc.code in (403, 404, 405, 406)


def is_lost(exc: BaseException) -> bool:
    """True for errors that mean the channel or connection went away under the call."""
    return isinstance(
        exc, (ConnectionClosed, ChannelClosed, OSError, asyncio.CancelledError)
    ) and not is_channel_error(exc)


def being_cancelled() -> bool:
    """True when the current task itself is being cancelled (not a future it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def failure(exc: BaseException, what: str) -> BaseException | None:
    """The error to raise for ``exc``, raised while doing ``what``; None if it means the channel
    or connection went away under the call, which is worth trying again.

    The task's own cancellation, BrokerUnavailable (from waiting for the connection) and
    anything but an Exception are raised as they are; RabbitMQ's channel errors become
    NotFound, PreconditionFailed, TopologyError or TransportError, anything else a
    TransportError naming ``what``.
    """
    if isinstance(exc, asyncio.CancelledError):
        return exc if being_cancelled() else None
    if isinstance(exc, BrokerUnavailable) or not isinstance(exc, Exception):
        return exc
    if is_channel_error(exc):
        return channel_error(exc, what)
    if is_lost(exc):
        return None
    return TransportError(f"{what}: {exc!r}")


def channel_error(exc: BaseException, what: str) -> TransportError | TopologyError:
    """The conveyor error for a channel error RabbitMQ raised while doing ``what``."""
    text = reply_text(exc)
    code = exc.code if isinstance(exc, ChannelClosed) else 0
    if code == 404:
        return NotFound(f"{what}: {text}")
    if code == 405:
        return PreconditionFailed(
            f"{what}: {text}; an exclusive queue belongs to the connection that declared it"
        )
    if code == 406:
        if "invalid arg" in text or "invalid property" in text:
            return TopologyError(
                f"{what}: RabbitMQ refuses the definition: {text} (x-delivery-limit needs "
                "'x-queue-type': 'quorum', and quorum queues must be durable, not exclusive "
                "and not auto-delete)"
            )
        return PreconditionFailed(f"{what}: {text}")
    if code == 403:
        return TransportError(f"{what}: RabbitMQ refused: {text}")
    return TransportError(f"{what}: {text}")


def unavailable(display: str, exc: BaseException | None) -> BrokerUnavailable:
    """RabbitMQ at ``display`` cannot be reached (or refused the login), ``exc`` being why."""
    if isinstance(exc, ConnectionClosed) and exc.code == 403:
        return BrokerUnavailable(
            f"RabbitMQ at {display} refused the login ({reply_text(exc)}): check "
            "the user, password and virtual host in the broker URL"
        )
    reason = f": {exc!r}" if exc is not None else ""
    return BrokerUnavailable(
        f"cannot reach RabbitMQ at {display}{reason}; check that it is running and "
        "that the URL is right"
    )


def nacked(exchange: str) -> TransportError:
    return TransportError(
        f"RabbitMQ refused the message for exchange {exchange!r} (basic.nack): a queue may be "
        "full with x-overflow reject-publish, or the broker is out of resources"
    )


def unconfirmed(timeout: float) -> TransportError:
    return TransportError(
        f"RabbitMQ did not confirm a message within {timeout:g} s; it may be blocked (low "
        "memory or disk): check `rabbitmqctl status`"
    )


def unroutable(exchange: str, routing_key: str) -> Unroutable:
    where = f"exchange {exchange!r}" if exchange else "the default exchange"
    return Unroutable(
        f"no queue took the message published to {where} with routing key {routing_key!r}: "
        "bind a queue that matches it, or give the exchange an alternate-exchange",
        exchange=exchange,
        routing_key=routing_key,
    )
