"""Printing the operations commands' tables."""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["table_console"]


def table_console() -> Console:
    """A console for tables; piped output is 160 columns wide, not 80, so rows stay one line."""
    return Console(width=None if sys.stdout.isatty() else 160)
