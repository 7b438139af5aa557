"""When a periodic task is due: interval and crontab schedules as pure functions of the time.

Every function here takes the time it reasons about as an argument (an aware datetime), so the
scheduler's clock can be injected and tests can walk through a DST night in microseconds.

- :class:`Interval`: every N seconds, due times anchored to the Unix epoch (``every 3 h`` is due
  at 00:00, 03:00, ... UTC), so that every beat process computes the same due times.
- :class:`crontab`: Celery's argument forms (``minute='*/15'``, ``hour='0-5'``,
  ``day_of_week='mon-fri'``, ``day_of_month='1,15'``, ints, sets and ranges) or a cron string
  (:meth:`crontab.from_string`), evaluated by cronsim in a time zone. DST follows cron's rule
  (cronsim's): a time the clocks skip is due once, at the first instant after the jump; a time the
  clocks pass twice is due once, the first time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from conveyor.errors import ConfigurationError

__all__ = ["Interval", "Schedule", "crontab", "schedule_from", "zone"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


class Schedule(Protocol):
    """What the scheduler asks of a schedule. Times in and out are aware datetimes in UTC."""

    def next_after(self, moment: datetime, zone: tzinfo) -> datetime:
        """The first due time strictly after ``moment``."""
        ...

    def latest_at_or_before(self, moment: datetime, zone: tzinfo) -> datetime:
        """The last due time at or before ``moment``."""
        ...

    def describe(self) -> str:
        """The schedule in words, for ``conveyor beat --list``."""
        ...


def zone(name: str | tzinfo) -> tzinfo:
    """The time zone ``name`` (an IANA name such as ``Europe/Berlin``, or a tzinfo as is).

    Raises ConfigurationError for a name zoneinfo does not know.
    """
    if isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from exc


@dataclass(frozen=True, slots=True)
class Interval:
    """Due every ``seconds`` seconds, at the multiples of ``seconds`` since the Unix epoch."""

    seconds: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.seconds) or self.seconds <= 0:
            raise ConfigurationError(
                f"an interval schedule needs a positive number of seconds, got {self.seconds!r}"
            )

    def _index(self, moment: datetime) -> float:
        return (moment - _EPOCH).total_seconds() / self.seconds

    def _at(self, index: int) -> datetime:
        return _EPOCH + timedelta(seconds=index * self.seconds)

    def next_after(self, moment: datetime, zone: tzinfo) -> datetime:
        index = math.floor(self._index(moment)) + 1
        due = self._at(index)
        while due <= moment:  # float rounding on huge indexes
            index += 1
            due = self._at(index)
        return due

    def latest_at_or_before(self, moment: datetime, zone: tzinfo) -> datetime:
        index = math.floor(self._index(moment))
        due = self._at(index)
        while due > moment:
            index -= 1
            due = self._at(index)
        return due

    def describe(self) -> str:
        return f"every {self.seconds:g} s"


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _field(value: str | int | Iterable[int], what: str) -> str:
    """One cron field from Celery's forms: ``'*/3'``, ``'0-5'``, ``'mon-fri'``, 7, {1, 15}."""
    if isinstance(value, bool):
        raise ConfigurationError(f"crontab {what}: expected a number or a string, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if not text:
            raise ConfigurationError(f"crontab {what}: empty field")
        return text.lower()
    try:
        numbers = sorted({int(v) for v in value})
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"crontab {what}: expected a number, a string such as '*/3' or a set of numbers, "
            f"got {value!r}"
        ) from exc
    if not numbers:
        raise ConfigurationError(f"crontab {what}: an empty set matches no time")
    return ",".join(map(str, numbers))


