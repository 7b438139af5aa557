"""The admin shell's verbs: their usage, and parsing a line of words into a call of one.

Pure: no I/O. A verb takes its positional words in order, then flag words (``durable``,
``if_unused``...) and ``KEY=VALUE`` words (queue arguments, binding arguments, or message
properties and headers, depending on the verb). A value is read as JSON when it is JSON
(``10``, ``true``, ``"10"``), else as a plain string.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VERBS", "Call", "UsageError", "Verb", "parse_value", "parse_words", "split_line"]


class UsageError(Exception):
    """A line the shell cannot turn into a verb call; ``verb`` is the verb it names, if known."""

    def __init__(self, message: str, verb: Verb | None = None) -> None:
        super().__init__(message)
        self.verb = verb


@dataclass(frozen=True, slots=True)
class Verb:
    """One shell verb: its positional words (required, then optional), flags, and what its
    ``KEY=VALUE`` words mean (None: it takes none)."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    pairs: str | None = None
    summary: str = ""

    @property
    def usage(self) -> str:
        """The one-line usage, e.g. ``queue.bind QUEUE EXCHANGE [ROUTING_KEY] [ARG=VALUE...]``."""
        parts = [self.name, *self.required]
        parts += [f"[{word}]" for word in (*self.optional, *self.flags)]
        if self.pairs is not None:
            parts.append(f"[{self.pairs}...]")
        return " ".join(parts)


VERBS: Mapping[str, Verb] = {
    verb.name: verb
    for verb in (
        Verb(
            "exchange.declare",
            ("NAME",),
            ("TYPE",),
            ("passive", "durable", "auto_delete"),
            "ARG=VALUE",
            "declare an exchange (TYPE: direct, topic, fanout or headers; default direct)",
        ),
        Verb("exchange.delete", ("NAME",), (), ("if_unused",), None, "delete an exchange"),
        Verb(
            "queue.declare",
            ("NAME",),
            (),
            ("passive", "durable", "exclusive", "auto_delete"),
            "ARG=VALUE",
            "declare a queue, e.g. with x-max-priority=10; answers its message and consumer counts",
        ),
        Verb(
            "queue.bind",
            ("QUEUE", "EXCHANGE"),
            ("ROUTING_KEY",),
            (),
            "ARG=VALUE",
            "bind a queue to an exchange (ARG=VALUE: headers-exchange arguments, e.g. x-match=all)",
        ),
        Verb(
            "queue.unbind",
            ("QUEUE", "EXCHANGE"),
            ("ROUTING_KEY",),
            (),
            "ARG=VALUE",
            "remove a binding",
        ),
        Verb("queue.purge", ("NAME",), (), (), None, "remove a queue's ready messages"),
        Verb(
            "queue.delete",
            ("NAME",),
            (),
            ("if_unused", "if_empty"),
            None,
            "delete a queue and its messages",
        ),
        Verb(
            "basic.publish",
            ("BODY", "EXCHANGE", "ROUTING_KEY"),
            (),
            ("mandatory",),
            "PROPERTY|HEADER=VALUE",
            "publish a message (properties: priority, expiration in seconds, content_type, "
            "correlation_id, reply_to, message_id, type, app_id, delivery_mode; other pairs "
            "are headers, or header:NAME=VALUE)",
        ),
        Verb("basic.get", ("QUEUE",), (), ("no_ack",), None, "take one message from a queue"),
        Verb("basic.ack", ("TAG",), (), (), None, "acknowledge a message got in this session"),
        Verb(
            "basic.reject",
            ("TAG",),
            (),
            ("requeue",),
            None,
            "reject a message got in this session (dead-lettered or dropped unless requeue)",
        ),
        Verb("help", (), ("VERB",), (), None, "list the verbs, or show one verb's usage"),
    )
}


@dataclass(frozen=True, slots=True)
class Call:
    """A parsed line: the verb, its positional words by name, its flags and its pairs."""

    verb: Verb
    words: Mapping[str, str]
    flags: frozenset[str] = frozenset()
    pairs: Mapping[str, Any] = field(default_factory=dict)

    def has(self, flag: str) -> bool:
        return flag in self.flags


def split_line(line: str) -> list[str]:
    """Split a shell line into words as a POSIX shell would (quotes group words).

    Raises UsageError for an unclosed quote.
    """
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot read that line: {exc}") from None


def parse_value(text: str) -> Any:
    """``text`` as a JSON value if it is one (``10``, ``true``, ``"x"``, ``[1]``), else itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_words(words: Sequence[str]) -> Call:
    """Turn ``[verb, *arguments]`` into a Call.

    Raises UsageError naming what is missing or unexpected (with the verb, when it is known).
    """
    if not words:
        raise UsageError("no verb given: type help for the list")
    verb = VERBS.get(words[0])
    if verb is None:
        raise UsageError(f"unknown verb {words[0]!r}: type help for the list")
    rest = list(words[1:])
    if len(rest) < len(verb.required):
        missing = " ".join(verb.required[len(rest) :])
        raise UsageError(f"{verb.name} needs {missing}", verb)
    named = dict(zip(verb.required, rest, strict=False))
    rest = rest[len(verb.required) :]
    for word in verb.optional:
        if rest and rest[0] not in verb.flags and "=" not in rest[0]:
            named[word] = rest.pop(0)
    flags: set[str] = set()
    pairs: dict[str, Any] = {}
    for word in rest:
        key, equals, value = word.partition("=")
        if word in verb.flags:
            flags.add(word)
        elif equals and key and verb.pairs is not None:
            pairs[key] = parse_value(value)
        else:
            raise UsageError(f"{verb.name} does not take {word!r}", verb)
    return Call(verb, named, frozenset(flags), pairs)
