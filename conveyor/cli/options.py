"""Option values that several commands parse the same way."""

from __future__ import annotations

import json
from typing import Any

import click

__all__ = ["loglevel_option", "parse_json"]

loglevel_option = click.option(
    "-l",
    "--loglevel",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
)
"""``-l/--loglevel``, for the commands that run a service."""


def parse_json(value: str | None, kind: type, option: str) -> Any:
    """``value`` parsed as JSON of type ``kind`` (list or dict), or an empty one if None.

    Raises click.BadParameter, naming ``option``, for invalid JSON or another type.
    """
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=option) from exc
    if not isinstance(parsed, kind):
        want = "a JSON list" if kind is list else "a JSON object"
        raise click.BadParameter(f"must be {want}, got {value}", param_hint=option)
    return parsed