class crontab:
    """A cron schedule, with Celery's arguments: ``crontab(minute=0, hour='*/3')``.

    Fields take an int, a string in cron syntax (``'*/15'``, ``'0-5'``, ``'1,15'``,
    ``'mon-fri'``) or an iterable of ints (a set, a range). ``tz`` pins a time zone (an IANA
    name); otherwise the entry's or the ``timezone`` setting's zone is used. As in cron, when
    both ``day_of_month`` and ``day_of_week`` are restricted, a day matching either is due.
    Raises ConfigurationError for a field cron does not accept.
    """

    __slots__ = ("expression", "tz")

    expression: str
    tz: tzinfo | None

    def __init__(
        self,
        minute: str | int | Iterable[int] = "*",
        hour: str | int | Iterable[int] = "*",
        day_of_week: str | int | Iterable[int] = "*",
        day_of_month: str | int | Iterable[int] = "*",
        month_of_year: str | int | Iterable[int] = "*",
        *,
        tz: str | tzinfo | None = None,
    ) -> None:
        fields = (
            _field(minute, "minute"),
            _field(hour, "hour"),
            _field(day_of_month, "day_of_month"),
            _field(month_of_year, "month_of_year"),
            _field(day_of_week, "day_of_week"),
        )
        self._set(" ".join(fields), tz)

    def _set(self, expression: str, tz: str | tzinfo | None) -> None:
        try:
            CronSim(expression, _EPOCH)
        except CronSimError as exc:
            raise ConfigurationError(f"bad crontab {expression!r}: {exc}") from exc
        object.__setattr__(self, "expression", expression)
        object.__setattr__(self, "tz", zone(tz) if tz is not None else None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("crontab is immutable")

    @classmethod
    def from_string(cls, expression: str, *, tz: str | tzinfo | None = None) -> crontab:
        """A crontab from a five-field cron string, e.g. ``"0 */3 * * *"``."""
        parts = expression.split()
        if len(parts) != 5:
            raise ConfigurationError(
                f"bad crontab {expression!r}: give five fields (minute hour day-of-month month "
                "day-of-week), e.g. '0 */3 * * *'"
            )
        self = cls.__new__(cls)
        self._set(" ".join(p.lower() for p in parts), tz)
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, crontab):
            return NotImplemented
        return (self.expression, self.tz) == (other.expression, other.tz)

    def __hash__(self) -> int:
        return hash((self.expression, self.tz))

    def __repr__(self) -> str:
        tz = f", tz={self.tz}" if self.tz is not None else ""
        return f"crontab.from_string({self.expression!r}{tz})"

    def _zone(self, zone: tzinfo) -> tzinfo:
        return self.tz if self.tz is not None else zone

    def next_after(self, moment: datetime, zone: tzinfo) -> datetime:
        local = moment.astimezone(self._zone(zone))
        return next(CronSim(self.expression, local)).astimezone(UTC)

    def latest_at_or_before(self, moment: datetime, zone: tzinfo) -> datetime:
        # The last of the due times next_after walks through: cronsim's reverse walk can land
        # on the second pass of a repeated hour, which the forward walk (cron's rule) skips.
        moment = moment.astimezone(UTC)
        local_zone = self._zone(zone)
        probe = moment.astimezone(local_zone) + _SECOND
        for _ in range(8):
            back = next(CronSim(self.expression, probe, reverse=True))
            due = self.next_after(back.astimezone(UTC) - _SECOND, local_zone)
            if due <= moment:
                while (later := self.next_after(due, local_zone)) <= moment:
                    due = later
                return due
            probe = back
        raise ConfigurationError(f"crontab {self.expression!r}: no due time before {moment}")

    def describe(self) -> str:
        words = CronSim(self.expression, _EPOCH).explain()
        tz = f" ({self.tz})" if self.tz is not None else ""
        return f"{words} [{self.expression}]{tz}"


def schedule_from(value: object, what: str) -> Schedule:
    """The Schedule a ``beat_schedule`` entry's ``schedule`` names: seconds (int or float), a
    ``timedelta``, a :class:`crontab`, a cron string, or an :class:`Interval`.

    Raises ConfigurationError, naming ``what``, for anything else.
    """
    if isinstance(value, crontab | Interval):
        return value
    if isinstance(value, timedelta):
        return Interval(value.total_seconds())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Interval(float(value))
    if isinstance(value, str):
        return crontab.from_string(value)
    raise ConfigurationError(
        f"{what}: 'schedule' must be seconds, a timedelta, a crontab(...) or a cron string such "
        f"as '0 */3 * * *', got {value!r}"
    )
