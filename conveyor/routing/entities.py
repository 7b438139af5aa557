"""The AMQP entities a user declares: exchanges, queues, bindings, and broadcast queues.

All are frozen dataclasses; validation happens at construction, so an invalid definition fails
where it is written, with a message that says how to fix it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import TopologyError

__all__ = [
    "DEFAULT_EXCHANGE",
    "MAX_PRIORITY",
    "MAX_ROUTING_KEY_BYTES",
    "Binding",
    "Broadcast",
    "Exchange",
    "ExchangeType",
    "FrozenMapping",
    "Queue",
    "binding",
    "check_priority",
    "check_routing_key",
]

MAX_ROUTING_KEY_BYTES = 255
MAX_PRIORITY = 255
DEFAULT_EXCHANGE = ""

# Queue arguments RabbitMQ understands and that every conveyor transport honours.
KNOWN_QUEUE_ARGUMENTS = frozenset(
    {
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
        "x-queue-mode",
        "x-max-length-bytes",
    }
)


class ExchangeType(enum.StrEnum):
    """How an exchange chooses the queues a message goes to."""

    DIRECT = "direct"
    TOPIC = "topic"
    FANOUT = "fanout"
    HEADERS = "headers"

    @classmethod
    def parse(cls, value: str | ExchangeType) -> ExchangeType:
        """Return the member for ``value``, or raise TopologyError naming the valid types."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in cls)
            raise TopologyError(f"unknown exchange type {value!r}: use one of {valid}") from None


class FrozenMapping(Mapping[str, Any]):
    """An immutable, hashable mapping used for arguments and headers inside frozen entities."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        self._data: dict[str, Any] = dict(data)
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(repr(sorted(self._data.items(), key=lambda kv: kv[0])))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._data)

    def to_dict(self) -> dict[str, Any]:
        """A plain, mutable copy."""
        return dict(self._data)


def _freeze(value: Mapping[str, Any] | None) -> FrozenMapping:
    if isinstance(value, FrozenMapping):
        return value
    return FrozenMapping(value or {})


def check_routing_key(routing_key: str) -> str:
    """Return ``routing_key`` or raise TopologyError if it is longer than AMQP allows."""
    if not isinstance(routing_key, str):
        raise TopologyError(
            f"routing key must be a string, got {type(routing_key).__name__}: {routing_key!r}"
        )
    size = len(routing_key.encode("utf-8"))
    if size > MAX_ROUTING_KEY_BYTES:
        raise TopologyError(
            f"routing key is {size} bytes long, over AMQP's limit of {MAX_ROUTING_KEY_BYTES}: "
            f"{routing_key[:40]!r}...; use a shorter key"
        )
    return routing_key


def check_priority(priority: int, *, what: str = "priority") -> int:
    """Return ``priority`` or raise TopologyError if it is not an integer in 0..255."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TopologyError(f"{what} must be an integer 0..{MAX_PRIORITY}, got {priority!r}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise TopologyError(f"{what} must be in 0..{MAX_PRIORITY}, got {priority}")
    return priority


@dataclass(frozen=True, slots=True)
class Exchange:
    """An exchange: receives published messages and routes them to bound queues.

    ``Exchange("")`` is the default exchange, which routes to the queue named by the routing key.
    ``arguments`` pass through to the broker; ``alternate-exchange`` names the exchange that
    receives what this one cannot route.
    """

    name: str
    type: ExchangeType = ExchangeType.DIRECT
    durable: bool = True
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=FrozenMapping)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TopologyError(f"exchange name must be a string, got {self.name!r}")
        object.__setattr__(self, "type", ExchangeType.parse(self.type))
        object.__setattr__(self, "arguments", _freeze(self.arguments))

    @property
    def alternate_exchange(self) -> str | None:
        """The name of the alternate exchange, if one is set."""
        value = self.arguments.get("alternate-exchange")
        return str(value) if value is not None else None

    @property
    def is_default(self) -> bool:
        """True for the nameless default exchange."""
        return self.name == DEFAULT_EXCHANGE


@dataclass(frozen=True, slots=True)
class Binding:
    """One binding of a queue to an exchange, by routing key (or header arguments).

    ``exchange`` is an Exchange, or the name of one declared elsewhere (``task_queues`` or the
    default exchange settings).
    """

    exchange: Exchange | str
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=FrozenMapping)

    def __post_init__(self) -> None:
        check_routing_key(self.routing_key)
        object.__setattr__(self, "arguments", _freeze(self.arguments))

    @property
    def exchange_name(self) -> str:
        """The name of the bound exchange."""
        return self.exchange.name if isinstance(self.exchange, Exchange) else self.exchange


def binding(
    exchange: Exchange | str,
    routing_key: str = "",
    arguments: Mapping[str, Any] | None = None,
) -> Binding:
    """Build a Binding, as kombu's ``binding(exchange, routing_key, arguments)`` does."""
    return Binding(exchange=exchange, routing_key=routing_key, arguments=_freeze(arguments))


