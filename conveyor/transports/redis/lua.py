"""The Lua scripts behind the Redis storage, shipped as ``scripts/*.lua`` beside this module.

Each script is one storage step, atomic in Redis: ``scripts/common.lua`` (the key prefix from
``ARGV[1]`` and the helpers) followed by the step's own file. Key names are built from the
prefix (the key layout is described in :mod:`conveyor.transports.redis`). Scripts are safe to
resend after a lost reply: ``enqueue`` skips a batch whose first message is already stored,
``dequeue`` replays its answer to a request id it has already served, and the others only move
what is still where they expect.

Scores of ready messages are ``(255 - priority) * 2**45 + sequence``: lowest first gives the
highest priority first and FIFO within a level, and stays an exact integer in a double (below
2**53). Lua prints numbers with 14 digits only, so scores travel as the strings Redis returns,
and computed numbers are only ever handed straight to ``redis.call``.

A lease is the string ``count|score|expires_at|connection`` in the queue's lease hash.
"""

from __future__ import annotations

import functools
from importlib.resources import files

__all__ = ["script"]

_SCRIPTS = files("conveyor.transports.redis") / "scripts"


@functools.cache
def script(name: str) -> str:
    """The source of storage step ``name`` (``scripts/<name>.lua`` after ``common.lua``)."""
    common = (_SCRIPTS / "common.lua").read_text(encoding="utf-8")
    return common + (_SCRIPTS / f"{name}.lua").read_text(encoding="utf-8")
