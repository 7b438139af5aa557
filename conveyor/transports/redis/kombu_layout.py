"""kombu's Redis layout, as data: key names, binding members, priority steps, message payloads.

What Celery's Redis transport (kombu) keeps, under its ``global_keyprefix`` (empty by default):

- a queue ``q`` is a list per priority step: ``q`` for step 0 and ``q\\x06\\x16<step>`` for the
  others (``priority_steps``, default ``[0, 3, 6, 9]``); publishers ``LPUSH``, consumers
  ``BRPOP`` the keys in step order, so **0 is the highest priority**, as the routing guide says;
- bindings of exchange ``x`` are the set ``_kombu.binding.x`` of members
  ``routing_key\\x06\\x16pattern\\x06\\x16queue`` (the pattern is a regex for topic exchanges);
- a delivered, unacked message is in the hash ``unacked`` (delivery tag -> ``[payload,
  exchange, routing_key]``) and the sorted set ``unacked_index`` (tag -> delivery time); one
  older than the visibility timeout goes back to its queues.

A message is the JSON payload kombu's virtual transport writes (body base64-encoded, properties
with ``delivery_info`` and ``delivery_tag``). Everything here is pure; the transport does I/O.
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from conveyor.errors import ConfigurationError, ProtocolError
from conveyor.protocol.envelope import Envelope
from conveyor.routing.entities import ExchangeType
from conveyor.routing.matching import topic_matches
from conveyor.transports.base import Delivery

__all__ = [
    "BINDING_PREFIX",
    "DEFAULT_PRIORITY_STEPS",
    "SEP",
    "KombuMessage",
    "binding_member",
    "from_payload",
    "parse_member",
    "priority_steps",
    "queue_keys",
    "routed_queues",
    "step_key",
    "to_payload",
    "topic_pattern",
]

SEP = "\x06\x16"
BINDING_PREFIX = "_kombu.binding."
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
# kombu clamps message priorities to 0..9.
_MAX_KOMBU_PRIORITY = 9


def priority_steps(value: Any) -> tuple[int, ...]:
    """The ``priority_steps`` option (a list of ints, or "0,3,6,9" from a URL) as a sorted tuple.

    Raises ConfigurationError for anything else, naming the option.
    """
    if value is None:
        return DEFAULT_PRIORITY_STEPS
    items = value.split(",") if isinstance(value, str) else value
    try:
        steps = tuple(sorted({int(item) for item in items}))
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"option 'priority_steps' must be a list of integers 0..9, got {value!r}"
        ) from None
    if not steps or steps[0] != 0 or steps[-1] > _MAX_KOMBU_PRIORITY:
        raise ConfigurationError(
            f"option 'priority_steps' must start at 0 and stay within 0..9, got {value!r} "
            "(the routing guide uses list(range(10)))"
        )
    return steps


def step_key(queue: str, priority: int | None, steps: Sequence[int]) -> str:
    """The list holding ``queue``'s messages of ``priority`` (its step, as kombu picks it)."""
    level = min(max(priority or 0, 0), _MAX_KOMBU_PRIORITY)
    step = steps[bisect(steps, level) - 1]
    return f"{queue}{SEP}{step}" if step else queue


def queue_keys(queue: str, steps: Sequence[int]) -> list[str]:
    """Every list of ``queue``, highest priority (step 0) first."""
    return [f"{queue}{SEP}{step}" if step else queue for step in steps]


def topic_pattern(routing_key: str) -> str:
    """kombu's regex for a topic binding key (stored in the member, used by kombu to match)."""
    escaped = "".join(
        c if c.isalnum() or c in ".#*" else ("\\000" if c == "\000" else "\\" + c)
        for c in routing_key
    )
    words = {"*": r"[^\.]+", "#": r".*?"}
    return "^" + r"\.".join(words.get(word, word) for word in escaped.split(".")) + "$"


def binding_member(queue: str, routing_key: str, exchange_type: ExchangeType) -> str:
    """The member kombu stores in ``_kombu.binding.<exchange>`` for this binding."""
    pattern = topic_pattern(routing_key) if exchange_type is ExchangeType.TOPIC else ""
    return SEP.join((routing_key, pattern, queue))


