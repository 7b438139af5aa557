"""``beat_schedule`` parsed into typed, frozen entries, and the ids derived from each fire.

An entry is the settings' dict made strict: its task, schedule, arguments, send options and
policies (:class:`Catchup`, :class:`Overlap`, jitter, time zone). A fire is one due time of one
entry; its key and its task id are derived from (beat name, entry, due time) alone, so every
beat process names the same fire the same way.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import orjson

from conveyor.beat.schedules import Schedule, schedule_from, zone
from conveyor.errors import ConfigurationError

__all__ = [
    "SEND_OPTIONS",
    "Catchup",
    "Entry",
    "Overlap",
    "fire_key",
    "parse_schedule",
    "task_id_for",
]

# The uuid5 namespace of beat task ids (uuid5(NAMESPACE_URL, "conveyor:beat")).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "conveyor:beat")
_NAMESPACE_BYTES = _NAMESPACE.bytes
# uuid5 by hand (as uuid.uuid5 computes it, without building UUID objects): version 5 and the
# RFC 4122 variant set in the SHA-1 digest's first 16 bytes.
_UUID5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID5_SET = (0x5000 << 64) | (0x8000 << 48)

SEND_OPTIONS = frozenset(
    {
        "queue",
        "exchange",
        "exchange_type",
        "routing_key",
        "priority",
        "countdown",
        "expires",
        "headers",
        "ignore_result",
        "time_limit",
        "serializer",
    }
)
_KEYS = frozenset(
    {
        "task",
        "schedule",
        "args",
        "kwargs",
        "options",
        "catchup",
        "catchup_window",
        "overlap",
        "jitter",
        "timezone",
    }
)


class Catchup(enum.StrEnum):
    """Which due times missed while no beat ran are sent when one runs again.

    ``LATEST`` (the default): the most recent missed one, once. ``SKIP``: none (only a due time
    at most a second late counts as on time). ``ALL``: every one within ``catchup_window``.
    """

    LATEST = "latest"
    SKIP = "skip"
    ALL = "all"


class Overlap(enum.StrEnum):
    """``ALLOW``: send at every due time. ``SKIP``: skip a due time while the entry's previous
    task has not finished (its result is not ready)."""

    ALLOW = "allow"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``beat_schedule`` entry. ``options`` are ``asend_task`` keyword arguments."""

    name: str
    task: str
    schedule: Schedule
    zone: tzinfo
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    catchup: Catchup = Catchup.LATEST
    catchup_window: timedelta = timedelta(hours=1)
    overlap: Overlap = Overlap.ALLOW
    jitter: float = 0.0
    signature: str = field(init=False)
    """A digest of what decides when the entry is due: when it changes, the entry's stored
    state no longer applies (its next due time is counted from the change)."""

    def __post_init__(self) -> None:
        text = f"{self.schedule!r}|{self.zone}"
        object.__setattr__(self, "signature", hashlib.sha256(text.encode()).hexdigest()[:16])


def fire_key(beat: str, entry: str, due: datetime) -> str:
    """The key of the fire of ``entry`` due at ``due`` (any zone; keyed in UTC)."""
    return f"{beat}\x00{entry}\x00{due.astimezone(UTC).isoformat()}"


def task_id_for(beat: str, entry: str, due: datetime) -> str:
    """The task id of that fire: ``uuid5`` of its key, the same in every beat process."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + fire_key(beat, entry, due).encode()).digest()
    text = f"{int.from_bytes(digest[:16]) & _UUID5_CLEAR | _UUID5_SET:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _choice(enum_type: type[Catchup] | type[Overlap], value: object, what: str) -> Any:
    try:
        return enum_type(str(value))
    except ValueError as exc:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise ConfigurationError(f"{what}: must be one of {allowed}, got {value!r}") from exc


def _seconds(value: object, what: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigurationError(f"{what}: must be seconds (zero or more), got {value!r}")
    return float(value)


def _entry(name: str, spec: Mapping[str, Any], default_zone: tzinfo) -> Entry:
    what = f"beat_schedule[{name!r}]"
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigurationError(
            f"{what}: unknown key(s) {', '.join(sorted(map(repr, unknown)))}; the keys are "
            f"{', '.join(sorted(_KEYS))}"
        )
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{what}: 'task' must name a task, e.g. 'tasks.reload_cache'")
    if "schedule" not in spec:
        raise ConfigurationError(f"{what}: give a 'schedule' (seconds, timedelta or crontab)")
    args = spec.get("args") or ()
    kwargs = spec.get("kwargs") or {}
    options = spec.get("options") or {}
    if not isinstance(args, list | tuple):
        raise ConfigurationError(f"{what}: 'args' must be a list or tuple, got {args!r}")
    if not isinstance(kwargs, Mapping) or not isinstance(options, Mapping):
        raise ConfigurationError(f"{what}: 'kwargs' and 'options' must be dicts")
    bad = set(options) - SEND_OPTIONS
    if bad:
        raise ConfigurationError(
            f"{what}: unknown send option(s) {', '.join(sorted(map(repr, bad)))}; the options "
            f"are {', '.join(sorted(SEND_OPTIONS))}"
        )
    try:
        orjson.dumps([args, kwargs])
    except TypeError as exc:
        raise ConfigurationError(f"{what}: args and kwargs must be JSON values: {exc}") from exc
    return Entry(
        name=name,
        task=task,
        schedule=schedule_from(spec["schedule"], what),
        zone=zone(spec["timezone"]) if spec.get("timezone") else default_zone,
        args=tuple(args),
        kwargs=dict(kwargs),
        options=dict(options),
        catchup=_choice(Catchup, spec.get("catchup", "latest"), f"{what} catchup"),
        catchup_window=timedelta(
            seconds=_seconds(spec.get("catchup_window", 3600), f"{what} catchup_window")
        ),
        overlap=_choice(Overlap, spec.get("overlap", "allow"), f"{what} overlap"),
        jitter=_seconds(spec.get("jitter", 0), f"{what} jitter"),
    )


def parse_schedule(schedule: Mapping[str, Any] | None, timezone: str | tzinfo) -> tuple[Entry, ...]:
    """The entries of a ``beat_schedule`` setting, in name order; ``timezone`` is the default
    zone. Raises ConfigurationError naming the entry and key for anything malformed."""
    default_zone = zone(timezone)
    if not schedule:
        return ()
    if not isinstance(schedule, Mapping):
        raise ConfigurationError(
            f"beat_schedule must be a dict of entry name -> entry, got {type(schedule).__name__}"
        )
    entries = []
    for name in sorted(schedule):
        spec = schedule[name]
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ConfigurationError(f"beat_schedule: entry names must be strings, got {name!r}")
        if not isinstance(spec, Mapping):
            raise ConfigurationError(f"beat_schedule[{name!r}] must be a dict, got {spec!r}")
        entries.append(_entry(name, spec, default_zone))
    return tuple(entries)
