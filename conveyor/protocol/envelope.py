"""The message envelope every transport stores and moves: headers, properties and body.

It mirrors an AMQP basic message. Transports without a native format store it with
:meth:`Envelope.to_bytes` / :meth:`Envelope.from_bytes`; the RabbitMQ transport maps the fields to
basic properties one to one.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from conveyor._frozen import fast_init
from conveyor.errors import ProtocolError
from conveyor.protocol.describe import brief
from conveyor.routing.entities import MAX_PRIORITY, FrozenMapping

__all__ = ["Envelope"]

_HEADER_SIZE = struct.Struct("!I")
_JSON_SCALARS = (str, int, float, bool, type(None))
# Values that need no look inside (floats do: they must be finite), checked by exact type.
_PLAIN = frozenset((str, int, bool, type(None)))


def _check_header_value(key: str, value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise ProtocolError(f"header {brief(key)} is nested more than 32 levels deep")
    if isinstance(value, _JSON_SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(
                f"header {brief(key)} is {value}: only finite numbers travel in headers"
            )
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_header_value(key, item, depth + 1)
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, str):
                raise ProtocolError(f"header {brief(key)} has a non-string key {brief(k)}")
            _check_header_value(key, item, depth + 1)
        return
    raise ProtocolError(
        f"header {brief(key)} holds a {type(value).__name__}; headers carry only JSON values "
        "(str, int, float, bool, None, lists and dicts of these)"
    )


_TEXT_PROPERTIES = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "message_id",
    "type",
    "app_id",
)


def _check_stored_properties(meta: dict[str, Any]) -> None:
    """Raise ProtocolError unless the stored properties have the types the fields declare
    (construction checks only what the hot path needs: priority, expiration, headers)."""
    for name in _TEXT_PROPERTIES:
        value = meta.get(name)
        if value is not None and type(value) is not str:
            raise ProtocolError(f"stored property {name!r} must be a string, got {brief(value)}")
    for name in ("expiration", "timestamp"):
        value = meta.get(name)
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
            raise ProtocolError(f"stored property {name!r} must be a number, got {brief(value)}")


@fast_init
@dataclass(frozen=True, slots=True)
class Envelope:
    """One message: an opaque ``body`` plus AMQP-style properties and headers.

    ``priority`` is 0..255 or None; ``expiration`` is a per-message TTL in seconds (None: none).
    Headers must be JSON values so that every transport can store them; construction validates
    all of this and raises ProtocolError saying what is wrong.
    """

    body: bytes
    headers: Mapping[str, Any] = field(default_factory=FrozenMapping)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    expiration: float | None = None
    message_id: str | None = None
    timestamp: float | None = None
    type: str | None = None
    app_id: str | None = None
    delivery_mode: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.body, (bytes, bytearray, memoryview)):
            raise ProtocolError(
                f"envelope body must be bytes, got {type(self.body).__name__}: encode it first"
            )
        if not isinstance(self.body, bytes):
            object.__setattr__(self, "body", bytes(self.body))
        headers = self.headers
        if type(headers) is not dict and not isinstance(headers, Mapping):
            raise ProtocolError(f"envelope headers must be a mapping, got {brief(headers)}")
        plain = _PLAIN
        for key, value in headers.items():
            if type(key) is not str and not isinstance(key, str):
                raise ProtocolError(f"header names must be strings, got {brief(key)}")
            if type(value) not in plain:
                _check_header_value(key, value)
        if type(headers) is not FrozenMapping:
            object.__setattr__(self, "headers", FrozenMapping(headers))
        if self.priority is not None and (
            isinstance(self.priority, bool)
            or not isinstance(self.priority, int)
            or not 0 <= self.priority <= MAX_PRIORITY
        ):
            raise ProtocolError(
                f"priority must be an integer 0..{MAX_PRIORITY}, got {brief(self.priority)}"
            )
        if self.expiration is not None and (
            not isinstance(self.expiration, (int, float)) or self.expiration < 0
        ):
            raise ProtocolError(
                f"expiration must be zero or more seconds, got {brief(self.expiration)}"
            )
        if self.delivery_mode not in (1, 2):
            raise ProtocolError(f"delivery_mode must be 1 or 2, got {brief(self.delivery_mode)}")

    def properties(self) -> dict[str, Any]:
        """Every property except body and headers, with None values left out."""
        props = {
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "priority": self.priority,
            "expiration": self.expiration,
            "message_id": self.message_id,
            "timestamp": self.timestamp,
            "type": self.type,
            "app_id": self.app_id,
            "delivery_mode": self.delivery_mode,
        }
        return {k: v for k, v in props.items() if v is not None}

    def to_bytes(self) -> bytes:
        """Serialize for storage: a length-prefixed JSON header block, then the raw body."""
        meta = self.properties()
        if self.headers:
            meta["headers"] = dict(self.headers)
        head = orjson.dumps(meta)
        return _HEADER_SIZE.pack(len(head)) + head + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Inverse of :meth:`to_bytes`; raises ProtocolError for anything it did not write."""
        try:
            (size,) = _HEADER_SIZE.unpack_from(data, 0)
            start = _HEADER_SIZE.size
            meta = orjson.loads(data[start : start + size])
            if not isinstance(meta, dict):
                raise ValueError("header block is not an object")
            _check_stored_properties(meta)
            body = data[start + size :]
            return cls(body=bytes(body), **meta)
        except (struct.error, orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise ProtocolError(f"stored message is not a conveyor envelope: {exc}") from exc

    def replace_headers(self, **updates: Any) -> Envelope:
        """A copy with ``updates`` merged into the headers (used when dead-lettering)."""
        return replace(self, headers=FrozenMapping({**self.headers, **updates}))
