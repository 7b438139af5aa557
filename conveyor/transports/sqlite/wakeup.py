"""Wake-ups between the processes sharing a SQLite file: Unix datagram sockets, one per listener.

A listener binds a socket under ``<db>-wake/s/`` (or under the temporary directory when that
path would be too long for a socket), named after its process id, and links it from the
directory of each channel it listens on (``<db>-wake/<space>/<digest of the channel>/``). A
writer, right after it commits, sends one byte to every socket linked from the channels it
wrote to: an idle listener wakes within a millisecond and costs no CPU while it waits. A
wake-up is a hint; a listener's owner still polls slowly (its ``poll_interval``) should one be
lost to a full socket buffer.

The broker's channels are its queues (space ``q``); the result backend has one channel in a
space of its own. Sockets of processes that died are removed by the next writer that finds
them refusing, and by :meth:`Waker.clean_stale`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from conveyor.errors import BrokerUnavailable
from conveyor.transports.storage import EventListener

__all__ = ["SocketListener", "Waker", "wake_root"]

_SOCKET_PATH_MAX = 107


def wake_root(db: Path) -> Path:
    """The directory that holds the wake-up sockets of the database file ``db``."""
    beside = Path(f"{db}-wake")
    # socket paths under it: <root>/q/<24 hex>/<id>, with ids of up to 40 characters
    if len(os.fsencode(beside)) + 70 <= _SOCKET_PATH_MAX:
        return beside
    digest = hashlib.sha1(os.fsencode(db.resolve())).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"conveyor-wake-{os.getuid()}" / digest


class Waker:
    """Sends wake-ups to the sockets listening on channels of one database, in one space.

    :meth:`signal` may be called from any thread (the database's, right after a commit).
    """

    def __init__(self, db: Path, *, space: str = "q") -> None:
        self.root = wake_root(db)
        self._space = space
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._listing: dict[str, tuple[int, list[str]]] = {}

    def channel_dir(self, channel: str) -> str:
        digest = hashlib.sha1(channel.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        return os.path.join(self.root, self._space, digest)

    def _entries(self, directory: str) -> list[str]:
        try:
            st = os.stat(directory)
        except OSError:
            return []
        cached = self._listing.get(directory)
        # a directory changed within the last 100 ms may change again without a new mtime
        settled = time.time_ns() - st.st_mtime_ns > 100_000_000
        if cached is not None and cached[0] == st.st_mtime_ns and settled:
            return cached[1]
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        self._listing[directory] = (st.st_mtime_ns, names)
        return names

    def signal(self, channels: Iterable[str]) -> None:
        """Wake every listener of ``channels`` (best effort, never raises)."""
        for channel in set(channels):
            directory = self.channel_dir(channel)
            for name in self._entries(directory):
                path = os.path.join(directory, name)
                try:
                    self._sender.sendto(b"!", path)
                except (BlockingIOError, InterruptedError):
                    pass  # its buffer is full: it has wake-ups waiting already
                except (ConnectionRefusedError, FileNotFoundError):
                    self._forget(path)
                except OSError:
                    pass

    def _forget(self, link: str) -> None:
        # the socket's process is gone: remove its link and the socket file
        with contextlib.suppress(OSError):
            target = os.readlink(link)
            os.unlink(link)
            os.unlink(target)

    def clean_stale(self) -> None:
        """Remove sockets of processes that no longer exist (names start with their pid)."""
        sockets = self.root / "s"
        try:
            names = os.listdir(sockets)
        except OSError:
            return
        for name in names:
            pid_text = name.split("-", 1)[0]
            if not pid_text.isdigit():
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(sockets / name)
            except OSError:
                pass

    def listen(self, channels: Sequence[str]) -> SocketListener:
        """A listener woken by :meth:`signal` of any of ``channels``, in any process; on the
        running event loop. BrokerUnavailable if its socket cannot be made."""
        return SocketListener(self, channels)

    def close(self) -> None:
        self._sender.close()


class SocketListener(EventListener):
    """A socket of this process, linked from the directories of the channels it listens on."""

    def __init__(self, waker: Waker, channels: Sequence[str]) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        ident = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        sockets = waker.root / "s"
        sockets.mkdir(parents=True, exist_ok=True)
        self._path = str(sockets / ident)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._links: list[str] = []
        try:
            self._sock.bind(self._path)
            self._sock.setblocking(False)
            for channel in channels:
                directory = waker.channel_dir(channel)
                os.makedirs(directory, exist_ok=True)
                link = os.path.join(directory, ident)
                os.symlink(self._path, link)
                self._links.append(link)
        except OSError as exc:
            self._remove_files()
            raise BrokerUnavailable(
                f"cannot create the wake-up socket under {waker.root}: {exc}"
            ) from exc
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        self._event.set()

    def _remove_files(self) -> None:
        for path in [*self._links, self._path]:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._sock.close()

    def _stop_listening(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._remove_files()
