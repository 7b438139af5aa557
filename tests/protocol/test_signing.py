"""Message signing: what a signature covers, and every way a message fails the check."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conveyor.errors import SignatureError
from conveyor.protocol.envelope import Envelope
from conveyor.protocol.signing import SIGNATURE_HEADER, SIGNER_HEADER, MessageSigning
from conveyor.protocol.task_message import TaskMessage, decode_task, encode_task

SECRET = b"s" * 32


def _message(**changes: object) -> Envelope:
    message = TaskMessage(task="billing.charge", id="t-1", args=(10,), kwargs={"to": "acme"})
    return encode_task(replace(message, **changes))  # type: ignore[arg-type]


def _pem_private(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_public(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_shared_secret_signs_and_verifies_through_storage() -> None:
    signing = MessageSigning.from_secret(SECRET)
    signed = signing.sign(_message())
    assert signed.headers[SIGNER_HEADER] == "shared-secret"
    stored = Envelope.from_bytes(signed.to_bytes())
    assert signing.verify(stored) == "shared-secret"
    assert decode_task(stored).args == (10,)


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'[[1000000], {"to": "mallory"}, null]'},
        {"reply_to": "someone-else"},
        {"content_type": "application/x-python-serialize"},
    ],
)
def test_a_changed_message_fails(change: dict[str, object]) -> None:
    signing = MessageSigning.from_secret(SECRET)
    signed = replace(signing.sign(_message()), **change)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="bad signature by key 'shared-secret'"):
        signing.verify(signed)


@pytest.mark.parametrize("header", ["task", "id", "eta", "retries"])
def test_a_changed_task_header_fails(header: str) -> None:
    signing = MessageSigning.from_secret(SECRET)
    signed = signing.sign(_message())
    tampered = signed.replace_headers(**{header: "2030-01-01T00:00:00" if header == "eta" else 3})
    with pytest.raises(SignatureError, match="bad signature"):
        signing.verify(tampered)


def test_headers_added_en_route_do_not_break_it() -> None:
    signing = MessageSigning.from_secret(SECRET)
    signed = signing.sign(_message()).replace_headers(
        **{"x-death": [{"queue": "q", "count": 1}], "x-conveyor-dead-letter-reason": "why"}
    )
    assert signing.verify(signed) == "shared-secret"


def test_unsigned_untrusted_and_malformed_are_refused_with_a_reason() -> None:
    signing = MessageSigning.from_secret(SECRET)
    with pytest.raises(SignatureError, match="unsigned message"):
        signing.verify(_message())
    other = MessageSigning.from_secret(b"o" * 32)
    forged = other.sign(_message()).replace_headers(**{SIGNER_HEADER: "web"})
    with pytest.raises(SignatureError, match="key 'web', which is not trusted here"):
        signing.verify(forged)
    with pytest.raises(SignatureError, match="bad signature"):
        signing.verify(other.sign(_message()))
    garbled = signing.sign(_message()).replace_headers(**{SIGNATURE_HEADER: "***"})
    with pytest.raises(SignatureError, match="bad signature"):
        signing.verify(garbled)
    with pytest.raises(SignatureError, match="malformed signature on the message"):
        signing.verify(_message().replace_headers(**{SIGNATURE_HEADER: 5}))


@pytest.mark.parametrize(
    "make",
    [
        ed25519.Ed25519PrivateKey.generate,
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ed25519", "ecdsa", "rsa"],
)
def test_key_pairs_per_service(make: object) -> None:
    web_key, worker_key, stranger_key = make(), make(), make()  # type: ignore[operator]
    web = MessageSigning.from_keys("web", web_key, {})
    worker = MessageSigning.from_keys("worker", worker_key, {"web": web_key.public_key()})
    assert worker.verify(web.sign(_message())) == "web"
    assert worker.verify(worker.sign(_message())) == "worker"  # its own retries
    with pytest.raises(SignatureError, match="not trusted here"):
        web.verify(worker.sign(_message()))
    impostor = MessageSigning.from_keys("web", stranger_key, {})
    with pytest.raises(SignatureError, match="bad signature by key 'web'"):
        worker.verify(impostor.sign(_message()))
