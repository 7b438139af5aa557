"""Which due times of an entry to send now: the catch-up rule after downtime, overlap, jitter.

Pure functions of the entry, what was last sent, and the time, so that tests walk through any
downtime with an injected clock.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from conveyor.beat.entries import Catchup, Entry, Overlap

__all__ = ["due_times", "jitter_for", "skip_for_overlap"]

_TINY = timedelta(microseconds=1)


def _between(entry: Entry, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """Due times in (``after``, ``until``], the last ``limit`` of them."""
    if until <= after:
        return []
    if limit <= 0:
        return []
    schedule, zone = entry.schedule, entry.zone
    # Walk back from the end: bounded by ``limit`` however long the range.
    dues: list[datetime] = []
    due = schedule.latest_at_or_before(until, zone)
    while due > after and len(dues) < limit:
        dues.append(due)
        due = schedule.latest_at_or_before(due - _TINY, zone)
    dues.reverse()
    return dues


def due_times(
    entry: Entry,
    *,
    last_due: datetime | None,
    now: datetime,
    grace: float,
    limit: int = 1000,
) -> list[datetime]:
    """The due times of ``entry`` to send at ``now``, oldest first.

    ``last_due`` is the latest due time already sent (None: the entry is new, and nothing before
    ``now - grace`` is owed). A due time at most ``grace`` seconds old is on time and always
    sent; older ones are missed, and the entry's catch-up policy picks among them: ``LATEST``
    the most recent one, ``SKIP`` none, ``ALL`` those within ``catchup_window`` of ``now``. At
    most ``limit`` due times are returned (the most recent ones).
    """
    on_time_from = now - timedelta(seconds=grace)
    start = last_due if last_due is not None else on_time_from - _TINY
    if start >= now:
        return []
    if entry.catchup is Catchup.ALL:
        return _between(entry, max(start, now - entry.catchup_window - _TINY), now, limit)
    boundary = max(start, on_time_from - _TINY)
    on_time = _between(entry, boundary, now, limit)
    if entry.catchup is Catchup.LATEST and boundary > start and len(on_time) < limit:
        latest_missed = entry.schedule.latest_at_or_before(boundary, entry.zone)
        if latest_missed > start:
            return [latest_missed, *on_time]
    return on_time


def skip_for_overlap(entry: Entry, previous_finished: bool) -> bool:
    """True when ``entry``'s overlap policy says not to send while its previous task runs."""
    return entry.overlap is Overlap.SKIP and not previous_finished


def jitter_for(key: str, jitter: float) -> float:
    """Seconds in [0, ``jitter``) to delay the fire keyed ``key``: derived from the key, so that
    a successor delays the same fire by the same amount."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64 * jitter
