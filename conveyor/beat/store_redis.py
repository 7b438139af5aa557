"""The beat store of the Redis broker: keys under the broker's key prefix.

``<prefix>beat:<name>:lease`` holds the leader's id with a millisecond expiry (``SET NX PX``,
renewed by a script only while it still holds that id); ``...:entries`` is a hash of entry
states, written only by a script that checks the lease key in the same atomic step;
``...:paused`` a set and ``...:triggers`` a hash of counts, for the command line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc

from conveyor.beat.store import BeatStore, Controls, EntryState, Fire, decode_state, encode_state
from conveyor.errors import BrokerUnavailable
from conveyor.transports.redis.client import make_client, map_error

__all__ = ["RedisBeatStore"]

T = TypeVar("T")

# The Redis transport's own URL options, taken out before the URL reaches redis-py.
_TRANSPORT_OPTIONS = ("key_prefix", "lease", "poll_interval", "reconnect_timeout", "socket_timeout")

_HOLD = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if not current then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease, entries; ARGV: holder, then "set" or "del", then fields (and values for "set").
_FENCED_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'set' then
    for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
else
    for i = 3, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
end
return 1
"""

# KEYS: lease, paused, triggers; ARGV: holder. Triggers are handed out only to the leader.
_TAKE_CONTROLS = """
local paused = redis.call('SMEMBERS', KEYS[2])
local triggers = {}
if redis.call('GET', KEYS[1]) == ARGV[1] then
    triggers = redis.call('HGETALL', KEYS[3])
    redis.call('DEL', KEYS[3])
end
return {paused, triggers}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBeatStore(BeatStore):
    """Lease and states under the key prefix of the Redis broker at ``url``."""

    def __init__(
        self, url: str, beat: str, *, lease: float, options: Mapping[str, Any] | None = None
    ) -> None:
        self.beat = beat
        self.lease = lease
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        given = dict(options or {})
        prefix = str(given.get("key_prefix", dict(query).get("key_prefix", "conveyor:")))
        self._url = parts._replace(
            query=urlencode([(k, v) for k, v in query if k not in _TRANSPORT_OPTIONS])
        ).geturl()
        base = f"{prefix}beat:{beat}:"
        self._lease_key = base + "lease"
        self._entries_key = base + "entries"
        self._paused_key = base + "paused"
        self._triggers_key = base + "triggers"
        self._client: aioredis.Redis | None = None

    async def open(self) -> None:
        if self._client is None:
            self._client = make_client(self._url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _call(self, doing: str, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        client = self._client
        if client is None:
            raise BrokerUnavailable(f"the beat store of {self._url} is not open")
        try:
            return await call(client)
        except (rexc.RedisError, OSError) as exc:
            raise map_error(exc, self._url, doing) from exc

    async def hold(self, holder: str) -> bool:
        ms = max(1, int(self.lease * 1000))
        reply = await self._call(
            "taking the beat lease",
            lambda c: c.eval(_HOLD, 1, self._lease_key, holder, ms),
        )
        return bool(reply)

    async def release(self, holder: str) -> None:
        await self._call(
            "giving up the beat lease",
            lambda c: c.eval(_RELEASE, 1, self._lease_key, holder),
        )

    async def load(self) -> dict[str, EntryState]:
        raw = await self._call("reading beat states", lambda c: c.hgetall(self._entries_key))
        return {_text(name): decode_state(value) for name, value in raw.items()}

    async def _fenced(self, holder: str, action: str, argv: list[Any], doing: str) -> bool:
        reply = await self._call(
            doing,
            lambda c: c.eval(
                _FENCED_WRITE, 2, self._lease_key, self._entries_key, holder, action, *argv
            ),
        )
        return bool(reply)

    async def _write(self, holder: str, states: Sequence[tuple[str, EntryState]]) -> bool:
        argv: list[Any] = []
        for name, state in states:
            argv += [name, encode_state(state)]
        return await self._fenced(holder, "set", argv, "recording beat fires")

    async def claim(self, holder: str, fires: Sequence[Fire]) -> bool:
        return await self._write(holder, [(f.entry, f.claimed()) for f in fires])

    async def confirm(self, holder: str, fires: Sequence[Fire]) -> bool:
        return await self._write(holder, [(f.entry, f.state(confirmed=True)) for f in fires])

    async def forget(self, holder: str, entries: Iterable[str]) -> None:
        names = list(entries)
        if names:
            await self._fenced(holder, "del", names, "forgetting beat entries")

    async def set_paused(self, entry: str, paused: bool) -> None:
        key = self._paused_key
        if paused:
            await self._call("pausing a beat entry", lambda c: c.sadd(key, entry))
        else:
            await self._call("resuming a beat entry", lambda c: c.srem(key, entry))

    async def request_trigger(self, entry: str) -> None:
        await self._call(
            "triggering a beat entry",
            lambda c: c.hincrby(self._triggers_key, entry, 1),
        )

    async def take_controls(self, holder: str) -> Controls:
        keys = (self._lease_key, self._paused_key, self._triggers_key)
        paused, flat = await self._call(
            "reading beat controls",
            lambda c: c.eval(_TAKE_CONTROLS, 3, *keys, holder),
        )
        triggers: list[str] = []
        for i in range(0, len(flat), 2):
            triggers.extend([flat[i].decode()] * int(flat[i + 1]))
        return Controls(frozenset(p.decode() for p in paused), tuple(triggers))
