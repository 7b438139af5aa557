"""Exchanges, queues and bindings on RabbitMQ: declared, deleted, bound, and remembered.

Everything declared is remembered by the session and declared again after a reconnect. When an
exchange or queue exists with another definition, RabbitMQ names one differing value per
error; the declaration is probed until it matches, so that PreconditionFailed can say both
definitions in full and how to fix it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pamqp import commands as spec
from pamqp.base import Frame

from conveyor.errors import ConveyorError, NotFound, PreconditionFailed, TopologyError
from conveyor.routing.entities import Exchange, FrozenMapping, Queue, check_routing_key
from conveyor.transports.amqp.channel import Channel
from conveyor.transports.amqp.codec import (
    ExchangeBind,
    ExchangeDeclare,
    QueueBind,
    QueueDeclare,
    QueueUnbind,
)
from conveyor.transports.amqp.session import ChannelRole, Session
from conveyor.transports.base import QueueStats

__all__ = ["Declarations"]

# (flags, arguments, passive) -> the declaration's method frame
_Frame = Callable[[dict[str, Any], dict[str, Any], bool], Frame]
_Definition = tuple[dict[str, Any], dict[str, Any]]

_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for .*?received (.*?) but current is (.*)$")
_TYPED_VALUE = re.compile(r"the value '(.*)' of type '(\w+)'$")


class Declarations:
    """The topology verbs over a session's command channel (errors as conveyor's)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def _call(self, what: str, operation: Callable[[Channel], Awaitable[Any]]) -> Any:
        return await self._session.call(ChannelRole.COMMAND, what, operation)

    async def declare_exchange(self, exchange: Exchange, *, passive: bool = False) -> None:
        """Declare ``exchange``; PreconditionFailed names both definitions."""
        if exchange.is_default:
            return
        name = exchange.name
        passive = passive or name.startswith("amq.")

        def frame(flags: dict[str, Any], arguments: dict[str, Any], passive: bool) -> Frame:
            return ExchangeDeclare(
                exchange=name,
                exchange_type=str(flags["type"]),
                passive=passive,
                durable=bool(flags["durable"]),
                auto_delete=bool(flags["auto_delete"]),
                arguments=arguments or None,
            )

        flags = {
            "type": exchange.type.value,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
        }
        _, declare = await self._declare(
            "exchange",
            name,
            frame,
            (flags, dict(exchange.arguments)),
            passive,
            differs="another definition",
            fix="Delete the exchange (Transport.delete_exchange) so it is created again, or "
            "declare it with the definition it already has.",
        )
        self._session.known_exchanges.add(name)
        if not passive:
            self._session.remember(("exchange", name), lambda: self._call(name, declare))

    async def declare_queue(self, queue: Queue, *, passive: bool = False) -> QueueStats:
        """Declare ``queue`` and its bindings and return its stats.

        PreconditionFailed (queue exists with other arguments) names the queue, both argument
        sets as far as RabbitMQ tells them, and the fix.
        """
        name = queue.name
        if not passive:
            for b in queue.all_bindings:
                if isinstance(b.exchange, Exchange):
                    await self.declare_exchange(b.exchange)

        def frame(flags: dict[str, Any], arguments: dict[str, Any], passive: bool) -> Frame:
            return QueueDeclare(
                queue=name,
                passive=passive,
                durable=bool(flags["durable"]),
                exclusive=queue.exclusive,
                auto_delete=bool(flags["auto_delete"]),
                arguments=arguments or None,
            )

        flags = {"durable": queue.durable, "auto_delete": queue.auto_delete}
        ok, declare = await self._declare(
            "queue",
            name,
            frame,
            (flags, dict(queue.arguments)),
            passive,
            differs="other arguments or flags",
            fix=f"Delete the queue (`rabbitmqctl delete_queue {name}` or Transport.delete_queue; "
            "its messages go with it) so it is created again, or declare it with the arguments "
            "it already has.",
        )
        actual = ok.queue or name
        if passive:
            return self.stats(actual, ok)
        self._session.remember(("queue", actual), lambda: self._call(actual, declare))
        for b in queue.all_bindings:
            if b.exchange_name == "" and b.routing_key == actual:
                continue  # every queue is bound to the default exchange by its name already
            await self.bind_queue(actual, b.exchange_name, b.routing_key, b.arguments)
        return self.stats(actual, ok)

    async def _declare(
        self,
        kind: str,
        name: str,
        frame: _Frame,
        ours: _Definition,
        passive: bool,
        *,
        differs: str,
        fix: str,
    ) -> tuple[Any, Callable[[Channel], Awaitable[Any]]]:
        """Declare the ``kind`` ``name`` defined by ``ours``: RabbitMQ's reply, and the operation
        that declares it again. NotFound (passive) and PreconditionFailed say which and why."""
        flags, arguments = ours

        async def declare(raw: Channel) -> Any:
            return await raw.rpc(frame(flags, arguments, passive))

        try:
            return await self._call(f"declaring {kind} {name!r}", declare), declare
        except NotFound:
            raise NotFound(
                f"{kind} {name!r} does not exist on RabbitMQ: declare it first"
            ) from None
        except PreconditionFailed as exc:
            if "inequivalent arg" not in str(exc):
                raise
            theirs = await self._existing_definition(str(exc), ours, frame)
            raise PreconditionFailed(
                f"{kind} {name!r} already exists on RabbitMQ with {differs}. "
                f"RabbitMQ has {_describe(theirs)}; this declaration asks for "
                f"{_describe(ours)}. RabbitMQ said: {exc}. {fix}"
            ) from exc

    async def _existing_definition(
        self, error: str, ours: _Definition, frame: _Frame
    ) -> _Definition | None:
        """What RabbitMQ already has, learnt from its "inequivalent arg" errors, or None.

        RabbitMQ names one differing value per error, with its current value; taking that value
        and declaring again finds the next, until the declaration matches and is a no-op.
        """
        flags, arguments = dict(ours[0]), dict(ours[1])
        for _ in range(16):
            found = _INEQUIVALENT.search(error)
            if found is None:
                return None
            key, _, current = found.groups()
            try:
                present, value = _printed_value(current)
            except ValueError:
                return None
            if key in flags:
                flags[key] = value
            elif present:
                arguments[key] = value
            else:
                arguments.pop(key, None)
            try:
                await self._call("declaring", lambda raw: raw.rpc(frame(flags, arguments, False)))
            except PreconditionFailed as exc:
                error = str(exc)
                continue
            except ConveyorError:
                return None
            return flags, arguments
        return None

    def stats(self, name: str, ok: spec.Queue.DeclareOk) -> QueueStats:
        """The stats in a ``queue.declare-ok``, with the deliveries this connection holds."""
        return QueueStats(
            name=name,
            ready=ok.message_count or 0,
            unacked=self._session.unacked(name),
            consumers=ok.consumer_count or 0,
        )

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete exchange ``name``; a missing one is not an error."""
        if not name:
            raise TopologyError("the default exchange cannot be deleted")
        await self._call(
            f"deleting exchange {name!r}",
            lambda raw: raw.rpc(spec.Exchange.Delete(exchange=name, if_unused=if_unused)),
        )
        self._session.known_exchanges.discard(name)
        self._session.forget("exchange", name)

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete queue ``name`` with its messages; return how many went (0 if missing)."""
        self._session.send_pending()
        ok = await self._call(
            f"deleting queue {name!r}",
            lambda raw: raw.rpc(
                spec.Queue.Delete(queue=name, if_unused=if_unused, if_empty=if_empty)
            ),
        )
        self._session.forget("queue", name)
        return int(ok.message_count or 0)

    async def purge_queue(self, name: str) -> int:
        """Remove every ready message of ``name``; NotFound if it does not exist."""
        self._session.send_pending()
        ok = await self._call(
            f"purging queue {name!r}", lambda raw: raw.rpc(spec.Queue.Purge(queue=name))
        )
        return int(ok.message_count or 0)

    async def bind_queue(
        self, queue: str, exchange: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        """Bind (idempotent); NotFound if the queue or exchange does not exist."""
        check_routing_key(routing_key)
        if exchange == "":
            raise TopologyError(
                f"cannot bind queue {queue!r} to the default exchange: it routes to every queue "
                "by its name already; bind to a named exchange instead"
            )
        args = dict(arguments or {})
        bind = _queue_binding(QueueBind, queue, exchange, routing_key, args)
        key = ("binding", queue, exchange, routing_key, FrozenMapping(args))
        await self._call(f"binding queue {queue!r} to exchange {exchange!r}", bind)
        self._session.remember(key, lambda: self._call(str(key), bind))

    async def unbind_queue(
        self, queue: str, exchange: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        """Remove the binding; one that does not exist is not an error."""
        args = dict(arguments or {})
        unbind = _queue_binding(QueueUnbind, queue, exchange, routing_key, args)
        with contextlib.suppress(NotFound):
            await self._call(f"unbinding queue {queue!r} from exchange {exchange!r}", unbind)
        self._session.topology.pop(
            ("binding", queue, exchange, routing_key, FrozenMapping(args)), None
        )

    async def bind_exchange(
        self, destination: str, source: str, arguments: Mapping[str, Any]
    ) -> None:
        """Bind exchange ``destination`` to ``source`` (idempotent), with no routing key."""
        args = dict(arguments)

        async def bind(raw: Channel) -> None:
            await raw.rpc(
                ExchangeBind(destination=destination, source=source, routing_key="", arguments=args)
            )

        await self._call(f"binding exchange {destination!r} to {source!r}", bind)
        key = ("exchange-binding", destination, source, FrozenMapping(args))
        self._session.remember(key, lambda: self._call(str(key), bind))

    async def queue_stats(self, name: str) -> QueueStats:
        """Ready and consumer counts from RabbitMQ; unacked counts this connection's deliveries."""
        self._session.send_pending()
        try:
            ok = await self._call(
                f"reading queue {name!r}",
                lambda raw: raw.rpc(spec.Queue.Declare(queue=name, passive=True)),
            )
        except NotFound:
            raise NotFound(f"queue {name!r} does not exist on RabbitMQ") from None
        return self.stats(name, ok)

    async def ensure_exchange(self, name: str) -> None:
        """Check once per connection that exchange ``name`` exists; NotFound if it does not."""
        if not name or name in self._session.known_exchanges:
            return
        await self._call(
            f"checking exchange {name!r}",
            lambda raw: raw.rpc(spec.Exchange.Declare(exchange=name, passive=True)),
        )
        self._session.known_exchanges.add(name)


def _queue_binding(
    method: type[QueueBind | QueueUnbind], queue: str, exchange: str, key: str, args: dict[str, Any]
) -> Callable[[Channel], Awaitable[None]]:
    """The operation that sends ``method`` (bind or unbind) for that binding."""

    async def send(raw: Channel) -> None:
        await raw.rpc(
            method(queue=queue, exchange=exchange, routing_key=key, arguments=args or None)
        )

    return send


def _printed_value(text: str) -> tuple[bool, Any]:
    """``(present, value)`` for a value as RabbitMQ prints it in an "inequivalent arg" error."""
    text = text.strip()
    if text == "none":
        return False, None
    typed = _TYPED_VALUE.match(text)
    if typed:
        raw, kind = typed.groups()
    elif len(text) >= 2 and text[0] == text[-1] == "'":
        raw, kind = text[1:-1], ""
    else:
        raise ValueError(text)
    if kind in ("longstr", "shortstr"):
        return True, raw
    if kind == "bool" or (not kind and raw in ("true", "false")):
        return True, raw == "true"
    for parse in (int, float):
        with contextlib.suppress(ValueError):
            return True, parse(raw)
    if kind:
        raise ValueError(text)
    return True, raw


def _describe(definition: _Definition | None) -> str:
    if definition is None:
        return "a definition it does not fully report (see its message)"
    flags, arguments = definition
    return ", ".join(f"{k}={v!r}" for k, v in flags.items()) + f", arguments={arguments}"
