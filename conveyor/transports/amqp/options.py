"""What an ``amqp[s]://`` URL and the transport options say: where RabbitMQ is, how to talk to it.

``amqp://user:pass@host:5672/vhost?option=value`` (``amqps://`` for TLS, port 5671). Options,
from the URL's query or ``broker_transport_options`` (which win): ``heartbeat`` (s, 15),
``connect_timeout`` (s, 10), ``reconnect_timeout`` (s, 60: how long a call waits for a lost
connection), ``reconnect_max_delay`` (s, 5), ``confirm_timeout`` (s, 60), ``client_name``, and for
TLS ``ssl_context`` or ``cafile``/``certfile``/``keyfile``/``verify``/``server_hostname``.

Not :func:`conveyor.urls.parse_options`: these options take zero (``heartbeat=0`` turns
heartbeats off), have their own minimums, and one is an object (``ssl_context``). Not
:func:`conveyor.urls.redacted` either: the address printed in messages has no password at all
and shows the virtual host decoded.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor.errors import ConfigurationError

__all__ = ["Address", "Options", "parse_url"]

_OPTION_DEFAULTS: dict[str, Any] = {
    "heartbeat": 15,
    "connect_timeout": 10.0,
    "reconnect_timeout": 60.0,
    "reconnect_max_delay": 5.0,
    "confirm_timeout": 60.0,
    "client_name": None,
    "ssl_context": None,
    "cafile": None,
    "certfile": None,
    "keyfile": None,
    "verify": True,
    "server_hostname": None,
}


@dataclass(frozen=True, slots=True)
class Address:
    """Where RabbitMQ is and who logs in; ``display`` is the URL to print (no password)."""

    host: str
    port: int
    vhost: str
    user: str
    password: str
    display: str
    server_hostname: str | None


@dataclass(frozen=True, slots=True)
class Options:
    """The transport's options, checked and typed (see the module docstring)."""

    heartbeat: int
    connect_timeout: float
    reconnect_timeout: float
    reconnect_max_delay: float
    confirm_timeout: float
    client_name: str | None
    ssl_context: ssl.SSLContext | None


def parse_url(url: str, options: Mapping[str, Any] | None = None) -> tuple[Address, Options]:
    """Parse ``amqp[s]://user:pass@host:port/vhost?option=value`` and ``options``.

    Raises ConfigurationError for another scheme, a bad port, an unknown option, a value out of
    range, or TLS files that cannot be loaded.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"{url!r} is not an amqp:// or amqps:// URL")
    try:
        port = parts.port or (5671 if scheme == "amqps" else 5672)
    except ValueError:
        raise ConfigurationError(f"broker URL {url!r} has an invalid port") from None
    host = parts.hostname or "localhost"
    user = unquote(parts.username) if parts.username else "guest"
    password = unquote(parts.password) if parts.password else "guest"
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) or "/"
    values = dict(_OPTION_DEFAULTS)
    supplied = {**dict(parse_qsl(parts.query)), **dict(options or {})}
    for name, value in supplied.items():
        if name not in values:
            known = ", ".join(sorted(_OPTION_DEFAULTS))
            raise ConfigurationError(
                f"unknown RabbitMQ transport option {name!r}: use one of {known}"
            )
        values[name] = value
    parsed = Options(
        heartbeat=int(_as_number("heartbeat", values["heartbeat"])),
        connect_timeout=_as_number("connect_timeout", values["connect_timeout"], minimum=0.1),
        reconnect_timeout=_as_number("reconnect_timeout", values["reconnect_timeout"]),
        reconnect_max_delay=_as_number(
            "reconnect_max_delay", values["reconnect_max_delay"], minimum=0.01
        ),
        confirm_timeout=_as_number("confirm_timeout", values["confirm_timeout"], minimum=0.1),
        client_name=values["client_name"],
        ssl_context=_ssl_context(scheme == "amqps", values),
    )
    netloc_host = f"[{host}]" if ":" in host else host
    display = f"{scheme}://{user}@{netloc_host}:{port}/{vhost if vhost != '/' else ''}"
    server_hostname = values["server_hostname"]
    address = Address(
        host, port, vhost, user, password, display, str(server_hostname or host) or None
    )
    return address, parsed


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"broker option {name}={value!r} must be true or false")


def _as_number(name: str, value: Any, *, minimum: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"broker option {name}={value!r} must be a number") from None
    if number < minimum or number != number:
        raise ConfigurationError(f"broker option {name}={value!r} must be at least {minimum}")
    return number


def _ssl_context(tls: bool, values: Mapping[str, Any]) -> ssl.SSLContext | None:
    context = values["ssl_context"]
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise ConfigurationError("broker option ssl_context must be an ssl.SSLContext")
        return context
    if not tls:
        return None
    try:
        context = ssl.create_default_context(cafile=values["cafile"])
        if values["certfile"]:
            context.load_cert_chain(values["certfile"], values["keyfile"])
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS files for amqps://: {exc}") from exc
    if not _as_bool("verify", values["verify"]):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
