"""Celery's ways of naming a result backend, read as conveyor's URLs.

Celery accepts a bare backend name (``result_backend = "rpc"``, the seeds' literal), a name with
``://`` (``"rpc://"``) and ``name+url`` forms (``"db+sqlite:///results.db"``,
``"cache+memory://"``). :func:`backend_url` turns each into the URL conveyor's backends take;
a Celery backend conveyor does not have is a ConfigurationError naming the ones it has.
"""

from __future__ import annotations

from collections.abc import Collection

from conveyor.errors import ConfigurationError

__all__ = ["CELERY_ONLY_BACKENDS", "backend_url"]

# Celery's backend names (celery.app.backends.BACKEND_ALIASES) that conveyor has no backend for.
CELERY_ONLY_BACKENDS = frozenset(
    {
        "arangodb",
        "azureblockblob",
        "cache",
        "cassandra",
        "consul",
        "cosmosdbsql",
        "couchbase",
        "couchdb",
        "disabled",
        "dynamodb",
        "elasticsearch",
        "file",
        "gs",
        "mongodb",
        "riak",
        "s3",
        "sentinel",
    }
)

# Celery's "name+url" prefixes whose URL conveyor reads itself.
_WRAPPERS = ("db+", "database+", "cache+")


def backend_url(value: str, schemes: Collection[str]) -> str:
    """The conveyor URL for ``value``, a result backend as Celery accepts it.

    ``schemes`` are the URL schemes conveyor has a backend for. A bare name among them becomes
    ``name://`` (``"rpc"`` -> ``"rpc://"``, ``"redis"`` -> ``"redis://"``: localhost);
    ``db+URL``, ``database+URL`` and ``cache+URL`` become ``URL``. Other values are returned
    as they are (the backend registry reports an unknown scheme). Raises ConfigurationError for
    a Celery backend conveyor does not have, naming what it has instead.
    """
    text = value.strip()
    lowered = text.lower()
    for prefix in _WRAPPERS:
        if lowered.startswith(prefix) and "://" in text:
            return text[len(prefix) :]
    if "://" in text:
        return text
    if lowered in schemes:
        return f"{lowered}://"
    known = ", ".join(f"{s}://" for s in sorted(schemes))
    if lowered in CELERY_ONLY_BACKENDS:
        hint = (
            "; to store no results set task_ignore_result = True" if lowered == "disabled" else ""
        )
        raise ConfigurationError(
            f"result backend {value!r} is one of Celery's that conveyor does not have: "
            f"use one of {known}{hint}"
        )
    raise ConfigurationError(
        f"result backend {value!r} is neither a URL nor a backend name: use one of {known} "
        "(a bare name such as 'rpc' or 'redis' works too)"
    )
