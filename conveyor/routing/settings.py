"""The routing settings: a frozen snapshot of the settings that decide where messages go.

The router, the declarations and the routing lint read only these nine values, under the names
the seeds use. An application builds the snapshot from its own settings (``Settings`` has
``routing_settings()``); every function of this package that takes settings accepts either the
snapshot or such an object, so routing never imports the layers above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from conveyor.routing.entities import Broadcast, Queue

__all__ = ["ROUTING_SETTING_NAMES", "HasRoutingSettings", "RoutingSettings", "routing_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingSettings:
    """The settings that route: ``task_routes`` (rules, see :mod:`conveyor.routing.rules`),
    ``task_queues`` (the declared queues and broadcasts), the ``task_default_*`` destination and
    priority, ``task_create_missing_queues`` and ``task_queue_max_priority``.

    Values are kept as given; the Router and :func:`~conveyor.routing.declarations.declare`
    check them and raise TopologyError or RoutingError for invalid ones.
    """

    task_routes: Any
    task_queues: Sequence[Queue | Broadcast]
    task_default_queue: str
    task_default_exchange: str | None
    task_default_exchange_type: str
    task_default_routing_key: str | None
    task_create_missing_queues: bool
    task_queue_max_priority: int | None
    task_default_priority: int | None


ROUTING_SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RoutingSettings))
"""The names of the routing settings, in :class:`RoutingSettings` order."""


class HasRoutingSettings(Protocol):
    """Settings that can give their routing snapshot (an application's ``Settings``)."""

    def routing_settings(self) -> RoutingSettings:
        """The current routing settings, frozen."""
        ...


def routing_settings(settings: RoutingSettings | HasRoutingSettings) -> RoutingSettings:
    """``settings`` itself if it is a snapshot, else the snapshot it gives."""
    if isinstance(settings, RoutingSettings):
        return settings
    return settings.routing_settings()
