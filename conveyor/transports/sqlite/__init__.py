"""``sqlite:///path/broker.db``: the embedded broker, shared by processes on one machine.

The virtual broker (:mod:`conveyor.transports.virtual`) over a SQLite file in WAL mode. Every
connection runs its sqlite3 calls on a thread of its own (:mod:`.database`), so the event loop
never blocks on the disk. Writes are
transactions (``BEGIN IMMEDIATE``): a publish returns once its transaction committed, so a
confirmed message survives any process being killed at any moment (``synchronous=normal``,
the default, protects against process crashes; ``synchronous=full`` also against power loss).

Leases: each connection renews its lease every quarter ``lease`` (default 5 s); when a process
dies, the messages it held come back, redelivered, once its lease lapses.

Wake-ups (:mod:`.wakeup`): each waiting consumer binds a Unix datagram socket under
``<db>-wake/`` (or under the temporary directory when that path would be too long for a
socket), linked from one directory per queue it consumes. A publisher sends a byte to the
sockets of the queues it wrote to, right after its commit, so an idle consumer wakes within a
millisecond and costs no CPU while it waits; ``poll_interval`` (default 1 s) bounds the wait
should a wake-up be lost.

URL forms: ``sqlite:///absolute/path/broker.db``, ``sqlite://relative/path/broker.db``; options
as query parameters or ``broker_transport_options``: ``lease``, ``poll_interval``,
``busy_timeout`` (seconds to wait for the write lock, default 30), ``synchronous``
(``normal`` or ``full``) and ``file_mode`` (the permissions a new file and its ``-wal``/``-shm``
get, default ``0600``: only its owner reads task arguments; see :mod:`.file_faults`).
:func:`default_broker_url` names the default file: one per user and machine, in
:func:`state_directory`, so every process of that user meets on it whatever its working
directory.

The package: :mod:`.schema` (the tables and how a file is known as conveyor's), :mod:`.codec`
(entities and messages in rows), :mod:`.database`, :mod:`.wakeup`, :mod:`.storage` (the
storage primitives) and, here, the URL and the transport.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import unquote, urlsplit

import platformdirs

from conveyor.errors import ConfigurationError
from conveyor.transports.base import Capabilities
from conveyor.transports.sqlite.file_faults import parse_file_mode
from conveyor.transports.sqlite.schema import SCHEMA_VERSION
from conveyor.transports.sqlite.storage import SQLiteStorage
from conveyor.transports.virtual import VirtualTransport, virtual_capabilities
from conveyor.urls import parse_options

__all__ = [
    "DEFAULT_DATABASE_NAME",
    "SCHEMA_VERSION",
    "STATE_DIR_ENV",
    "SQLiteStorage",
    "SQLiteTransport",
    "database_path",
    "default_broker_url",
    "state_directory",
]

DEFAULT_DATABASE_NAME = "conveyor-broker.db"
STATE_DIR_ENV = "CONVEYOR_STATE_DIR"


def state_directory() -> Path:
    """Where conveyor keeps this user's state on this machine (the default broker's file):
    ``$CONVEYOR_STATE_DIR`` if set, else the platform's per-user state directory
    (``$XDG_STATE_HOME/conveyor``, by default ``~/.local/state/conveyor``, on Linux;
    ``~/Library/Application Support/conveyor`` on macOS; ``%LOCALAPPDATA%\\conveyor`` on
    Windows). Created (only the owner may enter it) if missing; ConfigurationError if it
    cannot be.
    """
    given = os.environ.get(STATE_DIR_ENV)
    path = Path(given) if given else Path(platformdirs.user_state_dir("conveyor", False))
    path = path.expanduser().absolute()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create conveyor's state directory {path} ({exc.strerror}): set "
            f"{STATE_DIR_ENV} to a directory you can write, or give a broker URL "
            "(CONVEYOR_BROKER_URL or the broker_url setting)"
        ) from exc
    return path


def default_broker_url(directory: str | os.PathLike[str] | None = None) -> str:
    """The broker URL used when none is configured: ``conveyor-broker.db`` in ``directory``,
    by default the user's :func:`state_directory` (created if missing)."""
    base = Path(directory) if directory is not None else state_directory()
    return f"sqlite://{(base / DEFAULT_DATABASE_NAME).absolute()}"


def database_path(url: str) -> Path:
    """The database file a ``sqlite://`` URL names; ConfigurationError if it names none.

    ``sqlite:///abs/path.db`` (and ``sqlite:////abs/path.db``) is absolute;
    ``sqlite://rel/path.db`` and ``sqlite:rel/path.db`` are relative to the working directory.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {url!r}")
    raw = unquote(parts.netloc + parts.path)
    if parts.path.startswith("//"):
        raw = "/" + parts.path.lstrip("/")
    example = "sqlite:///absolute/path/broker.db or sqlite://relative/broker.db"
    if not raw or raw in (":memory:", "/:memory:"):
        raise ConfigurationError(
            f"broker URL {url!r} names no database file: use {example} (memory:// for a "
            "broker inside one process)"
        )
    if raw.endswith("/"):
        raise ConfigurationError(f"broker URL {url!r} names a directory, not a file: use {example}")
    if "\x00" in raw:
        raise ConfigurationError(f"broker URL {url!r} contains a NUL character")
    return Path(raw).absolute()


_OPTIONS: dict[str, tuple[type, Any]] = {
    "lease": (float, 5.0),
    "poll_interval": (float, 1.0),
    "busy_timeout": (float, 30.0),
    "synchronous": (str, "normal"),
    "file_mode": (str, "0600"),
}


class SQLiteTransport(VirtualTransport):
    """The embedded broker on a SQLite file; see the module docstring."""

    capabilities: ClassVar[Capabilities] = virtual_capabilities(shared=True)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Self:
        path = database_path(url)
        values = parse_options(url, options or {}, _OPTIONS)
        synchronous = str(values["synchronous"]).lower()
        if synchronous not in ("normal", "full"):
            raise ConfigurationError(
                f"option 'synchronous' of broker URL {url!r} must be 'normal' or 'full', "
                f"got {values['synchronous']!r}"
            )
        storage = SQLiteStorage(
            path,
            busy_timeout=values["busy_timeout"],
            synchronous=synchronous,
            file_mode=parse_file_mode(values["file_mode"], f"broker URL {url!r}"),
        )
        return cls(url, storage, lease=values["lease"], poll_interval=values["poll_interval"])
