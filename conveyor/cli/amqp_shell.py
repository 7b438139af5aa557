"""The admin shell's session: run one line's verb against a Transport and word its answer.

Answers read as in the routing guide (``ok.``, ``ok. queue:q messages:0 consumers:0.``, a got
message as a dict of body, delivery info and properties) and carry the same facts as data for
``--json``. Bad input never raises: a verb with wrong arguments answers with its usage
(status 2), a broker refusal with the broker's words (status 1).

Delivery tags are the session's own numbers 1, 2, 3..., valid until the session ends whatever
the broker's tags are. A check that can fail on RabbitMQ is made with a passive declare on the
transport's command channel before a ``get``, so a missing queue never closes the channel that
holds the session's unsettled messages.
"""

from __future__ import annotations

import pprint
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.cli.amqp_verbs import VERBS, Call, UsageError, parse_words, split_line
from conveyor.errors import ConfigurationError, NotFound, ProtocolError, TransportError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, ExchangeType, Queue
from conveyor.transports.base import Delivery, Transport

__all__ = ["OK", "REFUSED", "USAGE", "AMQPShell", "Answer", "message_dict"]

OK, REFUSED, USAGE = 0, 1, 2

# Envelope fields basic.publish sets from PROPERTY=VALUE words, with the type each takes.
_PROPERTIES: Mapping[str, type] = {
    "content_type": str,
    "content_encoding": str,
    "correlation_id": str,
    "reply_to": str,
    "priority": int,
    "expiration": float,
    "message_id": str,
    "timestamp": float,
    "type": str,
    "app_id": str,
    "delivery_mode": int,
}
_DEFAULTS = Envelope(b"").properties()


@dataclass(frozen=True, slots=True)
class Answer:
    """What the shell says to one line: its text, the same facts as data, and a status
    (OK 0, REFUSED 1 by the broker, USAGE 2: wrong input)."""

    text: str
    data: Mapping[str, Any] = field(default_factory=dict)
    status: int = OK

    @property
    def ok(self) -> bool:
        return self.status == OK

    def as_json(self) -> dict[str, Any]:
        """The answer for ``--json``: ``ok`` and the data (with ``error`` when it failed)."""
        return {"ok": self.ok, **self.data}


def _body_text(body: bytes) -> str | bytes:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body


def message_dict(delivery: Delivery, tag: int, message_count: int) -> dict[str, Any]:
    """A got message as the guide shows it: body, delivery info, and the properties (with
    headers) that differ from an envelope's defaults."""
    envelope = delivery.envelope
    properties = {k: v for k, v in envelope.properties().items() if _DEFAULTS.get(k) != v}
    if envelope.headers:
        properties["headers"] = dict(envelope.headers)
    return {
        "body": _body_text(envelope.body),
        "delivery_info": {
            "delivery_tag": tag,
            "exchange": delivery.exchange,
            "message_count": message_count,
            "redelivered": delivery.redelivered,
            "routing_key": delivery.routing_key,
        },
        "properties": properties,
    }


