"""Storage faults of a SQLite file: who may read it, the file leaving its path, a full disk.

- A new file is created with mode ``0600`` (or the mode configured), before SQLite opens it;
  SQLite gives its ``-wal`` and ``-shm`` companions the same mode, so only the owner reads the
  task arguments and results in them.
- :class:`FileIdentity` remembers which file (device and inode) a process opened. When the path
  names another file or none (deleted, replaced), every later call fails loudly instead of
  confirming writes into a file nobody else will ever read.
- :func:`is_full` recognizes a full disk, which callers wait out instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from conveyor.errors import BrokerUnavailable, ConfigurationError

__all__ = [
    "DEFAULT_FILE_MODE",
    "FileIdentity",
    "FileMoved",
    "create_private",
    "is_full",
    "parse_file_mode",
]

DEFAULT_FILE_MODE = 0o600


class FileMoved(BrokerUnavailable):
    """The file this process opened is no longer the file at its path (deleted or replaced)."""


def parse_file_mode(value: object, where: str) -> int:
    """A file mode from ``"0600"``/``"600"``/``"0o640"`` or an int; ConfigurationError else."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            raise ConfigurationError(
                f"{where}: file_mode must be an octal mode such as 0600, got {value!r}"
            ) from None
    if not 0 <= mode <= 0o777:
        raise ConfigurationError(f"{where}: file_mode {oct(mode)} is not a file permission mode")
    if not mode & 0o600 == 0o600:
        raise ConfigurationError(
            f"{where}: file_mode {oct(mode)} must let the owner read and write (0600 at least)"
        )
    return mode


def create_private(path: Path, mode: int) -> None:
    """Create ``path`` empty with ``mode`` unless it exists (another process may race us:
    whoever creates it first sets the mode). An existing file keeps the mode it has."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits the user asked for
        finally:
            os.close(fd)


class FileIdentity:
    """The file (device, inode) a process opened at ``path``; :meth:`check` that it still is."""

    __slots__ = ("_ident", "_path", "what")

    def __init__(self, path: Path, what: str) -> None:
        self._path = str(path)
        self.what = what
        st = os.stat(self._path)
        self._ident = (st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise FileMoved if the path no longer names the file opened."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            raise FileMoved(
                f"the {self.what} {self._path} was deleted while this process had it open: "
                "nothing more is written to the deleted file (what it held is lost to every "
                "other process); restart to open a new file at that path"
            ) from None
        except OSError:
            return  # a path we cannot look at now is not proof the file changed
        if (st.st_dev, st.st_ino) != self._ident:
            raise FileMoved(
                f"the {self.what} {self._path} was replaced by another file while this "
                "process had it open: nothing more is written to the old one; restart to "
                "open the file now at that path"
            )


def is_full(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the disk (or the file system holding the database) is full."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "disk is full" in str(exc)
