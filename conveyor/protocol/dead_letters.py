"""The headers a worker adds to a message it dead-letters, read by ``conveyor dead-letters``."""

from __future__ import annotations

__all__ = [
    "DEAD_LETTERED_AT",
    "DEAD_LETTER_HEADERS",
    "ORIGINAL_EXCHANGE",
    "ORIGINAL_ROUTING_KEY",
    "dead_letter_headers",
]

# Why, by which worker, from which queue: in this order.
DEAD_LETTER_HEADERS = (
    "x-conveyor-dead-letter-reason",
    "x-conveyor-worker",
    "x-conveyor-queue",
)
# Where the message was first sent, so a replay goes back there.
ORIGINAL_EXCHANGE = "x-conveyor-original-exchange"
ORIGINAL_ROUTING_KEY = "x-conveyor-original-routing-key"
# When it was dead-lettered (seconds since the epoch).
DEAD_LETTERED_AT = "x-conveyor-dead-lettered-at"


def dead_letter_headers(
    *, reason: str, worker: str, queue: str, exchange: str, routing_key: str, at: float
) -> dict[str, str | float]:
    """The headers that say why, where from and when a message was dead-lettered."""
    reason_header, worker_header, queue_header = DEAD_LETTER_HEADERS
    return {
        reason_header: reason,
        worker_header: worker,
        queue_header: queue,
        ORIGINAL_EXCHANGE: exchange,
        ORIGINAL_ROUTING_KEY: routing_key,
        DEAD_LETTERED_AT: at,
    }
