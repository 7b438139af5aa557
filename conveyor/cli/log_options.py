"""``-l/--loglevel``, ``--logfile`` and ``--log-format`` for commands that run a service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from conveyor.cli.options import loglevel_option
from conveyor.errors import ConfigurationError
from conveyor.logs import LOG_FORMATS, LogFormat, LogSetup, configure_logging

__all__ = ["log_options", "setup_logging"]

F = TypeVar("F", bound=Callable[..., Any])

logfile_option = click.option(
    "--logfile",
    "-f",
    metavar="PATH",
    type=click.Path(dir_okay=False, writable=True),
    help="Append log lines to this file instead of stderr (pool processes write there too).",
)
log_format_option = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="CONVEYOR_LOG_FORMAT",
    help="text: one readable line a record; json: one JSON object a line, for log shippers.",
)


def log_options(command: F) -> F:
    """Add ``-l``, ``--logfile`` and ``--log-format`` (parameters ``loglevel``, ``logfile``,
    ``log_format``) to ``command``."""
    return loglevel_option(logfile_option(log_format_option(command)))


def setup_logging(loglevel: str, logfile: str | None, log_format: str) -> LogSetup:
    """Configure this process's logging from the options; return the setup applied.

    Raises ConfigurationError when the log file cannot be opened.
    """
    setup = LogSetup(level=loglevel.upper(), logfile=logfile, format=cast(LogFormat, log_format))
    try:
        configure_logging(setup)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot open --logfile {logfile}: {exc.strerror}; give a file in a directory you "
            "can write"
        ) from exc
    return setup
