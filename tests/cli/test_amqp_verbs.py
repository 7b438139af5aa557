"""Parsing the admin shell's lines: positional words, flags, KEY=VALUE pairs, and bad input."""

from __future__ import annotations

import pytest

from conveyor.cli.amqp_verbs import VERBS, UsageError, parse_value, parse_words, split_line


def test_positionals_flags_and_pairs() -> None:
    call = parse_words(["queue.declare", "q", "durable", "x-max-priority=10", "auto_delete"])
    assert call.words == {"NAME": "q"}
    assert call.flags == {"durable", "auto_delete"}
    assert call.pairs == {"x-max-priority": 10}


def test_optional_positionals_stop_at_a_flag_or_a_pair() -> None:
    assert parse_words(["exchange.declare", "ex", "durable"]).words == {"NAME": "ex"}
    assert parse_words(["exchange.declare", "ex", "topic"]).words == {"NAME": "ex", "TYPE": "topic"}
    bind = parse_words(["queue.bind", "q", "ex", "x-match=all", "format=pdf"])
    assert bind.words == {"QUEUE": "q", "EXCHANGE": "ex"}
    assert bind.pairs == {"x-match": "all", "format": "pdf"}
    keyed = parse_words(["queue.bind", "q", "ex", "usa.#"])
    assert keyed.words["ROUTING_KEY"] == "usa.#"


def test_publish_takes_its_three_words_verbatim() -> None:
    call = parse_words(["basic.publish", "mandatory", "", "q", "mandatory", "priority=5"])
    assert call.words == {"BODY": "mandatory", "EXCHANGE": "", "ROUTING_KEY": "q"}
    assert call.flags == {"mandatory"}
    assert call.pairs == {"priority": 5}


def test_values_are_json_when_they_are_json() -> None:
    assert parse_value("10") == 10
    assert parse_value("true") is True
    assert parse_value('"10"') == "10"
    assert parse_value("all") == "all"
    assert parse_value("007") == "007"
    assert parse_value("[1, 2]") == [1, 2]


def test_lines_split_like_a_shell() -> None:
    assert split_line("basic.publish 'This is a message!' ex key") == [
        "basic.publish",
        "This is a message!",
        "ex",
        "key",
    ]
    with pytest.raises(UsageError, match="cannot read that line"):
        split_line("basic.publish 'unclosed ex key")


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "no verb given"),
        (["queue.frob"], "unknown verb 'queue.frob'"),
        (["queue.bind", "q"], "queue.bind needs EXCHANGE"),
        (["basic.publish", "body"], "basic.publish needs EXCHANGE ROUTING_KEY"),
        (["queue.purge", "q", "now"], "queue.purge does not take 'now'"),
        (["queue.delete", "q", "x=1"], "queue.delete does not take 'x=1'"),
        (["exchange.declare", "ex", "direct", "fanout"], "does not take 'fanout'"),
    ],
)
def test_wrong_arguments_name_what_is_wrong(words: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_words(words)
    if len(words) > 1 or (words and words[0] in VERBS):
        assert caught.value.verb is not None


def test_every_verb_has_a_one_line_usage() -> None:
    assert VERBS["queue.bind"].usage == "queue.bind QUEUE EXCHANGE [ROUTING_KEY] [ARG=VALUE...]"
    assert VERBS["basic.get"].usage == "basic.get QUEUE [no_ack]"
    assert all("\n" not in verb.usage and verb.summary for verb in VERBS.values())
