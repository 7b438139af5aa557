"""Messages a transport received but cannot read, handed on instead of dropped.

A stored message whose bytes no longer decode (SQLite, Redis), or a RabbitMQ message whose
headers no envelope can hold (nested too deeply, a table the parser refuses), is delivered as an
*unreadable envelope*: its raw bytes as the body, content type :data:`UNREADABLE_CONTENT_TYPE`
and the reason in the :data:`UNREADABLE_REASON` header. No decoder accepts that content type, so
a worker dead-letters it (acked, with its own reason header) and keeps working; the reason header
travels with it into the dead-letter queue, where ``conveyor dead-letters`` shows it.
"""

from __future__ import annotations

from conveyor.protocol.envelope import Envelope

__all__ = [
    "UNREADABLE_CONTENT_TYPE",
    "UNREADABLE_REASON",
    "unreadable_envelope",
    "unreadable_reason",
]

UNREADABLE_CONTENT_TYPE = "application/x-conveyor-undecodable"
UNREADABLE_REASON = "x-conveyor-error"


def unreadable_envelope(
    body: bytes,
    reason: str,
    *,
    correlation_id: str | None = None,
    message_id: str | None = None,
    delivery_mode: int = 2,
) -> Envelope:
    """An envelope carrying ``body`` untouched and why it could not be read."""
    return Envelope(
        body=bytes(body),
        content_type=UNREADABLE_CONTENT_TYPE,
        content_encoding="binary",
        headers={UNREADABLE_REASON: reason},
        correlation_id=correlation_id,
        message_id=message_id,
        delivery_mode=delivery_mode,
    )


def unreadable_reason(envelope: Envelope) -> str | None:
    """Why ``envelope`` could not be read, if a transport made it with
    :func:`unreadable_envelope`; None for every readable message."""
    if envelope.content_type != UNREADABLE_CONTENT_TYPE:
        return None
    reason = envelope.headers.get(UNREADABLE_REASON)
    return reason if isinstance(reason, str) else "the transport could not read it"
