"""Message signing: who may have a worker run a task, proven per message.

Opt-in (see ``security_*`` in the README). A sender signs each task message it publishes; a
worker that signs verifies every message before decoding it and dead-letters any that is
unsigned, signed by a key it does not trust, or changed since it was signed. Two kinds of key:

- a **shared secret** (:meth:`MessageSigning.from_secret`): HMAC-SHA256; every party that holds
  the secret can send and verify, so one service that leaks it lets anyone send;
- a **key pair per service** (:meth:`MessageSigning.from_keys`): each service signs with its own
  private key (Ed25519, ECDSA or RSA-PSS, SHA-256) under a key id; workers hold only the public
  keys they trust, by key id, so a worker's key cannot be used to forge another service's send.

The signature covers what decides what runs: the body (arguments, or the whole protocol v1
message), the content type and encoding, ``correlation_id``, ``reply_to`` (RabbitMQ's direct
reply-to as the name the sender gave) and the task protocol's
standard headers (``task``, ``id``, ``eta``, ``expires``, ``retries``, ``timelimit``, ...).
Other headers (custom ones, and those brokers and dead-lettering add en route) are not
covered. It travels in two headers, ``x-conveyor-signer`` (the key id) and
``x-conveyor-signature`` (base64). A signature does not stop a replay of a message captured
whole; task ids and ``expires`` are the tools for that.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from conveyor.errors import ConfigurationError, SignatureError
from conveyor.protocol.describe import brief
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.task_message import STANDARD_HEADERS
from conveyor.routing.entities import FrozenMapping

__all__ = [
    "SIGNATURE_HEADER",
    "SIGNER_HEADER",
    "MessageSigning",
    "load_private_key",
    "load_public_key",
]

SIGNER_HEADER = "x-conveyor-signer"
SIGNATURE_HEADER = "x-conveyor-signature"
_VERSION = "conveyor-signature-1"
_SECRET_KEY_ID = "shared-secret"
_DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

Sign = Callable[[bytes], bytes]
Verify = Callable[[bytes, bytes], None]  # (signature, data); raises InvalidSignature


def signed_content(envelope: Envelope) -> bytes:
    """The bytes a message's signature is over (see the module's text for what they hold)."""
    given = envelope.headers
    # A plain dict: FrozenMapping's lookups go through the Mapping mixins (slow, per message).
    headers = given.to_dict() if type(given) is FrozenMapping else dict(given)
    covered = {k: v for k, v in headers.items() if k in STANDARD_HEADERS}
    reply_to = envelope.reply_to
    if reply_to is not None and reply_to.startswith(_DIRECT_REPLY_TO):
        reply_to = _DIRECT_REPLY_TO  # RabbitMQ names the caller's channel on delivery
    head = orjson.dumps(
        [
            _VERSION,
            envelope.content_type,
            envelope.content_encoding,
            envelope.correlation_id,
            reply_to,
            covered,
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return head + b"\n" + envelope.body


def _hmac(secret: bytes, data: bytes) -> bytes:
    mac = crypto_hmac.HMAC(secret, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _signer(key: PrivateKey) -> Sign:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))
    return lambda data: key.sign(data, _PSS, hashes.SHA256())


def _verifier(key: PublicKey) -> Verify:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.verify
    if isinstance(key, ec.EllipticCurvePublicKey):
        return lambda sig, data: key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    return lambda sig, data: key.verify(sig, data, _PSS, hashes.SHA256())


def load_private_key(pem: bytes, password: bytes | None = None, *, what: str) -> PrivateKey:
    """A PEM private key (Ed25519, EC or RSA); ConfigurationError naming ``what`` otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            f"{what} is not a PEM private key conveyor can use ({exc}); generate one with "
            "`openssl genpkey -algorithm ed25519 -out key.pem`"
        ) from exc
    if not isinstance(
        key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)
    ):
        raise ConfigurationError(f"{what} is a {type(key).__name__}: use an Ed25519, EC or RSA key")
    return key


