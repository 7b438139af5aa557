"""Bounded descriptions of values that came off the wire, for error messages.

A message's content is whatever its sender chose: ``repr`` of it can be megabytes long, or nest
deeply enough to raise RecursionError. An error that quotes it uses :func:`brief` instead.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["brief"]

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_LIMIT = 200


def brief(value: Any) -> str:
    """``repr(value)`` cut to about 200 characters and 3 levels of nesting; never raises."""
    try:
        text = _REPR.repr(value)
    except Exception:
        text = f"<a {type(value).__name__} that cannot be shown>"
    return text if len(text) <= _LIMIT else text[: _LIMIT - 3] + "..."
