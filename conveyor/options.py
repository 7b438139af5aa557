"""The options a task is sent with and the options it is defined with, one typed record each.

:class:`SendOptions` is how one message is sent (``send_task``, ``apply_async``, and later a
workflow signature, which is a task name, its arguments, a SendOptions and an ``immutable``
flag). :class:`TaskOptions` is how a task is defined (``@app.task(...)``). Each has a
``TypedDict`` twin (:class:`SendArgs`, :class:`TaskArgs`) that types the same options when they
are given as keywords, and one function that builds the record from keywords, refusing unknown
names with the list of known ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypedDict

from conveyor._frozen import fast_init
from conveyor.errors import ConfigurationError
from conveyor.rate_limits import parse_rate

__all__ = [
    "NO_OPTIONS",
    "SEND_OPTION_NAMES",
    "TASK_OPTION_NAMES",
    "SendArgs",
    "SendOptions",
    "Signatures",
    "TaskArgs",
    "TaskOptions",
]


Signatures = Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""One signature (a :class:`conveyor.canvas.Signature` is a mapping) or several."""


class SendArgs(TypedDict, total=False):
    """:class:`SendOptions` as keywords: ``send_task(name, args, queue="q", countdown=5)``."""

    queue: str | None
    exchange: str | None
    exchange_type: str | None
    routing_key: str | None
    priority: int | None
    countdown: float | None
    eta: datetime | None
    expires: float | datetime | None
    task_id: str | None
    headers: Mapping[str, Any] | None
    ignore_result: bool | None
    time_limit: float | None
    serializer: str | None
    link: Signatures | None
    link_error: Signatures | None
    chain: Sequence[Mapping[str, Any]] | None
    chord: Mapping[str, Any] | None
    group_id: str | None
    group_index: int | None
    reply_to: str | None
    parent_id: str | None
    root_id: str | None


@fast_init
@dataclass(frozen=True, slots=True)
class SendOptions:
    """How one task message is sent; ``None`` everywhere means "not set here".

    Routing (override the task's attributes and ``task_routes``): ``queue``, ``exchange``,
    ``exchange_type``, ``routing_key``, ``priority``. Timing: ``countdown`` (seconds) or ``eta``
    (a datetime, naive means UTC) delay the message through the broker's delayed delivery;
    ``expires`` (seconds from now, or a datetime) has a worker mark it REVOKED instead of
    running it late. Message: ``task_id`` (a new random id if not set), ``headers`` (travel with
    the message), ``serializer`` (else ``task_serializer``). Execution: ``ignore_result`` and
    ``time_limit`` (else the task's, else the settings'). Workflows (:mod:`conveyor.canvas`):
    ``link`` / ``link_error`` (signatures sent when the task succeeds / fails), and what Celery's
    protocol v2 carries for chains and chords: ``chain`` (the steps still to run, last first),
    ``chord`` (the body a header task joins), ``group_id`` / ``group_index``, ``reply_to``,
    ``parent_id`` and ``root_id``.
    """

    queue: str | None = None
    exchange: str | None = None
    exchange_type: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    countdown: float | None = None
    eta: datetime | None = None
    expires: float | datetime | None = None
    task_id: str | None = None
    headers: Mapping[str, Any] | None = None
    ignore_result: bool | None = None
    time_limit: float | None = None
    serializer: str | None = None
    link: Signatures | None = None
    link_error: Signatures | None = None
    chain: Sequence[Mapping[str, Any]] | None = None
    chord: Mapping[str, Any] | None = None
    group_id: str | None = None
    group_index: int | None = None
    reply_to: str | None = None
    parent_id: str | None = None
    root_id: str | None = None

    @classmethod
    def of(cls, given: SendArgs) -> SendOptions:
        """The record of keyword options ``given``; ConfigurationError naming an unknown one."""
        if not given:
            return NO_OPTIONS
        _refuse_unknown(given, SEND_OPTION_NAMES, "send option")
        return cls(**given)

    def merged(self, override: SendOptions) -> SendOptions:
        """These options with every option ``override`` sets (not None) replacing this one's."""
        if override is NO_OPTIONS:
            return self
        return SendOptions(
            *(
                mine if theirs is None else theirs
                for mine, theirs in zip(_values(self), _values(override), strict=True)
            )
        )

    def route_options(self) -> dict[str, Any] | None:
        """The routing options set here, as the Router's explicit options; None if none is."""
        if (
            self.queue is None
            and self.exchange is None
            and self.exchange_type is None
            and self.routing_key is None
            and self.priority is None
        ):
            return None
        routing = (
            ("queue", self.queue),
            ("exchange", self.exchange),
            ("exchange_type", self.exchange_type),
            ("routing_key", self.routing_key),
            ("priority", self.priority),
        )
        return {key: value for key, value in routing if value is not None}