def _seconds_to_ms(value: float | None, what: str) -> int | None:
    if value is None:
        return None
    if value < 0:
        raise TopologyError(f"{what} must be zero or more seconds, got {value}")
    return round(value * 1000)


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue and how it is bound.

    Either name one exchange with ``exchange``/``routing_key``, or give several ``bindings``
    (both together: the single binding comes first). ``exchange=None`` with no bindings means
    "bind to the default task exchange from the settings"; the settings resolve it.

    The convenience options map to RabbitMQ queue arguments (seconds become milliseconds):
    ``max_priority`` -> ``x-max-priority``, ``message_ttl`` -> ``x-message-ttl``,
    ``expires`` -> ``x-expires``, ``max_length`` -> ``x-max-length``. Anything else goes in
    ``queue_arguments`` under its RabbitMQ name, e.g. ``x-dead-letter-exchange``.
    """

    name: str
    exchange: Exchange | str | None = None
    routing_key: str | None = None
    bindings: tuple[Binding, ...] = ()
    queue_arguments: Mapping[str, Any] = field(default_factory=FrozenMapping)
    max_priority: int | None = None
    message_ttl: float | None = None
    expires: float | None = None
    max_length: int | None = None
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TopologyError(f"queue name must be a string, got {self.name!r}")
        if self.routing_key is not None:
            check_routing_key(self.routing_key)
        object.__setattr__(self, "bindings", tuple(self.bindings))
        for b in self.bindings:
            if not isinstance(b, Binding):
                raise TopologyError(
                    f"queue {self.name!r}: bindings must be made with binding(...), got {b!r}"
                )
        args = dict(self.queue_arguments or {})
        if self.max_priority is not None:
            args["x-max-priority"] = check_priority(self.max_priority, what="max_priority")
        ttl = _seconds_to_ms(self.message_ttl, "message_ttl")
        if ttl is not None:
            args["x-message-ttl"] = ttl
        expires = _seconds_to_ms(self.expires, "expires")
        if expires is not None:
            if expires == 0:
                raise TopologyError(f"queue {self.name!r}: expires must be more than zero")
            args["x-expires"] = expires
        if self.max_length is not None:
            if self.max_length < 0:
                raise TopologyError(f"queue {self.name!r}: max_length must be zero or more")
            args["x-max-length"] = self.max_length
        if "x-max-priority" in args:
            check_priority(args["x-max-priority"], what=f"queue {self.name!r} x-max-priority")
        object.__setattr__(self, "queue_arguments", FrozenMapping(args))

    @property
    def arguments(self) -> FrozenMapping:
        """The queue arguments as RabbitMQ names them (``x-max-priority``, ``x-message-ttl``...)."""
        args = self.queue_arguments
        assert isinstance(args, FrozenMapping)
        return args

    @property
    def all_bindings(self) -> tuple[Binding, ...]:
        """The single ``exchange``/``routing_key`` binding (if any) followed by ``bindings``."""
        if self.exchange is None:
            return self.bindings
        key = self.routing_key if self.routing_key is not None else self.name
        return (Binding(self.exchange, key), *self.bindings)

    @property
    def priority_levels(self) -> int | None:
        """``x-max-priority`` if the queue has priorities, else None (plain FIFO)."""
        value = self.arguments.get("x-max-priority")
        return int(value) if value is not None else None

    @property
    def dead_letter_exchange(self) -> str | None:
        """``x-dead-letter-exchange``, if set."""
        value = self.arguments.get("x-dead-letter-exchange")
        return str(value) if value is not None else None

    @property
    def dead_letter_routing_key(self) -> str | None:
        """``x-dead-letter-routing-key``, if set."""
        value = self.arguments.get("x-dead-letter-routing-key")
        return str(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A broadcast queue: a fanout exchange named ``name``.

    Every worker that consumes it gets its own exclusive, auto-deleted queue bound to the
    exchange (named ``<name>.<worker hostname>.<unique>``), so each worker receives every message.
    Route tasks to it with ``{'queue': name}`` or ``{'exchange': name}``.
    """

    name: str
    queue_arguments: Mapping[str, Any] = field(default_factory=FrozenMapping)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queue_arguments", _freeze(self.queue_arguments))

    @property
    def exchange(self) -> Exchange:
        """The fanout exchange every worker's queue is bound to."""
        return Exchange(self.name, ExchangeType.FANOUT, durable=True, auto_delete=False)

    def queue_for(self, worker_id: str) -> Queue:
        """The exclusive, auto-deleted queue one worker consumes."""
        return Queue(
            f"{self.name}.{worker_id}",
            exchange=self.exchange,
            routing_key="",
            queue_arguments=self.queue_arguments,
            durable=False,
            exclusive=True,
            auto_delete=True,
        )
