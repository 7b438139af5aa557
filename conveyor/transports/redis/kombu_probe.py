"""The conveyor layout meeting kombu's: its options, and a warning when a consumed queue has
kombu's structures in the same Redis (a Celery service there never meets this one).

- :func:`conveyor_layout_options` takes the ``layout`` option and the routing guide's kombu
  priority options out of the conveyor layout's options: ``layout`` must be ``conveyor`` (or
  ``kombu``, which picks the other transport before this one is built); ``priority_steps`` and
  ``queue_order_strategy`` are accepted with a ConfigurationWarning, since this layout orders
  priorities exactly (``x-max-priority``) and they would change nothing.
- :func:`kombu_keys` finds kombu's lists and binding sets for queues.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.errors import ConfigurationError, ConfigurationWarning
from conveyor.transports.redis.client import log, make_client
from conveyor.transports.redis.kombu_layout import BINDING_PREFIX, queue_keys

__all__ = ["KOMBU_PRIORITY_OPTIONS", "conveyor_layout_options", "kombu_keys", "warn_kombu_keys"]

KOMBU_PRIORITY_OPTIONS = ("priority_steps", "queue_order_strategy")


def conveyor_layout_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` without ``layout`` and the kombu priority options (warned about)."""
    options = dict(given)
    layout = options.pop("layout", "conveyor")
    if layout != "conveyor":
        raise ConfigurationError(
            f"option 'layout' of a Redis broker must be 'conveyor' (the default) or 'kombu' "
            f"(Celery's layout, to share the broker with Celery services), got {layout!r}"
        )
    ignored = [name for name in KOMBU_PRIORITY_OPTIONS if name in options]
    for name in ignored:
        options.pop(name)
    if ignored:
        warnings.warn(
            f"broker transport option(s) {', '.join(ignored)} change nothing in conveyor's Redis "
            "layout, which orders priorities exactly (declare queues with x-max-priority); "
            "they are kombu's priority steps: set the option layout='kombu' to use them",
            ConfigurationWarning,
            stacklevel=2,
        )
    return options


async def kombu_keys(client_url: str, queues: Sequence[str]) -> dict[str, list[str]]:
    """For each of ``queues`` with kombu structures in this Redis, the keys found."""
    client = make_client(client_url)
    found: dict[str, list[str]] = {}
    try:
        for queue in queues:
            keys = [*queue_keys(queue, range(10)), BINDING_PREFIX + queue]
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                answers = await pipe.execute()
            present = [key for key, there in zip(keys, answers, strict=True) if there]
            if present:
                found[queue] = present
    finally:
        await client.aclose()
    return found


async def warn_kombu_keys(client_url: str, queues: Sequence[str]) -> None:
    """Log a warning for each consumed queue that has kombu's structures; never raises."""
    try:
        found = await kombu_keys(client_url, queues)
    except Exception as exc:
        log.debug("could not look for kombu's keys: %s", exc)
        return
    for queue, keys in found.items():
        log.warning(
            "queue %r also exists in kombu's (Celery's) Redis layout here (%s): conveyor's "
            "layout never sees those messages, nor Celery conveyor's. To share this broker "
            "with Celery services set broker_transport_options={'layout': 'kombu'}",
            queue,
            ", ".join(repr(k) for k in keys),
        )
