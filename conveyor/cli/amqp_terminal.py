"""The admin shell at a terminal: a numbered prompt with completion, a usage hint and history.

The line editing, completion menu and history file are prompt_toolkit's; the verbs and their
answers are :class:`~conveyor.cli.amqp_shell.AMQPShell`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory

from conveyor.cli.amqp_shell import AMQPShell, Answer
from conveyor.cli.amqp_verbs import VERBS, UsageError, split_line

__all__ = ["VerbCompleter", "history_path", "run_interactive", "show"]

_LEAVE = frozenset({"exit", "quit"})
_QUEUE_WORDS = frozenset({"QUEUE"})
_EXCHANGE_WORDS = frozenset({"EXCHANGE"})


def history_path() -> Path:
    """``$XDG_STATE_HOME/conveyor/amqp_history`` (default ``~/.local/state/conveyor/...``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "conveyor" / "amqp_history"


def _history() -> History:
    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError:
        return InMemoryHistory()  # a read-only home still gets a working shell
    return FileHistory(str(path))


class VerbCompleter(Completer):
    """Completes verbs (showing each one's usage), then the names the session has seen where
    the verb wants a queue or an exchange, and the verb's flags."""

    def __init__(self, shell: AMQPShell) -> None:
        self.shell = shell

    def _names(self, verb_name: str, position: int) -> Iterable[str]:
        verb = VERBS[verb_name]
        positional = (*verb.required, *verb.optional)
        if position < len(positional):
            word = positional[position]
            if word in _QUEUE_WORDS or (word == "NAME" and verb_name.startswith("queue.")):
                return sorted(self.shell.queues)
            if word in _EXCHANGE_WORDS or (word == "NAME" and verb_name.startswith("exchange.")):
                return sorted(self.shell.exchanges)
            if word == "TYPE":
                return ("direct", "topic", "fanout", "headers")
            if word == "VERB":
                return tuple(VERBS)
            if position < len(verb.required):
                return ()
        return verb.flags

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        before = document.text_before_cursor
        try:
            words = split_line(before)
        except UsageError:
            return
        if not before or before[-1].isspace():
            words.append("")
        current = words[-1]
        if len(words) == 1:
            for name, verb in VERBS.items():
                if name.startswith(current):
                    yield Completion(name, -len(current), display_meta=verb.usage)
            return
        if words[0] not in VERBS:
            return
        for name in self._names(words[0], len(words) - 2):
            if name.startswith(current):
                yield Completion(name, -len(current))


def _hint(session: PromptSession[str]) -> str:
    words = session.default_buffer.text.split()
    if words and words[0] in VERBS:
        return VERBS[words[0]].usage
    return "help lists the verbs; Tab completes; Ctrl-D or exit leaves"


def show(answer: Answer, as_json: bool, echo: Callable[[str], None]) -> None:
    """Print ``answer`` as text, or as one line of JSON."""
    echo(json.dumps(answer.as_json(), default=repr) if as_json else answer.text)


async def run_interactive(shell: AMQPShell, *, as_json: bool = False) -> int:
    """Prompt ``N> `` until Ctrl-D or ``exit``; return 0 (bad lines never end the session)."""
    session: PromptSession[str] = PromptSession(
        history=_history(),
        completer=VerbCompleter(shell),
        complete_while_typing=False,
    )
    session.bottom_toolbar = lambda: _hint(session)
    number = 1
    while True:
        try:
            line = await session.prompt_async(f"{number}> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return 0
        if line.strip() in _LEAVE:
            return 0
        answer = await shell.run_line(line)
        if answer is None:
            continue
        number += 1
        show(answer, as_json, print)
