"""Schedule maths with explicit times: intervals, crontab forms, time zones and DST nights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conveyor import ConfigurationError, crontab
from conveyor.beat.entries import Catchup, parse_schedule
from conveyor.beat.policy import due_times
from conveyor.beat.schedules import Interval, schedule_from, zone

UTC_ZONE = zone("UTC")


def at(*parts: int, tz: str = "UTC") -> datetime:
    return datetime(*parts, tzinfo=zone(tz)).astimezone(UTC)  # type: ignore[misc]


def test_interval_due_times_are_anchored_to_the_epoch() -> None:
    every = Interval(3 * 3600)
    assert every.next_after(at(2024, 1, 1, 4, 0), UTC_ZONE) == at(2024, 1, 1, 6, 0)
    assert every.next_after(at(2024, 1, 1, 6, 0), UTC_ZONE) == at(2024, 1, 1, 9, 0)
    assert every.latest_at_or_before(at(2024, 1, 1, 6, 0), UTC_ZONE) == at(2024, 1, 1, 6, 0)
    assert every.latest_at_or_before(at(2024, 1, 1, 5, 59), UTC_ZONE) == at(2024, 1, 1, 3, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, Interval(5.0)),
        (2.5, Interval(2.5)),
        (timedelta(minutes=2), Interval(120.0)),
        ("0 */3 * * *", crontab(minute=0, hour="*/3")),
    ],
)
def test_schedule_forms(value: object, expected: object) -> None:
    assert schedule_from(value, "entry") == expected


def test_celery_argument_forms() -> None:
    assert crontab(minute=0, hour="*/3").expression == "0 */3 * * *"
    assert crontab(minute="0-5", day_of_week="mon-fri").expression == "0-5 * * * mon-fri"
    assert crontab(minute={15, 0}, day_of_month="1,15").expression == "0,15 * 1,15 * *"
    assert crontab(hour=range(9, 12), month_of_year=6).expression == "* 9,10,11 * 6 *"
    assert crontab.from_string("0 */3 * * *") == crontab(minute=0, hour="*/3")


def test_crontab_maths() -> None:
    every_three_hours = crontab(minute=0, hour="*/3")
    assert every_three_hours.next_after(at(2024, 1, 1, 3, 0), UTC_ZONE) == at(2024, 1, 1, 6, 0)
    assert every_three_hours.latest_at_or_before(at(2024, 1, 1, 3, 0), UTC_ZONE) == at(
        2024, 1, 1, 3, 0
    )
    assert every_three_hours.latest_at_or_before(at(2024, 1, 1, 2, 59, 59, 999999), UTC_ZONE) == at(
        2024, 1, 1, 0, 0
    )
    weekdays = crontab(minute=30, hour=9, day_of_week="mon-fri")
    # 2024-03-08 is a Friday: the next one is Monday.
    assert weekdays.next_after(at(2024, 3, 8, 10, 0), UTC_ZONE) == at(2024, 3, 11, 9, 30)


def test_time_zones() -> None:
    berlin = zone("Europe/Berlin")
    nine = crontab(minute=0, hour=9)
    assert nine.next_after(at(2024, 1, 1), berlin) == at(2024, 1, 1, 9, 0, tz="Europe/Berlin")
    pinned = crontab(minute=0, hour=9, tz="America/New_York")
    assert pinned.next_after(at(2024, 1, 1), berlin) == at(2024, 1, 1, 9, 0, tz="America/New_York")


@pytest.mark.parametrize(
    "bad",
    [
        lambda: crontab(minute=61),
        lambda: crontab(hour="25"),
        lambda: crontab(day_of_week="funday"),
        lambda: crontab(minute=set()),
        lambda: crontab.from_string("0 */3 * *"),
        lambda: Interval(0),
        lambda: zone("Mars/Olympus"),
        lambda: schedule_from([1], "entry"),
    ],
)
def test_bad_schedules_are_configuration_errors(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        bad()  # type: ignore[operator]


def _daily(hour: int, minute: int, tz: str) -> object:
    entries = parse_schedule(
        {"daily": {"task": "t", "schedule": crontab(minute=minute, hour=hour)}}, tz
    )
    return entries[0]


def _fired_over(entry: object, start: datetime, end: datetime) -> list[datetime]:
    """Every due time sent by a beat ticking each minute from ``start`` to ``end``."""
    fired: list[datetime] = []
    now = start
    last = start
    while now <= end:
        dues = due_times(entry, last_due=last, now=now, grace=2.0)  # type: ignore[arg-type]
        fired += dues
        if dues:
            last = dues[-1]
        now += timedelta(minutes=1)
    return fired


def test_a_time_the_clocks_skip_fires_once_that_day() -> None:
    # New York, 2024-03-10: clocks go from 02:00 straight to 03:00, so 02:30 never happens.
    entry = _daily(2, 30, "America/New_York")
    fired = _fired_over(entry, at(2024, 3, 9, 12, tz="America/New_York"), at(2024, 3, 11, 12))
    local = [d.astimezone(zone("America/New_York")) for d in fired]
    assert [d.date().isoformat() for d in local] == ["2024-03-10", "2024-03-11"]
    assert local[0].hour == 3
    assert local[0].minute == 0
    assert (local[1].hour, local[1].minute) == (2, 30)


def test_a_time_that_happens_twice_fires_once() -> None:
    # London, 2024-10-27: clocks go back from 02:00 BST to 01:00 GMT: 01:30 happens twice.
    entry = _daily(1, 30, "Europe/London")
    fired = _fired_over(entry, at(2024, 10, 26, 12, tz="Europe/London"), at(2024, 10, 28, 12))
    assert fired == [at(2024, 10, 27, 0, 30), at(2024, 10, 28, 1, 30)]


def test_catchup_all_over_a_dst_night_is_each_hour_once() -> None:
    entries = parse_schedule(
        {
            "h": {
                "task": "t",
                "schedule": crontab(minute=30),
                "catchup": "all",
                "catchup_window": 86400,
            }
        },
        "Europe/London",
    )
    entry = entries[0]
    assert entry.catchup is Catchup.ALL
    dues = due_times(
        entry, last_due=at(2024, 10, 26, 23, 59), now=at(2024, 10, 27, 3, 59), grace=1.0
    )
    # Every hour once, both 01:30s included: two instants an hour apart, as cron runs them.
    assert dues == [at(2024, 10, 27, h, 30) for h in range(0, 4)]