def _envelope(call: Call) -> Envelope:
    properties: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    for key, value in call.pairs.items():
        kind = _PROPERTIES.get(key)
        if key.startswith("header:"):
            headers[key[len("header:") :]] = value
        elif kind is None:
            headers[key] = value
        elif kind is str:
            properties[key] = value if isinstance(value, str) else str(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            properties[key] = kind(value)
        else:
            raise UsageError(f"{key} must be a number, got {value!r}", call.verb)
    return Envelope(call.words["BODY"].encode("utf-8"), headers=headers, **properties)


def _usage(message: str, verb: str | None) -> Answer:
    data: dict[str, Any] = {"verb": verb, "error": message, "error_kind": "usage"}
    lines = [f"error: {message}"]
    if verb is not None and verb in VERBS:
        data["usage"] = VERBS[verb].usage
        lines.append(f"usage: {data['usage']}")
    return Answer("\n".join(lines), data, USAGE)


class AMQPShell:
    """One shell session on a connected ``transport``; :meth:`run_line` runs each line.

    ``queues`` and ``exchanges`` are the names the session has seen (for completion), seeded
    with ``known_queues`` and ``known_exchanges``.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        known_queues: Iterable[str] = (),
        known_exchanges: Iterable[str] = (),
    ) -> None:
        self.transport = transport
        self.queues: set[str] = set(known_queues)
        self.exchanges: set[str] = {name for name in known_exchanges if name}
        self._unsettled: dict[int, Delivery] = {}
        self._settled: set[int] = set()
        self._next_tag = 1
        self._handlers: dict[str, Callable[[Call], Awaitable[Answer]]] = {
            "exchange.declare": self._exchange_declare,
            "exchange.delete": self._exchange_delete,
            "queue.declare": self._queue_declare,
            "queue.bind": self._queue_bind,
            "queue.unbind": self._queue_unbind,
            "queue.purge": self._queue_purge,
            "queue.delete": self._queue_delete,
            "basic.publish": self._basic_publish,
            "basic.get": self._basic_get,
            "basic.ack": self._basic_ack,
            "basic.reject": self._basic_reject,
            "help": self._help,
        }

    async def run_line(self, line: str) -> Answer | None:
        """Run one typed line; None for a blank line. Never raises for bad input or a refusal."""
        try:
            words = split_line(line)
        except UsageError as exc:
            return _usage(str(exc), None)
        return await self.run_words(words) if words else None

    async def run_words(self, words: list[str]) -> Answer:
        """Run ``[verb, *arguments]``; never raises for bad input or a broker refusal."""
        try:
            call = parse_words(words)
            return await self._handlers[call.verb.name](call)
        except UsageError as exc:
            return _usage(str(exc), exc.verb.name if exc.verb else None)
        except (ConfigurationError, ProtocolError) as exc:
            return _usage(str(exc), words[0])
        except TransportError as exc:
            data = {"verb": words[0], "error": str(exc), "error_kind": type(exc).__name__}
            return Answer(f"error: {exc}", data, REFUSED)

    def _ok(self, call: Call, text: str = "ok.", **data: Any) -> Answer:
        return Answer(text, {"verb": call.verb.name, **data})

    async def _exchange_declare(self, call: Call) -> Answer:
        name = call.words["NAME"]
        exchange = Exchange(
            name,
            ExchangeType.parse(call.words.get("TYPE", "direct")),
            durable=call.has("durable"),
            auto_delete=call.has("auto_delete"),
            arguments=call.pairs,
        )
        await self.transport.declare_exchange(exchange, passive=call.has("passive"))
        self.exchanges.add(name)
        return self._ok(call, exchange=name)

    async def _exchange_delete(self, call: Call) -> Answer:
        name = call.words["NAME"]
        # Deleting a missing exchange is silent in AMQP; a shell user wants to hear of a typo.
        await self.transport.declare_exchange(Exchange(name), passive=True)
        await self.transport.delete_exchange(name, if_unused=call.has("if_unused"))
        self.exchanges.discard(name)
        return self._ok(call, exchange=name)

    async def _queue_declare(self, call: Call) -> Answer:
        name = call.words["NAME"]
        queue = Queue(
            name,
            queue_arguments=call.pairs,
            durable=call.has("durable"),
            exclusive=call.has("exclusive"),
            auto_delete=call.has("auto_delete"),
        )
        stats = await self.transport.declare_queue(queue, passive=call.has("passive"))
        self.queues.add(name)
        text = f"ok. queue:{name} messages:{stats.ready} consumers:{stats.consumers}."
        return self._ok(call, text, queue=name, messages=stats.ready, consumers=stats.consumers)

    async def _queue_bind(self, call: Call) -> Answer:
        queue, exchange = call.words["QUEUE"], call.words["EXCHANGE"]
        key = call.words.get("ROUTING_KEY", "")
        await self.transport.bind_queue(queue, exchange, key, call.pairs)
        self.queues.add(queue)
        self.exchanges.add(exchange)
        return self._ok(call, queue=queue, exchange=exchange, routing_key=key)

    async def _queue_unbind(self, call: Call) -> Answer:
        queue, exchange = call.words["QUEUE"], call.words["EXCHANGE"]
        key = call.words.get("ROUTING_KEY", "")
        await self.transport.unbind_queue(queue, exchange, key, call.pairs)
        return self._ok(call, queue=queue, exchange=exchange, routing_key=key)

    async def _queue_purge(self, call: Call) -> Answer:
        name = call.words["NAME"]
        count = await self.transport.purge_queue(name)
        return self._ok(call, f"ok. {count} messages deleted.", queue=name, messages=count)

    async def _queue_delete(self, call: Call) -> Answer:
        name = call.words["NAME"]
        # As for exchange.delete: a missing queue is worth saying, not "0 messages deleted".
        await self.transport.queue_stats(name)
        count = await self.transport.delete_queue(
            name, if_unused=call.has("if_unused"), if_empty=call.has("if_empty")
        )
        self.queues.discard(name)
        return self._ok(call, f"ok. {count} messages deleted.", queue=name, messages=count)

    async def _basic_publish(self, call: Call) -> Answer:
        exchange, key = call.words["EXCHANGE"], call.words["ROUTING_KEY"]
        envelope = _envelope(call)
        routed = await self.transport.publish(
            envelope, exchange=exchange, routing_key=key, mandatory=call.has("mandatory")
        )
        if exchange:
            self.exchanges.add(exchange)
        if routed:
            return self._ok(call, routed=True)
        text = "ok. (no queue took it: the message was dropped)"
        return self._ok(call, text, routed=False)

    async def _basic_get(self, call: Call) -> Answer:
        name = call.words["QUEUE"]
        await self.transport.queue_stats(name)
        no_ack = call.has("no_ack")
        delivery = await self.transport.get(name, no_ack=no_ack)
        self.queues.add(name)
        if delivery is None:
            return self._ok(call, f"ok. queue:{name} is empty.", queue=name, message=None)
        tag = self._next_tag
        self._next_tag += 1
        if no_ack:
            self._settled.add(tag)
        else:
            self._unsettled[tag] = delivery
        remaining = (await self.transport.queue_stats(name)).ready
        message = message_dict(delivery, tag, remaining)
        return self._ok(call, pprint.pformat(message, width=80), queue=name, message=message)

    def _take(self, call: Call) -> tuple[int, Delivery]:
        text = call.words["TAG"]
        try:
            tag = int(text)
        except ValueError:
            raise UsageError(f"TAG must be a number, got {text!r}", call.verb) from None
        delivery = self._unsettled.pop(tag, None)
        if delivery is not None:
            self._settled.add(tag)
            return tag, delivery
        if tag in self._settled:
            raise NotFound(f"delivery tag {tag} was already settled in this session")
        raise NotFound(
            f"unknown delivery tag {tag}: tags come from basic.get in this session "
            f"(unsettled now: {', '.join(map(str, sorted(self._unsettled))) or 'none'})"
        )

    async def _basic_ack(self, call: Call) -> Answer:
        tag, delivery = self._take(call)
        await self.transport.ack(delivery)
        return self._ok(call, delivery_tag=tag)

    async def _basic_reject(self, call: Call) -> Answer:
        tag, delivery = self._take(call)
        await self.transport.reject(delivery, requeue=call.has("requeue"))
        return self._ok(call, delivery_tag=tag, requeue=call.has("requeue"))

    async def _help(self, call: Call) -> Answer:
        wanted = call.words.get("VERB")
        if wanted is not None:
            verb = VERBS.get(wanted)
            if verb is None:
                raise UsageError(f"unknown verb {wanted!r}: type help for the list", call.verb)
            return self._ok(call, f"{verb.usage}\n    {verb.summary}", verbs=[verb.usage])
        lines = [verb.usage for verb in VERBS.values()]
        lines.append("exit (or Ctrl-D) leaves; Tab completes verbs and the names seen so far.")
        return self._ok(call, "\n".join(lines), verbs=lines[:-1])
