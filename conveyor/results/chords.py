"""Chord joins kept in this process: the join that ``memory://`` results use.

The rules are those of ``ResultBackend.chord_part_done``: each part counts once (keyed by task
id and place), the part that completes the count claims the body's send for a while, and a
finished chord ignores late parts. The SQLite and Redis backends keep the same rules in their
own stores.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from conveyor.results.base import ChordJoin, ChordPart

__all__ = ["ChordBook", "header_order"]


def header_order(part: ChordPart) -> tuple[float, str]:
    """How parts sort in a join: by place in the header, unknown places last."""
    return (float("inf") if part.group_index is None else part.group_index, part.task_id)


@dataclass
class _Chord:
    size: int | None = None
    parts: dict[tuple[str, int | None], ChordPart] = field(default_factory=dict)
    claim: str | None = None
    claim_until: float = 0.0
    done: bool = False


class ChordBook:
    """Every chord's join in one store; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chords: dict[str, _Chord] = {}
        self._body_sends: dict[str, str] = {}

    def start(self, group_id: str, size: int) -> None:
        """``ResultBackend.chord_start``."""
        with self._lock:
            chord = self._chords.setdefault(group_id, _Chord())
            chord.size, chord.done, chord.claim = size, False, None

    def part_done(self, part: ChordPart, claim_seconds: float) -> ChordJoin | None:
        """``ResultBackend.chord_part_done``."""
        now = time.monotonic()
        with self._lock:
            chord = self._chords.setdefault(part.group_id, _Chord())
            if chord.done:
                return None
            chord.parts.setdefault((part.task_id, part.group_index), part)
            if chord.size is None or len(chord.parts) < chord.size:
                return None
            if chord.claim is not None and chord.claim_until > now:
                return None
            chord.claim = uuid.uuid4().hex
            chord.claim_until = now + claim_seconds
            parts = tuple(sorted(chord.parts.values(), key=header_order))
            return ChordJoin(part.group_id, chord.claim, parts)

    def done(self, group_id: str, claim: str) -> bool:
        """``ResultBackend.chord_done``."""
        with self._lock:
            chord = self._chords.get(group_id)
            if chord is None or chord.claim != claim:
                return False
            chord.parts.clear()
            chord.done, chord.claim = True, None
            return True

    def body_run(self, group_id: str, send: str) -> bool:
        """``ResultBackend.chord_body_run``."""
        with self._lock:
            return self._body_sends.setdefault(group_id, send) == send
