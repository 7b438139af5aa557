"""Task results: states, the backend interface, the backends, and AsyncResult.

The URL's scheme picks the backend: ``memory://``, ``sqlite:///path``, ``rpc://``,
``redis://`` or ``postgresql://``. Implementations are imported lazily.
"""

from __future__ import annotations

from conveyor.results.base import BackendHost, ResultBackend, StoreRequest
from conveyor.results.meta import READY_STATES, ResultMeta, State
from conveyor.urls import class_for_url

__all__ = [
    "BACKENDS",
    "READY_STATES",
    "BackendHost",
    "ResultBackend",
    "ResultMeta",
    "State",
    "StoreRequest",
    "open_backend",
]

# scheme -> "module:Class"
BACKENDS: dict[str, str] = {
    "memory": "conveyor.results.memory:MemoryBackend",
    "sqlite": "conveyor.results.sqlite:SQLiteBackend",
    "rpc": "conveyor.results.rpc:RPCBackend",
    "redis": "conveyor.results.redis:RedisBackend",
    "rediss": "conveyor.results.redis:RedisBackend",
    "postgresql": "conveyor.results.postgres:PostgresBackend",
    "postgres": "conveyor.results.postgres:PostgresBackend",
    # the Django project's database (needs Django; see conveyor.contrib.django)
    "django": "conveyor.contrib.django.backend:DjangoBackend",
}


def backend_class(url: str) -> type[ResultBackend]:
    """The ResultBackend class serving ``url``; ConfigurationError for an unknown scheme."""
    cls: type[ResultBackend] = class_for_url(url, BACKENDS, what="result backend")
    return cls


def open_backend(url: str, *, host: BackendHost) -> ResultBackend:
    """Build the (unconnected) backend for ``url``; ConfigurationError for a bad URL."""
    return backend_class(url).from_url(url, host=host)
