"""``django://`` (or ``django://ALIAS``): results in the project's own database, through the ORM.

Rows are :class:`~conveyor.contrib.django.models.TaskResult` (``manage.py migrate`` creates the
table), in the database ``ALIAS`` of ``DATABASES`` (default ``default``): any database Django
supports. ORM calls run on one thread of the backend's own, so the event loop never blocks and
the thread keeps its database connection. After the transaction that stores a result commits,
the backend sends :data:`~conveyor.contrib.django.signals.task_succeeded` or
:data:`~conveyor.contrib.django.signals.task_failed` for each ready result.

Waiting: a waiter in the storing process is woken at once. On PostgreSQL the store also NOTIFYs,
in its transaction, and waiters in other processes share one LISTEN connection per process (as
``postgresql://`` does), so nothing polls. Databases without notifications (SQLite, MySQL...)
are read again every ``poll`` seconds (``django://default?poll=0.5``, default 1) by a waiter in
another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

from conveyor.errors import BrokerUnavailable, ConfigurationError
from conveyor.results import postgres_listener
from conveyor.results.base import BackendHost, BatchingBackend, StoreRequest, Watch
from conveyor.results.meta import ResultMeta, exception_from_result, pick_result
from conveyor.results.postgres_connection import PgConnection, PgOptions
from conveyor.results.waiters import Waiters
from conveyor.urls import parse_options

__all__ = ["DjangoBackend"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_OPTIONS: dict[str, tuple[type, Any]] = {"poll": (float, 1.0)}
_CHANNEL = "conveyor_taskresult"
_LIBPQ_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "options", "service", "passfile")


def _ensure_django() -> None:
    from django.apps import apps

    if not apps.ready and not apps.loading:
        import django

        django.setup()


def _row(request: StoreRequest, use_tz: bool) -> dict[str, Any]:
    meta = request.meta
    done = None
    if meta.date_done is not None:
        done = datetime.fromtimestamp(meta.date_done, UTC)
        if not use_tz:
            done = done.astimezone().replace(tzinfo=None)
    return {
        "task_id": meta.task_id,
        "worker": (meta.worker or "?") if request.per_worker else "",
        "task_name": meta.task or "",
        "state": meta.state.value,
        "result": meta.to_dict()["result"],
        "traceback": meta.traceback or "",
        "ran_on": meta.worker or "",
        "date_done": done,
        "meta": meta.to_json().decode(),
    }


def _announce(metas: Sequence[ResultMeta]) -> None:
    from conveyor.contrib.django.models import TaskResult
    from conveyor.contrib.django.signals import task_failed, task_succeeded

    for meta in metas:
        if meta.state.value == "SUCCESS":
            sent = task_succeeded.send_robust(
                TaskResult, task_id=meta.task_id, task_name=meta.task, result=meta.result
            )
        elif meta.state.value == "FAILURE":
            sent = task_failed.send_robust(
                TaskResult,
                task_id=meta.task_id,
                task_name=meta.task,
                error=exception_from_result(meta.result, meta.traceback),
                traceback=meta.traceback,
            )
        else:
            continue
        for receiver, outcome in sent:
            if isinstance(outcome, Exception):
                log.error(
                    "a receiver %r of task %s's signal failed",
                    receiver,
                    meta.task_id,
                    exc_info=outcome,
                )


class _PollingWatch:
    """A watch woken by a store in this process, and which also says "read again" every
    ``poll`` seconds (this database has no notifications to wake it from another process)."""

    def __init__(self, waiters: Waiters, task_id: str, poll: float) -> None:
        self._waiters = waiters
        self._task_id = task_id
        self._poll = poll
        self._fut = waiters.watch(task_id)

    def close(self) -> None:
        self._waiters.unwatch(self._task_id, self._fut)

    async def changed(self, timeout: float | None) -> bool:
        wait = self._poll if timeout is None else max(0.0, min(self._poll, timeout))
        await asyncio.wait({self._fut}, timeout=wait)
        if self._fut.done():
            self._waiters.unwatch(self._task_id, self._fut)
            self._fut = self._waiters.watch(self._task_id)
            return True
        return timeout is None or timeout > self._poll


class DjangoBackend(BatchingBackend):
    """Results in the Django project's database (see module)."""

    def __init__(self, url: str, *, alias: str, poll: float) -> None:
        self.url = url
        self.alias = alias
        self.poll = poll
        self._executor: ThreadPoolExecutor | None = None
        self._waiters = Waiters()
        self._pg: PgConnection | None = None
        self._listener: postgres_listener.Listener | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, host: BackendHost) -> Self:
        values = parse_options(url, {}, _OPTIONS, what="result backend URL")
        alias = urlsplit(url).netloc or "default"
        return cls(url, alias=alias, poll=values["poll"])

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise BrokerUnavailable(f"the result backend {self.url} is closed")
        if self._executor is None:
            await self.connect()
        assert self._executor is not None
        from django.db import DatabaseError, InterfaceError, connections

        def call() -> T:
            try:
                return fn()
            except (DatabaseError, InterfaceError) as exc:
                connections[self.alias].close()  # a broken connection is made anew next time
                raise BrokerUnavailable(
                    f"result backend {self.url}: database {self.alias!r} failed: {exc}; "
                    "is it migrated (manage.py migrate) and running?"
                ) from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def connect(self) -> None:
        if self._executor is not None:
            return
        if self._closed:
            raise BrokerUnavailable(f"the result backend {self.url} is closed")
        _ensure_django()
        from django.db import connections

        if self.alias not in connections.settings:
            raise ConfigurationError(
                f"result backend {self.url}: no database {self.alias!r} in DATABASES"
            )
        settings = connections[self.alias].settings_dict
        if connections[self.alias].vendor == "postgresql":
            self._pg = _pg_connection(self.url, settings)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-django-results")

    async def close(self) -> None:
        if self._closed:
            return
        executor = self._executor
        if executor is not None:
            from django.db import connections

            with contextlib.suppress(Exception):
                # looked up on the executor's thread: Django's connections are per thread
                await asyncio.get_running_loop().run_in_executor(
                    executor, lambda: connections[self.alias].close()
                )
            executor.shutdown(wait=False)
        self._closed = True
        self._waiters.wake_all()
        listener, self._listener = self._listener, None
        if listener is not None:
            await postgres_listener.release(listener)

    def _write(self, requests: Sequence[StoreRequest]) -> None:
        from django.conf import settings
        from django.db import connections, transaction

        from conveyor.contrib.django.models import TaskResult

        rows = [_row(request, settings.USE_TZ) for request in requests]
        with transaction.atomic(using=self.alias):
            for row in rows:
                TaskResult.objects.using(self.alias).update_or_create(
                    task_id=row.pop("task_id"), worker=row.pop("worker"), defaults=row
                )
            if self._pg is not None:
                with connections[self.alias].cursor() as cursor:
                    ids = "\n".join(dict.fromkeys(r.meta.task_id for r in requests))
                    cursor.execute("SELECT pg_notify(%s, %s)", [_CHANNEL, ids])
        _announce([r.meta for r in requests])

    async def store_many(self, requests: Sequence[StoreRequest]) -> None:
        if not requests:
            return
        for request in requests:
            request.meta.to_json()  # ProtocolError here, in the caller, for a bad value
        await self._run(lambda: self._write(requests))
        for request in requests:
            self._waiters.wake(request.meta.task_id)

    def _read(self, task_id: str) -> dict[str, ResultMeta]:
        from conveyor.contrib.django.models import TaskResult

        rows = TaskResult.objects.using(self.alias).filter(task_id=task_id)
        return {w: ResultMeta.from_json(doc) for w, doc in rows.values_list("worker", "meta")}

    async def get(self, task_id: str) -> ResultMeta | None:
        return pick_result(await self._run(lambda: self._read(task_id)))

    async def _read_all(self, task_id: str) -> Mapping[str, ResultMeta]:
        return await self._run(lambda: self._read(task_id))

    @contextlib.asynccontextmanager
    async def _watch_results(self, task_id: str) -> AsyncIterator[Watch]:
        if self._executor is None:
            await self.connect()
        if self._pg is None:
            polling = _PollingWatch(self._waiters, task_id, self.poll)
            try:
                yield polling
            finally:
                polling.close()
            return
        if self._listener is None or self._listener.failed:
            self._listener = postgres_listener.acquire(self._pg, _CHANNEL)
        await self._listener.started()
        # Stores in this process NOTIFY too: the one LISTEN connection hears every store.
        async with self._listener.waiters.watching(task_id) as watch:
            yield watch

    def _delete(self, **where: Any) -> int:
        from conveyor.contrib.django.models import TaskResult

        deleted, _ = TaskResult.objects.using(self.alias).filter(**where).delete()
        return int(deleted)

    async def forget(self, task_id: str) -> None:
        await self._run(lambda: self._delete(task_id=task_id))

    async def cleanup(self, *, older_than: float) -> int:
        from django.conf import settings

        cutoff = datetime.fromtimestamp(older_than, UTC)
        if not settings.USE_TZ:
            cutoff = cutoff.astimezone().replace(tzinfo=None)
        return await self._run(lambda: self._delete(date_done__lt=cutoff))


def _pg_connection(url: str, settings: Mapping[str, Any]) -> PgConnection:
    """A PgConnection (for the LISTEN connection) to the database Django's ``settings`` name."""
    from psycopg.conninfo import make_conninfo

    params = {
        "dbname": settings.get("NAME"),
        "user": settings.get("USER") or None,
        "password": settings.get("PASSWORD") or None,
        "host": settings.get("HOST") or None,
        "port": str(settings["PORT"]) if settings.get("PORT") else None,
    }
    extra = settings.get("OPTIONS") or {}
    params.update({k: v for k, v in extra.items() if k in _LIBPQ_OPTIONS})
    conninfo = make_conninfo("", **{k: v for k, v in params.items() if v is not None})
    options = PgOptions(table=_CHANNEL, pool_size=1, reconnect_timeout=60.0, connect_timeout=10.0)
    return PgConnection(url, conninfo, options, what="Django result backend")
