"""Delayed delivery on RabbitMQ with no plugin and no consumer: the delay levels.

Level n is a headers exchange ``conveyor.delay.NN`` and a queue of the same name whose
queue-wide TTL is 2**n ms. A message carries one header per bit of its delay; level n sends it
through its queue when the bit is set and straight on to level n-1 when it is not, and each
queue dead-letters to the next lower level. Every message in a level queue has the same TTL, so
the queue expires strictly from its head: no head-of-line blocking, which per-message TTL would
cause. After level 0 the exchange ``conveyor.delay.due`` hands the message to its target
exchange (an exchange-to-exchange binding) or, for the default exchange, to its queue, with the
original routing key. The delay headers and the delay queues' ``x-death`` entries are removed
when the message is consumed (:func:`strip_delay`). A delayed message's own ``expiration``
travels in a header and is put back on the envelope; RabbitMQ does not enforce it once the
message is due.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigurationError, NotFound, Unroutable
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import Exchange, ExchangeType, Queue

if TYPE_CHECKING:
    from conveyor.transports.amqp.declarations import Declarations

__all__ = ["DELAY_LEVELS", "DELAY_PREFIX", "DelayLevels", "strip_delay"]

DELAY_PREFIX = "conveyor.delay"
DELAY_LEVELS = 32  # 2**32 ms: the longest delay is about 49.7 days
DELAY_HEADER = "conveyor-delay-"
DELAY_TARGET = "conveyor-delay-to"
DELAY_EXPIRATION = "conveyor-delay-expiration"
_DUE = f"{DELAY_PREFIX}.due"


class DelayLevels:
    """The delay levels and due bindings declared so far, declared further as delays need."""

    def __init__(self, declarations: Declarations) -> None:
        self._declarations = declarations
        self._levels = 0
        self._targets: set[str] = set()
        self._lock = asyncio.Lock()

    async def prepare(
        self, envelope: Envelope, exchange: str, routing_key: str, mandatory: bool, delay_ms: int
    ) -> tuple[Envelope, str, dict[str, Any]] | None:
        """What to publish instead, delayed by ``delay_ms``: the envelope, the delay level's
        exchange and the headers; None if no queue takes it from the default exchange.

        Raises ConfigurationError past the longest delay, Unroutable for a ``mandatory`` message
        to a queue that does not exist.
        """
        if delay_ms >= 2**DELAY_LEVELS:
            days = 2**DELAY_LEVELS / 86_400_000
            raise ConfigurationError(
                f"a delay of {delay_ms / 1000:g} s is longer than RabbitMQ delays reach "
                f"({days:.1f} days); schedule it later instead"
            )
        top = delay_ms.bit_length() - 1
        await self._ensure_levels(top + 1)
        target = await self._ensure_target(exchange, routing_key)
        if target is None:
            if mandatory:
                raise Unroutable(
                    f"no queue named {routing_key!r} takes the delayed message from the default "
                    "exchange: declare the queue first",
                    exchange=exchange,
                    routing_key=routing_key,
                )
            return None
        headers = strip_delay(dict(envelope.headers))
        for level in range(top + 1):
            headers[f"{DELAY_HEADER}{level:02d}"] = bool(delay_ms >> level & 1)
        headers[DELAY_TARGET] = target
        if envelope.expiration is not None:
            headers[DELAY_EXPIRATION] = round(envelope.expiration * 1000)
            envelope = replace(envelope, expiration=None)
        return envelope, f"{DELAY_PREFIX}.{top:02d}", headers

    def forget_exchange(self, name: str) -> None:
        """The exchange ``name`` was deleted, and the due exchange's binding to it with it."""
        self._targets.discard(f"exchange:{name}")

    def forget_queue(self, name: str) -> None:
        """The queue ``name`` was deleted, and the due exchange's binding to it with it."""
        self._targets.discard(f"queue:{name}")

    async def _ensure_levels(self, levels: int) -> None:
        if levels <= self._levels:
            return
        declarations = self._declarations
        async with self._lock:
            if self._levels == 0:
                await declarations.declare_exchange(Exchange(_DUE, ExchangeType.HEADERS))
            for level in range(self._levels, levels):
                name = f"{DELAY_PREFIX}.{level:02d}"
                lower = f"{DELAY_PREFIX}.{level - 1:02d}" if level else _DUE
                bit = f"{DELAY_HEADER}{level:02d}"
                await declarations.declare_exchange(Exchange(name, ExchangeType.HEADERS))
                await declarations.declare_queue(
                    Queue(
                        name,
                        queue_arguments={
                            "x-message-ttl": 2**level,
                            "x-dead-letter-exchange": lower,
                        },
                    )
                )
                await declarations.bind_queue(name, name, "", {"x-match": "all", bit: True})
                await declarations.bind_exchange(lower, name, {"x-match": "all", bit: False})
                self._levels = level + 1

    async def _ensure_target(self, exchange: str, routing_key: str) -> str | None:
        """Bind the due exchange to the target; the target's route header, None if no queue."""
        target = f"exchange:{exchange}" if exchange else f"queue:{routing_key}"
        if target in self._targets:
            return target
        arguments = {"x-match": "all", DELAY_TARGET: target}
        if exchange:
            await self._declarations.bind_exchange(exchange, _DUE, arguments)
        else:
            try:
                await self._declarations.bind_queue(routing_key, _DUE, "", arguments)
            except NotFound:
                return None
        self._targets.add(target)
        return target


def delayed_to(headers: dict[str, Any]) -> str | None:
    """The exchange a delayed message was published to ("" for the default), from its headers."""
    target = headers.get(DELAY_TARGET)
    if not isinstance(target, str):
        return None
    kind, _, name = target.partition(":")
    return name if kind == "exchange" else ""


def _is_delay_queue(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(DELAY_PREFIX + ".")


def strip_delay(headers: dict[str, Any]) -> dict[str, Any]:
    """Remove the delay chain's traces: its headers and the delay queues' ``x-death`` entries."""
    cleaned = {k: v for k, v in headers.items() if not k.startswith(DELAY_HEADER)}
    deaths = cleaned.get("x-death")
    if isinstance(deaths, list) and any(
        isinstance(d, dict) and _is_delay_queue(d.get("queue")) for d in deaths
    ):
        kept = [d for d in deaths if not (isinstance(d, dict) and _is_delay_queue(d.get("queue")))]
        if kept:
            cleaned["x-death"] = kept
        else:
            del cleaned["x-death"]
        for edge, entry in (
            ("x-first-death", kept[-1] if kept else None),
            ("x-last-death", kept[0] if kept else None),
        ):
            if not _is_delay_queue(cleaned.get(f"{edge}-queue")):
                continue
            for field in ("queue", "reason", "exchange"):
                cleaned.pop(f"{edge}-{field}", None)
                if entry is not None and field in entry:
                    cleaned[f"{edge}-{field}"] = entry[field]
    return cleaned
