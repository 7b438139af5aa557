"""Message signing from the ``security_*`` settings: which key signs, which keys are trusted.

- ``security_secret``: a secret every party shares (32 bytes or more): HMAC-SHA256.
- ``security_key`` (+ ``security_key_password``): this service's PEM private key (Ed25519, EC or
  RSA), as a file path or the PEM text; it signs as ``security_key_id`` (default: the app's main
  name). ``security_trusted_keys`` maps the key ids of other services to their PEM public keys
  (paths or text): a worker accepts messages signed by those and by its own key.

With either set, every task message the app sends is signed and its workers refuse (dead-letter)
messages that are unsigned or not signed by a trusted key. See :mod:`conveyor.protocol.signing`.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.config import Settings
from conveyor.errors import ConfigurationError

if TYPE_CHECKING:  # imported when signing is on: cryptography takes a while to load
    from conveyor.protocol.signing import MessageSigning

__all__ = ["SigningSettings", "message_signing"]

_NAMES = (
    "security_secret",
    "security_key",
    "security_key_password",
    "security_key_id",
    "security_trusted_keys",
)

_READ = operator.attrgetter(*_NAMES)  # all at once, in C: read on every send


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _pem(value: str | bytes, setting: str) -> bytes:
    """PEM text as given, or read from the file the value names."""
    data = _as_bytes(value)
    if data.lstrip().startswith(b"-----BEGIN"):
        return data
    path = Path(data.decode(errors="replace")).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{setting}: cannot read the key file {str(path)!r} ({exc.strerror}); give the path "
            "of a PEM file or the PEM text itself"
        ) from exc


def message_signing(conf: Settings, default_key_id: str | None) -> MessageSigning | None:
    """The signing the settings ask for, or None when signing is off.

    Raises ConfigurationError for a setting that is wrong: both a secret and a key, a short
    secret, an unreadable or unusable key file, trusted keys without a key of one's own.
    """
    secret, key = conf.security_secret, conf.security_key
    if secret is None and key is None and not conf.security_trusted_keys:
        return None
    from conveyor.protocol.signing import MessageSigning, load_private_key, load_public_key

    if secret is not None and key is not None:
        raise ConfigurationError(
            "set security_secret (a shared secret) or security_key (a key pair), not both"
        )
    if secret is not None:
        return MessageSigning.from_secret(_as_bytes(secret))
    if key is None:
        if conf.security_trusted_keys:
            raise ConfigurationError(
                "security_trusted_keys is set but security_key is not: a worker needs a key of "
                "its own to sign the retries it sends"
            )
        return None
    password = conf.security_key_password
    private = load_private_key(
        _pem(key, "security_key"),
        _as_bytes(password) if password is not None else None,
        what="security_key",
    )
    key_id = conf.security_key_id or default_key_id
    if not key_id:
        raise ConfigurationError(
            "security_key is set but the app has no name to sign as: set security_key_id"
        )
    trusted = {
        name: load_public_key(
            _pem(value, f"security_trusted_keys[{name!r}]"),
            what=f"security_trusted_keys[{name!r}]",
        )
        for name, value in dict(conf.security_trusted_keys).items()
    }
    return MessageSigning.from_keys(key_id, private, trusted)


class SigningSettings:
    """The app's :class:`MessageSigning` for its current settings, rebuilt only when one of the
    ``security_*`` values is replaced (checked by identity: cheap on every send)."""

    def __init__(self) -> None:
        self._values: tuple[Any, ...] | None = None
        self._signing: MessageSigning | None = None

    def get(self, conf: Settings, default_key_id: str | None) -> MessageSigning | None:
        """:func:`message_signing` of ``conf``, cached; raises as it does."""
        values = (*_READ(conf), default_key_id)
        held = self._values
        if held is None or not all(map(operator.is_, values, held)):
            self._signing = message_signing(conf, default_key_id)
            self._values = values
        return self._signing
