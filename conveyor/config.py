"""Settings, under the names the seeds use (``task_routes``, ``task_queues``, ...).

``Settings`` is a plain, typed, mutable object: ``app.conf.task_default_queue = "default"``.
Load values from a dict, an object or a module with :meth:`Settings.update_from`; unknown names
raise ConfigurationError with the closest known name, so a typo never passes silently.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from conveyor.errors import ConfigurationError
from conveyor.routing.entities import Broadcast, Queue
from conveyor.routing.settings import RoutingSettings

__all__ = ["Settings"]


@dataclass
class Settings:
    """Every setting conveyor reads. See the README for what each one does."""

    broker_url: str | None = None
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    result_backend: str | None = None
    result_expires: float | None = 86400.0

    task_routes: Any = None
    task_queues: Sequence[Queue | Broadcast] = ()
    task_default_queue: str = "default"
    task_default_exchange: str | None = None
    task_default_exchange_type: str = "direct"
    task_default_routing_key: str | None = None
    task_create_missing_queues: bool = True
    task_queue_max_priority: int | None = None
    task_default_priority: int | None = None
    task_dead_letter_queue: str = "dead_letter"
    task_serializer: str = "json"
    accept_content: Sequence[str] = ("json",)
    task_acks_late: bool = True
    task_ignore_result: bool = False
    task_time_limit: float | None = None
    task_track_started: bool = False
    task_publish_window: int = 1000  # sync sends that may return before the broker confirms

    worker_prefetch_multiplier: int = 4
    worker_concurrency: int | None = None
    worker_pool: str = "asyncio"
    worker_shutdown_grace: float = 30.0

    timezone: str = "UTC"
    beat_schedule: Mapping[str, Any] = field(default_factory=dict)
    beat_name: str | None = None  # the lease and states' name in the broker (default: App.main)
    beat_lease: float = 5.0  # seconds a dead leader's lease outlives it
    beat_grace: float = 2.0  # seconds late a due time may be and still count as on time

    def routing_settings(self) -> RoutingSettings:
        """A frozen snapshot of the settings that route (what a Router is built from)."""
        return RoutingSettings(
            task_routes=self.task_routes,
            task_queues=self.task_queues,
            task_default_queue=self.task_default_queue,
            task_default_exchange=self.task_default_exchange,
            task_default_exchange_type=self.task_default_exchange_type,
            task_default_routing_key=self.task_default_routing_key,
            task_create_missing_queues=self.task_create_missing_queues,
            task_queue_max_priority=self.task_queue_max_priority,
            task_default_priority=self.task_default_priority,
        )

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every setting name."""
        return frozenset(f.name for f in fields(cls))

    def update_from(self, source: Mapping[str, Any] | object) -> None:
        """Set values from a dict, an object or a module (its lowercase public attributes).

        Raises ConfigurationError for a name that is not a setting, suggesting the nearest one.
        """
        if isinstance(source, Mapping):
            items = dict(source)
            strict = True
        else:
            items = {
                name: getattr(source, name)
                for name in dir(source)
                if not name.startswith("_") and name.islower()
            }
            # A module or object also holds imports and helpers; only names that look like
            # settings (those starting with a known prefix) are checked strictly.
            strict = False
        known = self.names()
        prefixes = ("task_", "worker_", "broker_", "result_", "beat_")
        for name, value in items.items():
            if name in known:
                setattr(self, name, value)
                continue
            if isinstance(value, types.ModuleType) or (
                not strict and not name.startswith(prefixes)
            ):
                continue
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown setting {name!r}{hint}")
