"""Logs a user can follow: task lines that carry the task's name and id, in every pool.

- :func:`get_task_logger` is the logger for a task module (``log = get_task_logger(__name__)``).
  Its records, and any record logged while a task runs in a worker (the asyncio loop, a pool
  thread or a pool process), carry ``task_name`` and ``task_id``, read from the running task's
  request; outside a task they are ``-``.
- :func:`configure_logging` is what ``conveyor worker``/``beat`` call for ``-l``,
  ``--logfile`` and ``--log-format``: one handler on the root logger, in the ``text`` format
  (:data:`TEXT_FORMAT`, and :data:`TASK_FORMAT` for lines logged inside a task) or ``json``
  (one object a line, for log shippers). The :class:`LogSetup` it applied is what the
  processes pool hands its children, so ``-l`` reaches them in the same format and file.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from conveyor.task import current_request

__all__ = [
    "LOG_FORMATS",
    "TASK_FORMAT",
    "TEXT_FORMAT",
    "JsonFormatter",
    "LogFormat",
    "LogSetup",
    "TaskContextFilter",
    "TextFormatter",
    "configure_logging",
    "current_setup",
    "get_task_logger",
]

TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
"""A line logged outside a task."""

TASK_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s] %(name)s: %(message)s"
)
"""A line logged while a task runs: its name and id come first."""

LOG_FORMATS = ("text", "json")
NO_TASK = "-"

LogFormat = Literal["text", "json"]


class TaskContextFilter(logging.Filter):
    """Gives every record ``task_name`` and ``task_id``: the running task's, or ``-``.

    Never drops a record. A record that already has them (from a pool process) keeps them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_id", None) is None:
            request = current_request()
            record.task_name = request.task if request is not None else NO_TASK
            record.task_id = request.id if request is not None else NO_TASK
        return True


_TASK_CONTEXT = TaskContextFilter()


def get_task_logger(name: str) -> logging.Logger:
    """The logger ``name`` (use ``__name__``), whose records carry the running task's
    ``task_name`` and ``task_id`` whatever handler formats them.

    Raises ValueError for ``conveyor`` and names under it, which are conveyor's own.
    """
    if name == "conveyor" or name.startswith("conveyor."):
        raise ValueError(f"{name!r} is conveyor's own logger: use your module's __name__")
    logger = logging.getLogger(name)
    if _TASK_CONTEXT not in logger.filters:
        logger.addFilter(_TASK_CONTEXT)
    return logger


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, or :data:`TASK_FORMAT` for a record logged inside a task."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._task = logging.Formatter(TASK_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "task_id", NO_TASK) != NO_TASK:
            return self._task.format(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``process``
    (name), ``pid``, ``message``, ``task_name`` and ``task_id`` (null outside a task), and
    ``exception`` (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        task_id = getattr(record, "task_id", NO_TASK)
        inside = task_id != NO_TASK
        document: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
            "task_name": getattr(record, "task_name", None) if inside else None,
            "task_id": task_id if inside else None,
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str).decode()


def _iso_utc(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


@dataclass(frozen=True, slots=True)
class LogSetup:
    """How a process logs: ``level`` (a level name), ``logfile`` (None: stderr) and
    ``format`` (``text`` or ``json``). Picklable: the processes pool sends it to children."""

    level: str = "INFO"
    logfile: str | None = None
    format: LogFormat = "text"


_applied: LogSetup | None = None


def current_setup() -> LogSetup | None:
    """The setup :func:`configure_logging` last applied in this process, if any."""
    return _applied


def configure_logging(setup: LogSetup) -> None:
    """Replace the root logger's handlers with one that writes ``setup``'s format to its file
    (appended to; several processes may share it) or stderr, at its level.

    Raises ValueError for an unknown level or format, OSError if the file cannot be opened.
    """
    global _applied
    level = setup.level.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"unknown log level {setup.level!r}: use DEBUG, INFO, WARNING or ERROR")
    if setup.format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {setup.format!r}: use text or json")
    handler: logging.Handler
    if setup.logfile:
        handler = logging.FileHandler(setup.logfile, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if setup.format == "json" else TextFormatter())
    handler.addFilter(_TASK_CONTEXT)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    _applied = setup