NO_OPTIONS = SendOptions()
"""A send with no option set (``delay``), shared."""

SEND_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SendOptions))


def _values(options: SendOptions) -> list[Any]:
    return [getattr(options, name) for name in SEND_OPTION_NAMES]


class TaskArgs(TypedDict, total=False):
    """:class:`TaskOptions` as keywords: ``@app.task(name="web.render", queue="web")``."""

    name: str | None
    bind: bool
    queue: str | None
    exchange: str | None
    exchange_type: str | None
    routing_key: str | None
    priority: int | None
    ignore_result: bool | None
    acks_late: bool | None
    time_limit: float | None
    max_retries: int | None
    default_retry_delay: float
    autoretry_for: Sequence[type[BaseException]]
    retry_backoff: bool | float
    retry_backoff_max: float
    rate_limit: str | None
    soft_time_limit: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """How a task is defined: its name, routing attributes and execution options.

    ``bind`` passes the task as the function's first argument. Routing attributes (``queue``,
    ``exchange``, ``exchange_type``, ``routing_key``, ``priority``) are what the Router reads;
    None means "not set here". Execution: ``ignore_result``, ``acks_late`` (ack after the run)
    and ``time_limit`` (seconds) fall back to the ``task_*`` settings when None;
    ``max_retries`` (None: no limit), ``default_retry_delay`` (seconds), ``autoretry_for``
    (exception types that retry automatically), ``retry_backoff`` (True or a base in seconds:
    exponential delays) capped at ``retry_backoff_max``; ``rate_limit`` (``"10/s"``, per worker,
    else ``task_default_rate_limit``) and ``soft_time_limit`` (seconds: SoftTimeLimitExceeded
    is raised inside the run, else ``task_soft_time_limit``).

    Raises ConfigurationError for an empty name, an ``autoretry_for`` entry that is not an
    exception type, a ``time_limit``/``soft_time_limit`` that is not positive, or a bad
    ``rate_limit``.
    """

    name: str
    bind: bool = False
    queue: str | None = None
    exchange: str | None = None
    exchange_type: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    ignore_result: bool | None = None
    acks_late: bool | None = None
    time_limit: float | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    rate_limit: str | None = None
    soft_time_limit: float | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a task name must be a non-empty string, got {name!r}")
        for exc_type in self.autoretry_for:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(
                    f"task {name!r}: autoretry_for must list exception types, got {exc_type!r}"
                )
        if self.time_limit is not None and self.time_limit <= 0:
            raise ConfigurationError(f"task {name!r}: time_limit must be positive seconds")
        if self.soft_time_limit is not None and self.soft_time_limit <= 0:
            raise ConfigurationError(f"task {name!r}: soft_time_limit must be positive seconds")
        if self.rate_limit is not None:
            try:
                parse_rate(self.rate_limit)
            except ConfigurationError as exc:
                raise ConfigurationError(f"task {name!r}: {exc}") from None
        object.__setattr__(self, "autoretry_for", tuple(self.autoretry_for))

    @classmethod
    def of(cls, given: TaskArgs, *, default_name: str) -> TaskOptions:
        """The record of keyword options ``given``, named ``default_name`` unless ``given``
        names it; ConfigurationError for an unknown option or an invalid value."""
        _refuse_unknown(given, TASK_OPTION_NAMES, "task option")
        options: dict[str, Any] = dict(given)
        options["name"] = given.get("name") or default_name
        return cls(**options)


TASK_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TaskOptions))


def _refuse_unknown(given: Mapping[str, Any], known: Collection[str], what: str) -> None:
    unknown = [name for name in given if name not in known]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigurationError(
        f"unknown {what} {name!r}{hint}; the {what}s are: {', '.join(sorted(known))}"
    )
