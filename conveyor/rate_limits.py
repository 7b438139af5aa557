"""Rate limits: ``"10/s"``, ``"100/m"``, ``"1000/h"`` (a bare number is per second), and the
bucket a worker keeps per task to space its runs.

A rate limit holds per worker, as in Celery: each worker starts at most that many runs of the
task per period, evenly spaced (a bucket of one token; no bursts). Messages waiting for their
turn stay unacked in the worker and do not hold an execution slot, so other tasks go on.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from conveyor.errors import ConfigurationError

__all__ = ["RateLimits", "parse_rate"]

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@functools.lru_cache(maxsize=256)
def parse_rate(text: str | float) -> float | None:
    """Runs per second that ``text`` allows; None for no limit (``0``, ``""``).

    Raises ConfigurationError for anything else, saying how to write one.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        count, period = float(text), 1.0
    elif isinstance(text, str):
        number, _, unit = text.strip().partition("/")
        period_of = _PERIODS.get(unit.strip().lower() or "s")
        try:
            count = float(number) if number.strip() else 0.0
        except ValueError:
            period_of = None
        if period_of is None:
            raise ConfigurationError(
                f"rate limit {text!r} is not a rate: write runs per second, minute or hour, "
                "like '10/s', '100/m' or '1000/h'"
            )
        period = period_of
    else:
        raise ConfigurationError(f"rate limit {text!r} must be a string like '10/s'")
    if count < 0:
        raise ConfigurationError(f"rate limit {text!r} must not be negative")
    return count / period if count else None


class RateLimits:
    """The next free start time of each rate-limited task on one worker (event loop only).

    ``default`` (``task_default_rate_limit``) is only checked here, so that a bad one fails
    when the worker is made rather than at each task: ConfigurationError.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, default: str | None = None
    ) -> None:
        if default is not None:
            parse_rate(default)
        self._clock = clock
        self._next: dict[str, float] = {}

    def reserve(self, name: str, rate: str | float) -> float:
        """Book the next start of task ``name`` limited to ``rate`` (see :func:`parse_rate`);
        seconds to wait for it (0.0: start now). ConfigurationError for a bad ``rate``."""
        per_second = parse_rate(rate)
        if per_second is None:
            return 0.0
        now = self._clock()
        start = max(now, self._next.get(name, now))
        self._next[name] = start + 1.0 / per_second
        return start - now