def load_public_key(pem: bytes, *, what: str) -> PublicKey:
    """A PEM public key (Ed25519, EC or RSA); ConfigurationError naming ``what`` otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            f"{what} is not a PEM public key conveyor can use ({exc}); export one with "
            "`openssl pkey -in key.pem -pubout -out key.pub`"
        ) from exc
    if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise ConfigurationError(f"{what} is a {type(key).__name__}: use an Ed25519, EC or RSA key")
    return key


@dataclass(frozen=True, slots=True)
class MessageSigning:
    """Signs outgoing messages as ``key_id`` and verifies incoming ones against ``trusted``
    (key id -> verify function). Build it with :meth:`from_secret` or :meth:`from_keys`."""

    key_id: str
    sign_bytes: Sign
    trusted: Mapping[str, Verify]

    @classmethod
    def from_secret(cls, secret: bytes) -> MessageSigning:
        """HMAC-SHA256 with a secret every party shares (at least 32 bytes)."""
        if len(secret) < 32:
            raise ConfigurationError(
                f"security_secret is {len(secret)} bytes: use at least 32 random bytes "
                '(python -c "import secrets; print(secrets.token_hex(32))")'
            )

        def verify(signature: bytes, data: bytes) -> None:
            mac = crypto_hmac.HMAC(secret, hashes.SHA256())
            mac.update(data)
            mac.verify(signature)  # constant time; raises InvalidSignature

        return cls(_SECRET_KEY_ID, lambda data: _hmac(secret, data), {_SECRET_KEY_ID: verify})

    @classmethod
    def from_keys(
        cls, key_id: str, private_key: PrivateKey, trusted: Mapping[str, PublicKey]
    ) -> MessageSigning:
        """Sign with ``private_key`` as ``key_id``; accept signatures of the ``trusted`` public
        keys (by key id) and of this key itself (a worker's retries are signed by it)."""
        if not key_id or not isinstance(key_id, str):
            raise ConfigurationError(f"the signing key id must be a non-empty string: {key_id!r}")
        verifiers = {name: _verifier(key) for name, key in trusted.items()}
        verifiers[key_id] = _verifier(private_key.public_key())
        return cls(key_id, _signer(private_key), verifiers)

    def sign(self, envelope: Envelope) -> Envelope:
        """A copy of ``envelope`` carrying this party's signature (a previous one is replaced)."""
        signature = self.sign_bytes(signed_content(envelope))
        return envelope.replace_headers(
            **{
                SIGNER_HEADER: self.key_id,
                SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
            }
        )

    def signature(self, content: bytes) -> tuple[str, str]:
        """``(key id, base64 signature)`` of ``content`` (for what is not an envelope)."""
        return self.key_id, base64.b64encode(self.sign_bytes(content)).decode("ascii")

    def verify(self, envelope: Envelope) -> str:
        """Return the key id that signed ``envelope``; raise SignatureError saying why not
        (unsigned, signed by a key not trusted here, or changed since it was signed)."""
        headers = envelope.headers
        return self.check(
            headers.get(SIGNER_HEADER),
            headers.get(SIGNATURE_HEADER),
            signed_content(envelope),
            what="message",
            fix="sign it on the sending side with the same security_* settings",
        )

    def check(self, signer: Any, encoded: Any, content: bytes, *, what: str, fix: str) -> str:
        """Return ``signer`` if ``encoded`` is its valid signature of ``content``; else raise
        SignatureError naming ``what`` was refused and why (``fix`` says what to do when it
        is unsigned)."""
        if signer is None and encoded is None:
            raise SignatureError(
                f"unsigned {what}: only signed ones are accepted here (security_* settings); {fix}"
            )
        if not isinstance(signer, str) or not isinstance(encoded, str):
            raise SignatureError(
                f"malformed signature on the {what}: signer {brief(signer)}, "
                f"signature {brief(encoded)}"
            )
        verify = self.trusted.get(signer)
        if verify is None:
            raise SignatureError(
                f"{what} signed by key {brief(signer)}, which is not trusted here; add its "
                "public key to security_trusted_keys if it should be"
            )
        try:
            signature = base64.b64decode(encoded, validate=True)
            verify(signature, content)
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise SignatureError(
                f"bad signature by key {signer!r} on the {what}: it was changed after it was "
                "signed, or signed with another key under that name"
            ) from exc
        return signer
