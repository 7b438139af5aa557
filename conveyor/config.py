"""Settings, under the names the seeds use (``task_routes``, ``task_queues``, ...).

``Settings`` is a plain, typed, mutable object: ``app.conf.task_default_queue = "default"``
(the default queue is ``"celery"``, as in Celery). Load values from a dict, an object, a module
or a module path with :meth:`Settings.update_from` (Celery's upper-case names and ``namespace=``
work too); an unknown name is a ConfigurationWarning with the closest known name, so a typo
never passes silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from conveyor.routing.entities import Broadcast, Queue
from conveyor.routing.settings import ROUTING_SETTING_NAMES, RoutingSettings
from conveyor.settings_load import read_settings

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
    task_default_queue: str = "celery"
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
    task_soft_time_limit: float | None = None  # SoftTimeLimitExceeded raised in the task
    task_default_rate_limit: str | None = None  # "10/s", "100/m", "1000/h", per worker
    task_always_eager: bool = False  # delay/apply_async run the task in the caller
    task_eager_propagates: bool = False  # ... and raise its error there at once
    task_publish_window: int = 1000  # sync sends that may return before the broker confirms

    worker_prefetch_multiplier: int = 4
    worker_concurrency: int | None = None
    worker_pool: str = "asyncio"
    worker_shutdown_grace: float = 30.0
    worker_middleware: Sequence[Any] = ()  # Middleware, subclasses, or "module:attr" paths
    worker_max_tasks_per_child: int | None = None  # processes pool: replace after N tasks
    worker_max_memory_per_child: int | None = None  # processes pool: KiB of resident memory

    timezone: str = "UTC"
    beat_schedule: Mapping[str, Any] = field(default_factory=dict)
    beat_name: str | None = None  # the lease and states' name in the broker (default: App.main)
    beat_lease: float = 5.0  # seconds a dead leader's lease outlives it
    beat_grace: float = 2.0  # seconds late a due time may be and still count as on time

    # Message signing (off unless one of secret/key is set; see conveyor/security.py).
    security_secret: str | bytes | None = None  # shared secret: HMAC-SHA256
    security_key: str | bytes | None = None  # this service's private key: a PEM file's path, or PEM
    security_key_password: str | bytes | None = None
    security_key_id: str | None = None  # the name it signs as (default: the app's main name)
    security_trusted_keys: Mapping[str, str | bytes] = field(default_factory=dict)  # id -> public

    def routing_settings(self) -> RoutingSettings:
        """A frozen snapshot of the settings that route (what a Router is built from)."""
        return RoutingSettings(**{name: getattr(self, name) for name in ROUTING_SETTING_NAMES})

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every setting name."""
        return frozenset(f.name for f in fields(cls))

    def update_from(
        self, source: Mapping[str, Any] | object, *, namespace: str | None = None
    ) -> None:
        """Set values from a dict, an object, a module or a module path string
        (``"pkg.celeryconfig"``), with the names Celery reads (see :mod:`conveyor.settings_load`:
        lower-case names, Celery's upper-case names, or only ``NAMESPACE_*`` names).

        Every name that is not a setting is a ConfigurationWarning naming it (and the nearest
        setting); ConfigurationError for a module path that cannot be imported.
        """
        for name, value in read_settings(source, self.names(), namespace=namespace).items():
            setattr(self, name, value)

    def update(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Celery's ``app.conf.update(...)``: :meth:`update_from` of ``values`` and ``more``."""
        self.update_from({**(values or {}), **more})
