"""conveyor/rate_limits.py: parsing rates and the bucket that spaces a task's starts."""

from __future__ import annotations

import pytest

from conveyor.errors import ConfigurationError
from conveyor.rate_limits import RateLimits, parse_rate


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("100/m", 100 / 60), ("1000/h", 1000 / 3600), ("5", 5.0), (2, 2.0)],
)
def test_parse_rate(text: str | int, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


def test_no_limit() -> None:
    assert parse_rate("0/s") is None
    assert parse_rate("") is None


@pytest.mark.parametrize("text", ["10/d", "ten/s", "10/ms"])
def test_a_bad_rate_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_rate(text)
    assert str(caught.value) == (
        f"rate limit {text!r} is not a rate: write runs per second, minute or hour, "
        "like '10/s', '100/m' or '1000/h'"
    )


def test_bucket_spaces_starts_evenly() -> None:
    now = [100.0]
    limits = RateLimits(clock=lambda: now[0])
    assert [limits.reserve("t", "2/s") for _ in range(3)] == [0.0, 0.5, 1.0]
    assert limits.reserve("other", "2/s") == 0.0
    now[0] = 102.0  # idle since: no burst saved up
    assert limits.reserve("t", "2/s") == 0.0
    assert limits.reserve("t", "2/s") == 0.5
