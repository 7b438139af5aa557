"""Signing from the ``security_*`` settings: key files or PEM text, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conveyor.config import Settings
from conveyor.errors import ConfigurationError
from conveyor.protocol.signing import MessageSigning
from conveyor.security import message_signing
from tests.protocol.test_signing import _message, _pem_private, _pem_public


def test_settings_build_signing_from_pem_files(tmp_path: Path) -> None:
    web_key, worker_key = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "worker.pem").write_bytes(_pem_private(worker_key))
    (tmp_path / "web.pub").write_bytes(_pem_public(web_key))
    conf = Settings()
    assert message_signing(conf, "svc") is None
    conf.security_key = str(tmp_path / "worker.pem")
    conf.security_trusted_keys = {"web": str(tmp_path / "web.pub")}
    signing = message_signing(conf, "remote")
    assert signing is not None
    assert signing.key_id == "remote"
    web = MessageSigning.from_keys("web", web_key, {})
    assert signing.verify(web.sign(_message())) == "web"
    conf.security_trusted_keys = {"web": _pem_public(web_key).decode()}  # PEM text works too
    assert message_signing(conf, "remote") is not None


def test_wrong_settings_say_what_to_fix(tmp_path: Path) -> None:
    conf = Settings()
    conf.security_secret = "short"
    with pytest.raises(ConfigurationError, match="at least 32 random bytes"):
        message_signing(conf, "svc")
    conf.security_key = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="not both"):
        message_signing(conf, "svc")
    conf.security_secret = None
    with pytest.raises(ConfigurationError, match="cannot read the key file"):
        message_signing(conf, "svc")
    (tmp_path / "junk.pem").write_text("not a key")
    conf.security_key = str(tmp_path / "junk.pem")
    with pytest.raises(ConfigurationError, match="not a PEM private key"):
        message_signing(conf, "svc")
    conf.security_key = None
    conf.security_trusted_keys = {"web": "x"}
    with pytest.raises(ConfigurationError, match="needs a key of its own"):
        message_signing(conf, "svc")
