"""Durations as people read them in messages: ``within 3 s``, not ``within 2.999994919999949 s``."""

from __future__ import annotations

__all__ = ["seconds"]


def seconds(value: float) -> str:
    """``value`` seconds rounded for a message, with its unit: whole seconds from 10 s up,
    tenths from 1 s, two significant digits below (``"3 s"``, ``"2.5 s"``, ``"0.25 s"``)."""
    value = float(value)
    if abs(value) >= 10:
        return f"{round(value):d} s"
    if abs(value) >= 1:
        return f"{round(value, 1):g} s"
    return f"{value:.2g} s"
