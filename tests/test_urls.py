"""An unknown URL scheme names what was being chosen and every scheme that would work."""

import pytest

from conveyor.errors import ConfigurationError
from conveyor.results import backend_class
from conveyor.transports import open_transport
from conveyor.urls import parse_options, redacted


def test_unknown_broker_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"broker URL 'kafka://x' .* sqlite://"):
        open_transport("kafka://x")


def test_unknown_backend_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"result backend URL 'db://x' .* rpc://"):
        backend_class("db://x")


def test_a_password_never_reaches_a_printed_url() -> None:
    assert redacted("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"


def test_an_unknown_query_option_is_named_with_the_known_ones() -> None:
    spec = {"lease": (float, 5.0), "fast": (bool, False)}
    assert parse_options("x://h/?lease=2&fast=yes", {}, spec) == {"lease": 2.0, "fast": True}
    with pytest.raises(ConfigurationError, match=r"unknown option 'leese' .* fast, lease"):
        parse_options("x://h/?leese=2", {}, spec)


def test_a_result_backend_url_is_named_as_one_in_option_errors() -> None:
    from conveyor.results.sqlite import SQLiteBackend
    from tests.results.helpers import NoBrokerHost

    with pytest.raises(ConfigurationError) as caught:
        SQLiteBackend.from_url("sqlite:///tmp/r.db?pol=1", host=NoBrokerHost())
    assert str(caught.value) == (
        "unknown option 'pol' for result backend URL 'sqlite:///tmp/r.db?pol=1': "
        "the options are poll"
    )
