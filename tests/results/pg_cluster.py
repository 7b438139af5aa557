"""A private PostgreSQL cluster for fault tests: made with initdb, on a free port in 5441-5449,
run as the ``postgres`` user, restartable at will, and always stopped and removed at the end.

The shared server on 5432 is never touched. Its password authentication is real
(scram-sha-256), so a wrong password is refused as it would be in production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PASSWORD = "fault-test-pw"
PORTS = range(5441, 5450)


def _bin(name: str) -> str:
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        candidate = version / "bin" / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return found


def _as_postgres(*argv: str) -> tuple[int, str]:
    """Run as the postgres user; (exit code, output). Output goes through a file, not a pipe: a
    server started by pg_ctl inherits it and would hold a pipe open for ever."""
    command = list(argv)
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    with tempfile.TemporaryFile(mode="w+") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False
        ).returncode
        out.seek(0)
        return code, out.read()


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 5441-5449 for a private PostgreSQL")


class Cluster:
    """A private PostgreSQL cluster (see module)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"

    def _ctl(self, *args: str) -> None:
        code, output = _as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args)
        if code != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {output}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._ctl("-o", options, "-l", str(self.root / "log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self._ctl("-m", "fast", "-l", str(self.root / "log"), "restart")


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A running private cluster; stopped and deleted afterwards, whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = Cluster(root, _free_port())
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    code, output = _as_postgres(
        _bin("initdb"),
        "-D",
        str(cluster.data),
        "-U",
        "postgres",
        "--auth=scram-sha-256",
        f"--pwfile={pwfile}",
        "--no-sync",
    )
    if code != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {output}")
    try:
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
