"""Whether a declaration agrees with what the virtual broker stores, and which queue arguments
it accepts, as RabbitMQ decides both.
"""

from __future__ import annotations

from conveyor.errors import PreconditionFailed, TopologyError
from conveyor.routing.entities import Exchange, Queue

__all__ = ["check_exchange_equivalent", "check_queue_arguments", "check_queue_equivalent"]

# The queue arguments RabbitMQ compares when a queue is declared again.
_EQUIVALENCE_ARGUMENTS = (
    "x-max-priority",
    "x-message-ttl",
    "x-expires",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-delivery-limit",
    "x-queue-type",
    "x-overflow",
    "x-single-active-consumer",
    "x-max-length-bytes",
)


def _describe_queue(queue: Queue) -> str:
    args = {k: queue.arguments[k] for k in sorted(queue.arguments)}
    return (
        f"(durable={queue.durable}, exclusive={queue.exclusive}, "
        f"auto_delete={queue.auto_delete}, arguments={args})"
    )


def _describe_exchange(exchange: Exchange) -> str:
    return (
        f"(type={exchange.type.value}, durable={exchange.durable}, "
        f"auto_delete={exchange.auto_delete}, arguments={dict(exchange.arguments)})"
    )


def _queue_equivalent(a: Queue, b: Queue) -> bool:
    if (a.durable, a.exclusive, a.auto_delete) != (b.durable, b.exclusive, b.auto_delete):
        return False
    for key in _EQUIVALENCE_ARGUMENTS:
        va, vb = a.arguments.get(key), b.arguments.get(key)
        if key == "x-queue-type":
            va, vb = va or "classic", vb or "classic"
        if va != vb:
            return False
    return True


def _exchange_equivalent(a: Exchange, b: Exchange) -> bool:
    return (a.type, a.durable, a.auto_delete, a.alternate_exchange) == (
        b.type,
        b.durable,
        b.auto_delete,
        b.alternate_exchange,
    )


def check_queue_equivalent(stored: Queue, declared: Queue) -> None:
    """PreconditionFailed unless ``declared`` matches the ``stored`` queue of its name."""
    if not _queue_equivalent(stored, declared):
        raise PreconditionFailed(
            f"queue {declared.name!r} exists as {_describe_queue(stored)}, not "
            f"{_describe_queue(declared)}: declare it as it is, or delete it first"
        )


def check_exchange_equivalent(stored: Exchange, declared: Exchange) -> None:
    """PreconditionFailed unless ``declared`` matches the ``stored`` exchange of its name."""
    if not _exchange_equivalent(stored, declared):
        raise PreconditionFailed(
            f"exchange {declared.name!r} exists as {_describe_exchange(stored)}, not "
            f"{_describe_exchange(declared)}: declare it as it is, or delete it first"
        )


def check_queue_arguments(queue: Queue) -> None:
    """TopologyError for an argument the virtual broker does not implement or a bad value."""
    args = queue.arguments
    overflow = args.get("x-overflow", "drop-head")
    if overflow != "drop-head":
        raise TopologyError(
            f"queue {queue.name!r}: x-overflow {overflow!r} is not available on this broker; "
            "use 'drop-head' (the default) or RabbitMQ"
        )
    if "x-max-length-bytes" in args:
        raise TopologyError(
            f"queue {queue.name!r}: x-max-length-bytes is not available on this broker; "
            "limit the queue by count with x-max-length"
        )
    if args.get("x-single-active-consumer"):
        raise TopologyError(
            f"queue {queue.name!r}: x-single-active-consumer is not available on this broker; "
            "run one consumer, or use RabbitMQ"
        )
    if args.get("x-queue-type", "classic") not in ("classic", "quorum"):
        raise TopologyError(
            f"queue {queue.name!r}: x-queue-type {args['x-queue-type']!r} is not available on "
            "this broker; use 'classic' or 'quorum'"
        )
    for key in ("x-message-ttl", "x-expires", "x-max-length", "x-delivery-limit"):
        value = args.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TopologyError(f"queue {queue.name!r}: {key} must be an integer, got {value!r}")
        if value is not None and value < 0:
            raise TopologyError(f"queue {queue.name!r}: {key} must be zero or more, got {value}")
