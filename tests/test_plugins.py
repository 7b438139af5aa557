"""An unknown URL scheme names what was being chosen and every scheme that would work."""

import pytest

from conveyor.errors import ConfigurationError
from conveyor.results import backend_class
from conveyor.transports import open_transport


def test_unknown_broker_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"broker URL 'kafka://x' .* sqlite://"):
        open_transport("kafka://x")


def test_unknown_backend_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"result backend URL 'db://x' .* rpc://"):
        backend_class("db://x")
