"""Periodic tasks: ``beat_schedule`` entries sent on their schedules, each due time once.

:class:`Beat` is the service (``conveyor beat``, or ``conveyor worker -B``); :class:`crontab`
and :class:`Interval` are the schedules; the stores keep the leader lease and each entry's state
in the broker itself.
"""

from conveyor.beat.entries import Catchup, Entry, Overlap, parse_schedule, task_id_for
from conveyor.beat.schedules import Interval, crontab
from conveyor.beat.service import Beat

__all__ = [
    "Beat",
    "Catchup",
    "Entry",
    "Interval",
    "Overlap",
    "crontab",
    "parse_schedule",
    "task_id_for",
]
