"""The beat store for an app's broker URL (``memory``, ``sqlite``, ``redis``, ``amqp``)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from conveyor.beat.store import BeatStore
from conveyor.errors import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import App

__all__ = ["open_store"]


def open_store(app: App, beat: str, *, lease: float) -> BeatStore:
    """An unopened store for ``app``'s broker, keeping beat ``beat``'s lease and states.

    Raises ConfigurationError for a broker no store is written for, or a lease of 0 or less.
    """
    if not lease > 0:
        raise ConfigurationError(f"beat_lease must be more than zero seconds, got {lease!r}")
    url = app.broker_url
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from conveyor.beat.store_memory import MemoryBeatStore

        return MemoryBeatStore(url, beat, lease=lease)
    if scheme == "sqlite":
        from conveyor.beat.store_sqlite import SQLiteBeatStore

        return SQLiteBeatStore(url, beat, lease=lease)
    if scheme in ("redis", "rediss"):
        from conveyor.beat.store_redis import RedisBeatStore

        return RedisBeatStore(url, beat, lease=lease, options=app.conf.broker_transport_options)
    if scheme in ("amqp", "amqps"):
        from conveyor.beat.store_amqp import AmqpBeatStore

        return AmqpBeatStore(app, beat, lease=lease)
    raise ConfigurationError(f"beat has no store for broker URL scheme {scheme!r}")
