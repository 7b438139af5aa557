"""Durations in messages are rounded for people."""

from conveyor.seconds import seconds


def test_times_in_messages_are_rounded() -> None:
    assert [seconds(v) for v in (2.999994919999949, 12.6, 1.25, 0.3333, 0.05, 0)] == [
        "3 s",
        "13 s",
        "1.2 s",
        "0.33 s",
        "0.05 s",
        "0 s",
    ]
