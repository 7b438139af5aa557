"""Router functions named by dotted path in the router tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def route_task(
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    task: Any = None,
    **kw: Any,
) -> dict[str, str] | None:
    """The routing guide's router function."""
    if name == "myapp.tasks.compress_video":
        return {"exchange": "video", "exchange_type": "topic", "routing_key": "video.compress"}
    return None


def by_size(
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    task: Any = None,
    **kw: Any,
) -> str | None:
    """Route by an argument: big jobs to their own queue (a queue name is a route too)."""
    if kwargs.get("size", 0) > 100:
        return "big"
    return None


def broken(*args: Any, **kwargs: Any) -> None:
    raise ValueError("no route for you")


not_callable = 42
