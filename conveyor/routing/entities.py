"""The AMQP entities a user declares: exchanges, queues, bindings, and broadcast queues.

All are frozen dataclasses; validation happens at construction, so an invalid definition fails
where it is written, with a message that says how to fix it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    "check_binding_arguments",
    "check_name",
    "check_priority",
    "check_routing_key",
]

MAX_ROUTING_KEY_BYTES = 255
MAX_NAME_BYTES = 255
MAX_PRIORITY = 255
DEFAULT_EXCHANGE = ""
X_MATCH_MODES = ("all", "any", "all-with-x", "any-with-x")


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
    return _short_string(routing_key, "routing key", MAX_ROUTING_KEY_BYTES, "key")


def check_name(name: str, *, what: str) -> str:
    """Return ``name`` or raise TopologyError if it is not a string of at most 255 UTF-8 bytes."""
    return _short_string(name, f"{what} name", MAX_NAME_BYTES, "name")


def _short_string(value: str, what: str, limit: int, shorter: str) -> str:
    """``value``, or TopologyError naming ``what`` unless it is a string of at most ``limit``
    UTF-8 bytes (asking for a shorter ``shorter``)."""
    if not isinstance(value, str):
        raise TopologyError(f"{what} must be a string, got {type(value).__name__}: {value!r}")
    size = len(value.encode("utf-8"))
    if size > limit:
        raise TopologyError(
            f"{what} is {size} bytes long, over AMQP's limit of {limit}: "
            f"{value[:40]!r}...; use a shorter {shorter}"
        )
    return value


def check_binding_arguments(exchange_type: ExchangeType, arguments: Mapping[str, Any]) -> None:
    """Raise TopologyError if ``arguments`` cannot bind to an exchange of ``exchange_type``.

    Only headers exchanges look at binding arguments: their ``x-match`` must be a string, one of
    ``all``, ``any``, ``all-with-x``, ``any-with-x`` (RabbitMQ refuses the binding otherwise).
    """
    if exchange_type is not ExchangeType.HEADERS or "x-match" not in arguments:
        return
    mode = arguments["x-match"]
    if mode not in X_MATCH_MODES or not isinstance(mode, str):
        valid = ", ".join(repr(m) for m in X_MATCH_MODES)
        raise TopologyError(f"binding argument x-match is {mode!r}: use one of {valid}")


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
        check_name(self.name, what="exchange")
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
        if not isinstance(self.exchange, Exchange):
            check_name(self.exchange, what="exchange")
        check_routing_key(self.routing_key)
        object.__setattr__(self, "arguments", _freeze(self.arguments))
        if isinstance(self.exchange, Exchange):
            check_binding_arguments(self.exchange.type, self.arguments)

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


@dataclass(frozen=True, slots=True, init=False)
class Queue:
    """A queue and how it is bound.

    Either name one exchange with ``exchange``/``routing_key``, or give several ``bindings``
    (both together: the single binding comes first). As in kombu, the bindings may also come
    second: ``Queue('media', [binding(media, 'media.video'), binding(media, 'media.image')])``.
    ``exchange=None`` with no bindings means "bind to the default task exchange from the
    settings"; the router resolves it. ``routing_key=None`` with an exchange means the queue name.

    The convenience options map to RabbitMQ queue arguments (seconds become milliseconds):
    ``max_priority`` -> ``x-max-priority``, ``message_ttl`` -> ``x-message-ttl``,
    ``expires`` -> ``x-expires``, ``max_length`` -> ``x-max-length``. Anything else goes in
    ``queue_arguments`` under its RabbitMQ name, e.g. ``x-dead-letter-exchange``.

    Raises TopologyError for a name or routing key over 255 bytes, a priority outside 0..255,
    negative lengths or times, or bindings not made with :func:`binding`.
    """

    name: str
    exchange: Exchange | str | None
    routing_key: str | None
    bindings: tuple[Binding, ...]
    queue_arguments: Mapping[str, Any]
    max_priority: int | None
    message_ttl: float | None
    expires: float | None
    max_length: int | None
    durable: bool
    exclusive: bool
    auto_delete: bool

    def __init__(
        self,
        name: str,
        exchange: Exchange | str | Sequence[Binding] | None = None,
        routing_key: str | None = None,
        bindings: Iterable[Binding] = (),
        queue_arguments: Mapping[str, Any] | None = None,
        max_priority: int | None = None,
        message_ttl: float | None = None,
        expires: float | None = None,
        max_length: int | None = None,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
    ) -> None:
        check_name(name, what="queue")
        if isinstance(exchange, (list, tuple)):
            bindings = (*exchange, *bindings)
            exchange = None
        if exchange is not None and not isinstance(exchange, (Exchange, str)):
            raise TopologyError(
                f"queue {name!r}: exchange must be an Exchange, an exchange name or a list of "
                f"binding(...), got {exchange!r}"
            )
        if isinstance(exchange, str):
            check_name(exchange, what="exchange")
        if routing_key is not None:
            check_routing_key(routing_key)
        frozen_bindings = tuple(bindings)
        for b in frozen_bindings:
            if not isinstance(b, Binding):
                raise TopologyError(
                    f"queue {name!r}: bindings must be made with binding(...), got {b!r}"
                )
        args = dict(queue_arguments or {})
        if max_priority is not None:
            args["x-max-priority"] = check_priority(max_priority, what="max_priority")
        ttl = _seconds_to_ms(message_ttl, "message_ttl")
        if ttl is not None:
            args["x-message-ttl"] = ttl
        expires_ms = _seconds_to_ms(expires, "expires")
        if expires_ms is not None:
            if expires_ms == 0:
                raise TopologyError(f"queue {name!r}: expires must be more than zero")
            args["x-expires"] = expires_ms
        if max_length is not None:
            if max_length < 0:
                raise TopologyError(f"queue {name!r}: max_length must be zero or more")
            args["x-max-length"] = max_length
        if "x-max-priority" in args:
            check_priority(args["x-max-priority"], what=f"queue {name!r} x-max-priority")
        values: dict[str, Any] = {
            "name": name,
            "exchange": exchange,
            "routing_key": routing_key,
            "bindings": frozen_bindings,
            "queue_arguments": FrozenMapping(args),
            "max_priority": max_priority,
            "message_ttl": message_ttl,
            "expires": expires,
            "max_length": max_length,
            "durable": durable,
            "exclusive": exclusive,
            "auto_delete": auto_delete,
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

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
        check_name(self.name, what="broadcast")
        if not self.name:
            raise TopologyError("a Broadcast needs a name: it names its fanout exchange")
        object.__setattr__(self, "queue_arguments", _freeze(self.queue_arguments))
        if "x-max-priority" in self.queue_arguments:
            check_priority(
                self.queue_arguments["x-max-priority"],
                what=f"broadcast {self.name!r} x-max-priority",
            )

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
