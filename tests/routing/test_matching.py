"""topic_matches and headers_match against reference matchers written independently here.

The topic reference compiles a binding key to a regular expression over the routing key's words;
the headers reference is a port of RabbitMQ's merge over key-sorted tables, comparing values as
Erlang terms (which is what RabbitMQ does). Both agree with RabbitMQ on the cases in cases.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.routing.entities import FrozenMapping
from conveyor.routing.matching import headers_match, topic_matches
from tests.routing.cases import HEADERS_CASES, TOPIC_CASES

_SEP = "\x00"


def reference_topic(binding_key: str, routing_key: str) -> bool:
    """Each word becomes SEP+word; '*' is one such unit, '#' any number of them."""
    words = routing_key.split(".") if routing_key else []
    subject = "".join(_SEP + w for w in words)
    parts = []
    for token in binding_key.split(".") if binding_key else []:
        if token == "#":
            parts.append(f"(?:{_SEP}[^{_SEP}]*)*")
        elif token == "*":
            parts.append(f"{_SEP}[^{_SEP}]*")
        else:
            parts.append(re.escape(_SEP + token))
    return re.fullmatch("".join(parts), subject) is not None


def _amqp_type(value: Any) -> str:
    if value is None:
        return "void"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, list):
        return "array"
    return "table"


def _erlang_term(value: Any) -> Any:
    """The value as RabbitMQ holds it; Python's == on these behaves like Erlang's ==."""
    if value is None:
        return ("undefined",)
    if isinstance(value, bool):
        return ("atom", "true" if value else "false")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return ("binary", value.encode())
    if isinstance(value, list):
        return ("array", tuple((_amqp_type(v), _erlang_term(v)) for v in value))
    return (
        "table",
        tuple(sorted((k, _amqp_type(v), _erlang_term(v)) for k, v in value.items())),
    )


def reference_headers(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    """rabbit_exchange_type_headers:headers_match/5, clause by clause."""
    mode = arguments.get("x-match", "all")
    kind = mode if mode in ("all", "any", "all-with-x", "any-with-x") else "all"
    wants_all = kind in ("all", "all-with-x")
    with_x = kind.endswith("-with-x")
    pattern = sorted(((k, _amqp_type(v), v) for k, v in arguments.items()), key=lambda t: t[0])
    data = sorted(headers.items(), key=lambda kv: kv[0])
    all_match, any_match = True, False
    i = j = 0
    while True:
        if wants_all and not all_match:
            return False
        if not wants_all and any_match:
            return True
        if i == len(pattern):
            return all_match if wants_all else any_match
        pk, ptype, pv = pattern[i]
        if pk == "x-match" or (pk.startswith("x-") and not with_x):
            i += 1
            continue
        if j == len(data):
            all_match, i = False, len(pattern)
            continue
        dk, dv = data[j]
        if pk > dk:
            j += 1
        elif pk < dk:
            all_match, i = False, i + 1
        elif ptype == "void" or _erlang_term(pv) == _erlang_term(dv):
            any_match, i, j = True, i + 1, j + 1
        else:
            all_match, i, j = False, i + 1, j + 1


@pytest.mark.parametrize(("binding_key", "routing_key", "expected"), TOPIC_CASES)
def test_topic_edge_cases(binding_key: str, routing_key: str, expected: bool) -> None:
    assert topic_matches(binding_key, routing_key) is expected
    assert reference_topic(binding_key, routing_key) is expected


@pytest.mark.parametrize(("arguments", "headers", "expected"), HEADERS_CASES)
def test_headers_edge_cases(
    arguments: dict[str, Any], headers: dict[str, Any], expected: bool
) -> None:
    assert headers_match(arguments, headers) is expected
    assert headers_match(FrozenMapping(arguments), headers) is expected
    assert reference_headers(arguments, headers) is expected


_binding_word = st.sampled_from(["a", "b", "", "*", "#", "ab"])
_routing_word = st.sampled_from(["a", "b", "", "ab", "*", "#"])


def _key(words: st.SearchStrategy[str], max_words: int) -> st.SearchStrategy[str]:
    return st.lists(words, max_size=max_words).map(".".join)


@settings(max_examples=600, deadline=None)
@given(_key(_binding_word, 6), _key(_routing_word, 6))
def test_topic_matches_agrees_with_reference(binding_key: str, routing_key: str) -> None:
    assert topic_matches(binding_key, routing_key) == reference_topic(binding_key, routing_key)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.*#", max_size=10), st.text(alphabet="ab.*#", max_size=10))
def test_topic_matches_agrees_on_any_text(binding_key: str, routing_key: str) -> None:
    assert topic_matches(binding_key, routing_key) == reference_topic(binding_key, routing_key)


@given(_key(_routing_word, 6))
def test_hash_matches_every_key_and_a_literal_key_only_itself(routing_key: str) -> None:
    assert topic_matches("#", routing_key)
    assert topic_matches(routing_key, routing_key)
    assert not topic_matches(routing_key + ".x", routing_key)


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([0.0, 1.0, 1.5, -1.0]),
    st.sampled_from(["", "a", "1"]),
)
_value = st.one_of(
    _scalar,
    st.lists(_scalar, max_size=2),
    st.dictionaries(st.sampled_from(["p", "q"]), _scalar, max_size=2),
)
_header_key = st.sampled_from(["a", "b", "c", "x-a", "x-b"])
_mode = st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"])


@st.composite
def _binding_and_headers(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    arguments = draw(st.dictionaries(_header_key, _value, max_size=4))
    mode = draw(_mode)
    if mode is not None:
        arguments["x-match"] = mode
    # Copy some of the binding's pairs into the headers so that matches are common.
    copied = draw(st.sets(st.sampled_from(sorted(arguments)), max_size=4)) if arguments else set()
    headers = {k: arguments[k] for k in copied if k != "x-match"}
    headers.update(draw(st.dictionaries(_header_key, _value, max_size=3)))
    return arguments, headers


@settings(max_examples=800, deadline=None)
@given(_binding_and_headers())
def test_headers_match_agrees_with_reference(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    arguments, headers = case
    assert headers_match(arguments, headers) == reference_headers(arguments, headers)


@given(st.dictionaries(_header_key, _value, max_size=4))
def test_all_without_keys_matches_everything_and_any_matches_nothing(
    headers: dict[str, Any],
) -> None:
    assert headers_match({}, headers)
    assert headers_match({"x-match": "all"}, headers)
    assert not headers_match({"x-match": "any"}, headers)


def test_unknown_x_match_counts_as_all_like_rabbitmq() -> None:
    assert headers_match({"x-match": "bogus", "a": 1}, {"a": 1})
    assert not headers_match({"x-match": "bogus", "a": 1, "b": 2}, {"a": 1})
