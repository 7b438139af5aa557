"""Reading settings the ways Celery users write them: a dict, an object, a module or a module
path, with lower-case names, Celery's old upper-case names or a ``namespace=`` prefix.

:func:`read_settings` turns a source into ``{setting name: value}`` for the names conveyor
knows and warns (:class:`~conveyor.errors.ConfigurationWarning`) for every name it does not,
with the closest known name when there is one: a setting is never dropped silently.

Names are read as Celery 5 reads them:

- ``namespace="CELERY"``: only names starting with ``CELERY_`` are settings; the prefix is
  dropped and the rest lower-cased (``CELERY_BROKER_URL`` -> ``broker_url``,
  ``CELERY_TASK_ROUTES`` -> ``task_routes``). Other names (a Django settings module's
  ``DEBUG``...) are not settings and are left alone.
- without a namespace, lower-case names are settings; an upper-case name is either one of
  Celery's old names (``BROKER_URL``, ``CELERY_RESULT_BACKEND``, ``CELERY_ROUTES``...), or a new
  name under the ``CELERY_`` prefix (``CELERY_TASK_ROUTES``), or plainly upper-cased
  (``TASK_ROUTES``).
- in a module or object, imported modules, classes and functions are not settings, nor are
  names starting with ``_``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from conveyor.errors import ConfigurationError, ConfigurationWarning

__all__ = ["CELERY_OLD_NAMES", "import_source", "read_settings", "setting_name"]

# Celery 3's names, still read by Celery 5, for the settings conveyor has.
CELERY_OLD_NAMES: Mapping[str, str] = {
    "BROKER_URL": "broker_url",
    "BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_ROUTES": "task_routes",
    "CELERY_QUEUES": "task_queues",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_CREATE_MISSING_QUEUES": "task_create_missing_queues",
    "CELERY_QUEUE_MAX_PRIORITY": "task_queue_max_priority",
    "CELERY_DEFAULT_PRIORITY": "task_default_priority",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERY_TRACK_STARTED": "task_track_started",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_POOL": "worker_pool",
    "CELERY_TIMEZONE": "timezone",
    "CELERYBEAT_SCHEDULE": "beat_schedule",
}


def import_source(path: str) -> object:
    """The module (``"pkg.celeryconfig"``) or attribute (``"pkg.settings:CONFIG"``,
    ``"pkg.settings.CONFIG"``) named by ``path``.

    Raises ConfigurationError naming ``path`` when it cannot be imported.
    """
    module_name, colon, attribute = path.partition(":")
    if not colon:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            # "pkg.settings.CONFIG": the last part may be an attribute of a module.
            module_name, _, attribute = path.rpartition(".")
            if not module_name or exc.name not in (path, None):
                raise ConfigurationError(
                    f"cannot import the settings module {path!r}: {exc}; check the dotted path "
                    "and that its package is importable (on sys.path)"
                ) from exc
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import the settings module {module_name!r} (from {path!r}): {exc}"
        ) from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"cannot load settings from {path!r}: module {module_name!r} has no {attribute!r}"
        ) from None


def setting_name(key: str, known: frozenset[str], namespace: str | None = None) -> str | None:
    """The setting ``key`` names, or None when ``key`` is not a setting name at all (another
    namespace's name). The result may be a name conveyor does not know: the caller warns.
    """
    if namespace:
        prefix = f"{namespace}_"
        if key.startswith(prefix):
            return key[len(prefix) :].lower()
        return None
    if not key.isupper():
        return key
    if key in CELERY_OLD_NAMES:
        return CELERY_OLD_NAMES[key]
    lowered = key.lower()
    if lowered.startswith("celery_") and lowered[7:] in known:
        return lowered[7:]
    return lowered


def _candidates(source: object) -> Iterable[tuple[str, Any]]:
    if isinstance(source, Mapping):
        for key, value in source.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"a setting name must be a str, got {key!r}")
            yield key, value
        return
    for key in dir(source):
        if key.startswith("_"):
            continue
        value = getattr(source, key)
        if isinstance(value, types.ModuleType) or inspect.isclass(value):
            continue
        if inspect.isroutine(value):
            continue
        yield key, value


def read_settings(
    source: Mapping[str, Any] | object, known: frozenset[str], *, namespace: str | None = None
) -> dict[str, Any]:
    """``{setting: value}`` read from ``source`` (a dict, object, module or module path string).

    Every name that is a setting name but not one of ``known`` is warned about with
    ConfigurationWarning, naming it and the closest known name; ConfigurationError for a module
    path that cannot be imported.
    """
    if isinstance(source, str):
        source = import_source(source)
    values: dict[str, Any] = {}
    for key, value in _candidates(source):
        name = setting_name(key, known, namespace)
        if name is None:
            continue
        if name in known:
            values[name] = value
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        spelled = repr(key) if key == name else f"{key!r} (read as {name!r})"
        warnings.warn(
            f"unknown setting {spelled} is ignored: conveyor has no such setting{hint}",
            ConfigurationWarning,
            stacklevel=4,
        )
    return values
