"""Calling Redis: URLs, redis-py clients, retries through a lost connection, and error mapping.

- :func:`check_url` and :func:`make_client` read a ``redis://`` or ``rediss://`` URL into a
  redis-py asyncio client (hiredis parser), raising ConfigurationError for a malformed one.
- :func:`run` calls Redis, retrying with exponential backoff while the connection is lost (the
  calls it runs must be idempotent), and maps redis-py errors to conveyor errors
  (:func:`map_error`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from conveyor.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    TransportError,
)
from conveyor.urls import redacted

__all__ = [
    "CLIENT_QUERY_OPTIONS",
    "LOST",
    "Backoff",
    "check_url",
    "log",
    "make_client",
    "map_error",
    "run",
    "split_url",
]

log = logging.getLogger("conveyor.redis")

T = TypeVar("T")

# the errors that say the connection was lost (worth reconnecting), not what Redis answered
LOST = (rexc.ConnectionError, rexc.TimeoutError, OSError)


# Query parameters handed to redis-py; conveyor's own options are taken out before.
CLIENT_QUERY_OPTIONS = frozenset(URL_QUERY_ARGUMENT_PARSERS) - {"socket_timeout", "timeout"} | {
    "client_name",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_ciphers",
}


def check_url(url: str, *, own_options: Iterable[str] = ()) -> None:
    """Raise ConfigurationError unless ``url`` is a Redis URL redis-py reads as written.

    ``own_options`` are query parameters the caller takes out itself.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ConfigurationError(
            f"not a Redis URL: {redacted(url)!r}; write redis://host:6379/0 or rediss://..."
        )
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigurationError(
            f"bad Redis URL {redacted(url)!r}: the path names the database, a number such as "
            f"/0, not {parts.path!r}"
        )
    allowed = CLIENT_QUERY_OPTIONS | set(own_options)
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name not in allowed:
            raise ConfigurationError(
                f"unknown option {name!r} in Redis URL {redacted(url)!r}: the options are "
                f"{', '.join(sorted(allowed))}"
            )
    try:
        parse_url(url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad Redis URL {redacted(url)!r}: {exc}") from exc


def split_url(url: str, own_options: Iterable[str]) -> tuple[str, str]:
    """``url`` checked (see :func:`check_url`), then split in two: the URL with only conveyor's
    ``own_options`` in its query (for :func:`conveyor.urls.parse_options`), and the URL with
    only the others, for redis-py."""
    own = set(own_options)
    check_url(url, own_options=own)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = [(k, v) for k, v in query if k in own]
    theirs = [(k, v) for k, v in query if k not in own]
    return (
        parts._replace(query=urlencode(ours)).geturl(),
        parts._replace(query=urlencode(theirs)).geturl(),
    )


def make_client(url: str, **options: Any) -> aioredis.Redis:
    """An unconnected asyncio client for ``url`` (``redis://host:port/db``, ``rediss://``).

    The client has no socket timeout of its own: redis-py enforces one with ``asyncio.wait_for``,
    which on Python 3.11 can swallow a cancellation; :func:`run` bounds each call instead.
    redis-py's own retries are limited to one immediate retry on a fresh connection (a pooled
    connection the server closed); longer outages are :func:`run`'s business.
    """
    check_url(url)
    try:
        return aioredis.Redis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=options.pop("socket_connect_timeout", 5.0),
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            **options,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad Redis URL {redacted(url)!r}: {exc}") from exc


def map_error(exc: BaseException, url: str, doing: str) -> ConveyorError:
    """The conveyor error for a redis-py error raised while ``doing`` something."""
    where = redacted(url)
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError):
        return ConfigurationError(
            f"Redis at {where} refused the credentials while {doing}: {exc}; fix the user and "
            "password in the URL"
        )
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith("WRONGTYPE"):
        return ConfigurationError(
            f"Redis at {where} holds keys of another program where conveyor keeps its own "
            f"({exc}); use another database or set the key prefix option"
        )
    if isinstance(exc, LOST):
        return BrokerUnavailable(
            f"cannot reach Redis at {where} while {doing}: {exc}; check that Redis is running "
            "and the URL is right"
        )
    return TransportError(f"Redis at {where} failed while {doing}: {exc}")


class Backoff:
    """Exponential backoff with full jitter, from ``base`` up to ``cap`` seconds."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        """The next delay to sleep."""
        delay = min(self.cap, self.base * 2**self.attempts)
        self.attempts += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        """Start again from ``base``."""
        self.attempts = 0


async def run(
    call: Callable[[], Awaitable[T]],
    *,
    url: str,
    doing: str,
    patience: float,
    timeout: float | None = 10.0,
) -> T:
    """Await ``call()``, retrying with backoff for up to ``patience`` seconds of lost connection.

    Each attempt may take ``timeout`` seconds (None: ``call`` bounds itself, as
    :class:`RedisLink` calls do) before the connection counts as lost. ``call``
    must be safe to repeat: a lost reply does not say whether Redis ran the command. Raises
    BrokerUnavailable when Redis stays unreachable, ConfigurationError for refused credentials
    or foreign keys, TransportError for any other Redis error.
    """
    backoff: Backoff | None = None
    give_up = 0.0
    while True:
        try:
            if timeout is None:
                return await call()
            try:
                async with asyncio.timeout(timeout):
                    return await call()
            except TimeoutError as exc:
                raise rexc.TimeoutError(f"no answer within {timeout:g} s") from exc
        except (rexc.AuthenticationError, rexc.AuthorizationError) as exc:
            raise map_error(exc, url, doing) from exc
        except LOST as exc:
            now = time.monotonic()
            if backoff is None:
                backoff = Backoff()
                give_up = now + patience
                log.warning(
                    "lost Redis at %s while %s (%s); reconnecting", redacted(url), doing, exc
                )
            if now >= give_up:
                raise map_error(exc, url, doing) from exc
            await asyncio.sleep(min(backoff.next(), max(0.0, give_up - now)))
        except rexc.RedisError as exc:
            raise map_error(exc, url, doing) from exc