def parse_member(member: str) -> tuple[str, str, str] | None:
    """(routing key, pattern, queue) of a binding member; None for one kombu did not write."""
    parts = member.split(SEP)
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def routed_queues(
    members: Sequence[str], exchange_type: ExchangeType, routing_key: str
) -> list[str]:
    """The queues an exchange with these binding members routes ``routing_key`` to, in the
    order kombu's exchange types give: exact keys (direct), topic words, every queue (fanout)."""
    found: list[str] = []
    for member in members:
        parsed = parse_member(member)
        if parsed is None:
            continue
        key, _, queue = parsed
        if exchange_type is ExchangeType.FANOUT:
            taken = True
        elif exchange_type is ExchangeType.TOPIC:
            taken = topic_matches(key, routing_key)
        else:
            taken = key == routing_key
        if taken and queue not in found:
            found.append(queue)
    return found


@dataclass(frozen=True, slots=True)
class KombuMessage:
    """A payload read from a kombu list: the envelope, where it was published, its tag."""

    raw: Mapping[str, Any]
    envelope: Envelope
    exchange: str
    routing_key: str
    tag: str
    redelivered: bool

    def delivery(self, queue: str, tag: str) -> Delivery:
        """This message handed out from ``queue`` as delivery ``tag``; kombu keeps no count,
        so a redelivered message counts as delivered twice."""
        return Delivery(
            self.envelope,
            queue,
            self.exchange,
            self.routing_key,
            self.redelivered,
            2 if self.redelivered else 1,
            tag,
        )


def to_payload(envelope: Envelope, exchange: str, routing_key: str, tag: str) -> bytes:
    """The JSON kombu's virtual transport writes for ``envelope`` (body in base64)."""
    properties: dict[str, Any] = {
        "delivery_mode": envelope.delivery_mode,
        "delivery_info": {"exchange": exchange, "routing_key": routing_key},
        "priority": min(envelope.priority or 0, _MAX_KOMBU_PRIORITY),
        "body_encoding": "base64",
        "delivery_tag": tag,
    }
    for name in ("correlation_id", "reply_to", "message_id", "type", "app_id"):
        value = getattr(envelope, name)
        if value is not None:
            properties[name] = value
    if envelope.timestamp is not None:
        properties["timestamp"] = envelope.timestamp
    if envelope.expiration is not None:
        properties["expiration"] = str(int(envelope.expiration * 1000))
    payload = {
        "body": base64.b64encode(envelope.body).decode("ascii"),
        "content-encoding": envelope.content_encoding,
        "content-type": envelope.content_type,
        "headers": dict(envelope.headers),
        "properties": properties,
    }
    return orjson.dumps(payload)


def _body(payload: Mapping[str, Any], properties: Mapping[str, Any]) -> bytes:
    body = payload.get("body", "")
    if properties.get("body_encoding") == "base64":
        try:
            return base64.b64decode(body, validate=False)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ProtocolError(f"kombu message body is not base64: {exc}") from exc
    if isinstance(body, str):
        return body.encode(str(payload.get("content-encoding") or "utf-8"))
    return orjson.dumps(body)


def from_payload(data: bytes | str) -> KombuMessage:
    """Read a kombu payload; ProtocolError for one that is not (the caller dead-letters it)."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not a kombu message (not JSON): {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
        raise ProtocolError("not a kombu message: no properties object")
    properties: dict[str, Any] = payload["properties"]
    info = properties.get("delivery_info") or {}
    headers = payload.get("headers") or {}
    priority = properties.get("priority")
    expiration = properties.get("expiration")
    try:
        envelope = Envelope(
            body=_body(payload, properties),
            headers=headers,
            content_type=str(payload.get("content-type") or "application/json"),
            content_encoding=str(payload.get("content-encoding") or "utf-8"),
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to") or None,
            priority=priority if isinstance(priority, int) and 0 <= priority <= 255 else None,
            expiration=float(expiration) / 1000 if expiration not in (None, "") else None,
            message_id=properties.get("message_id"),
            timestamp=properties.get("timestamp"),
            type=properties.get("type"),
            app_id=properties.get("app_id"),
            delivery_mode=2 if properties.get("delivery_mode") != 1 else 1,
        )
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"kombu message has bad properties: {exc}") from exc
    redelivered = bool(headers.get("redelivered") or info.get("redelivered"))
    return KombuMessage(
        payload,
        envelope,
        str(info.get("exchange") or ""),
        str(info.get("routing_key") or ""),
        str(properties.get("delivery_tag") or ""),
        redelivered,
    )
