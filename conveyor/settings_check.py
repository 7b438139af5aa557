"""Checking the settings as a whole when an App is configured, so that a wrong value fails
where it is written (``App(...)``, ``config_from_object``) and not at the first send.

What is checked needs no I/O: the routing settings (a Router is built from them, which checks
``task_queues``, the defaults and the form of ``task_routes``), the broker and result backend
URLs (their transports are built, not connected), the serializer and accepted content, the
worker's pool, concurrency, prefetch and grace, the time settings, and the time zone.
``beat_schedule`` is checked by beat when it starts; each ``task_routes`` rule's destination
by ``conveyor routes check`` (see :func:`_check_routes`).
"""

from __future__ import annotations

import os
import zoneinfo
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigurationError
from conveyor.protocol.task_message import CONTENT_TYPES
from conveyor.results import open_backend
from conveyor.routing.router import Router
from conveyor.transports import open_transport

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.results.base import BackendHost

__all__ = ["WORKER_POOLS", "check_settings"]

WORKER_POOLS = ("asyncio", "threads", "processes")
"""The ``worker_pool`` values a worker knows."""


def check_settings(conf: Settings, *, host: BackendHost) -> Router:
    """Raise ConfigurationError (TopologyError, RoutingError) naming the first wrong setting
    of ``conf`` and what to write instead; return the Router the routing settings give.

    ``host`` is what a result backend is built for (the App). A broker or backend left unset
    is checked in its environment variable (``CONVEYOR_BROKER_URL``,
    ``CONVEYOR_RESULT_BACKEND``) if that is set; the built-in defaults are always valid.
    """
    router = Router(conf.routing_settings())
    _check_routes(router)
    broker = conf.broker_url or os.environ.get("CONVEYOR_BROKER_URL")
    if broker:
        open_transport(broker, conf.broker_transport_options)
    backend = conf.result_backend or os.environ.get("CONVEYOR_RESULT_BACKEND")
    if backend:
        open_backend(backend, host=host)
    _check_content(conf)
    _check_worker(conf)
    _check_times(conf)
    return router


def _check_routes(router: Router) -> None:
    """Resolve the default route (the default queue and exchange must exist).

    Each ``task_routes`` rule is left to ``conveyor routes check``, which lists every finding
    at once (shadowed rules, undeclared queues, routes no queue receives): an app with such a
    rule still loads, so that the command can look at it, and a send that uses the rule
    raises RoutingError or Unroutable naming it.
    """
    router.resolve([])


def _check_content(conf: Settings) -> None:
    known = ", ".join(sorted(CONTENT_TYPES))
    if conf.task_serializer not in CONTENT_TYPES:
        raise ConfigurationError(
            f"task_serializer {conf.task_serializer!r} is not a serializer: use one of {known}"
        )
    accept = conf.accept_content
    if isinstance(accept, str) or not all(name in CONTENT_TYPES for name in accept):
        raise ConfigurationError(
            f"accept_content must list serializer names out of {known}, got {accept!r}"
        )


def _check_worker(conf: Settings) -> None:
    if conf.worker_pool not in WORKER_POOLS:
        raise ConfigurationError(
            f"worker_pool {conf.worker_pool!r} is not a pool: use one of {', '.join(WORKER_POOLS)}"
        )
    _whole(conf.worker_concurrency, "worker_concurrency", least=1, optional=True)
    _whole(conf.worker_prefetch_multiplier, "worker_prefetch_multiplier", least=0)


def _check_times(conf: Settings) -> None:
    for name in ("worker_shutdown_grace", "beat_lease", "beat_grace"):
        _number(getattr(conf, name), name, optional=False)
    for name in ("result_expires", "task_time_limit"):
        _number(getattr(conf, name), name, optional=True)
    if conf.task_time_limit is not None and conf.task_time_limit <= 0:
        raise ConfigurationError(
            "task_time_limit must be more than zero seconds (or None), got "
            f"{conf.task_time_limit!r}"
        )
    zone: Any = conf.timezone
    if isinstance(zone, tzinfo):
        return
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"timezone: unknown time zone {zone!r}: use an IANA name such as 'UTC' or "
            "'Europe/Berlin'"
        ) from exc


def _whole(value: Any, name: str, *, least: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        extra = " (or None for the CPU count)" if optional else ""
        raise ConfigurationError(
            f"{name} must be a whole number {least} or more{extra}, got {value!r}"
        )


def _number(value: Any, name: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        extra = " (or None)" if optional else ""
        raise ConfigurationError(f"{name} must be zero or more seconds{extra}, got {value!r}")
