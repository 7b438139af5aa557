"""Workflows: signatures, chains, groups, chords and their results (Celery's canvas shapes).

``task.s(...)`` / ``signature(name, ...)`` make a :class:`Signature`; ``chain(a, b)`` (or
``a | b``), ``group(a, b)`` and ``chord(group, body)`` combine them; ``apply_async`` sends them
as Celery's task protocol v2 does, so Celery workers and conveyor workers run each other's.
"""

from __future__ import annotations

from conveyor.canvas.results import GroupResult
from conveyor.canvas.signatures import Signature, maybe_signature, signature
from conveyor.canvas.workflows import chain, chord, chord_body_id, group

__all__ = [
    "GroupResult",
    "Signature",
    "chain",
    "chord",
    "chord_body_id",
    "group",
    "maybe_signature",
    "signature",
]
