"""``conveyor amqp`` as a user runs it: the interactive shell in a pseudo-terminal, the one-shot
form with its exit status and ``--json``, and lines piped in."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import pexpect
import pytest

from tests.cli.conftest import cli_env, conveyor
from tests.worker.helpers import ROOT

# prompt_toolkit draws a space as a cursor move; match either.
GAP = r"(?: |\x1b\[C)+"


Spawn = Callable[..., pexpect.spawn]


@pytest.fixture
def spawn(broker_url: str, tmp_path: Path) -> Iterator[Spawn]:
    """``spawn()`` starts ``conveyor amqp`` on a 30x160 terminal; without ``cpr=True``
    prompt_toolkit does not ask the terminal where its cursor is (and draws no toolbar).
    Children still running are ended after the test, and their logs closed."""
    children: list[tuple[pexpect.spawn, TextIO]] = []

    def start(*, cpr: bool = False) -> pexpect.spawn:
        env = cli_env(broker_url, TERM="xterm", XDG_STATE_HOME=str(tmp_path / "state"))
        if cpr:
            env.pop("PROMPT_TOOLKIT_NO_CPR", None)
        else:
            env["PROMPT_TOOLKIT_NO_CPR"] = "1"
        child = pexpect.spawn(
            sys.executable,
            ["-c", "from conveyor.cli.main import main; main()", "amqp"],
            env=env,
            cwd=str(ROOT),
            dimensions=(30, 160),
            encoding="utf-8",
            timeout=15,
        )
        log = (tmp_path / "terminal.log").open("a")
        child.logfile_read = log
        children.append((child, log))
        return child

    yield start
    for child, log in children:
        if child.isalive():
            child.terminate(force=True)
        child.close()
        log.close()


def leave(child: pexpect.spawn) -> int:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    status = child.exitstatus
    assert isinstance(status, int)
    return status


def test_the_guides_session_in_a_terminal(
    spawn: Spawn, names: Callable[[str], str], forget: list[str]
) -> None:
    ex, q = names("testexchange"), names("testqueue")
    forget += [q, ex]
    child = spawn()
    child.expect(r"-> connecting to \w+://")
    child.expect(r"-> connected\.")
    session = [
        (f"exchange.declare {ex} direct", r"ok\."),
        (f"queue.declare {q}", rf"ok\. queue:{q} messages:0 consumers:0\."),
        (f"queue.bind {q} {ex} testkey", r"ok\."),
        (f"basic.publish 'This is a message!' {ex} testkey", r"ok\."),
        (
            f"basic.get {q}",
            r"\{'body': 'This is a message!',\s+'delivery_info': \{'delivery_tag': 1,"
            rf"\s+'exchange': '{ex}',\s+'message_count': 0,\s+'redelivered': False,"
            r"\s+'routing_key': 'testkey'\},\s+'properties': \{",
        ),
        ("basic.ack 1", r"ok\."),
        (f"queue.delete {q}", r"ok\. 0 messages deleted\."),
        (f"exchange.delete {ex}", r"ok\."),
    ]
    for number, (line, answer) in enumerate(session, start=1):
        child.expect(rf"{number}>")
        child.sendline(line)
        child.expect(answer)
    child.expect("9>")
    assert leave(child) == 0


def test_bad_input_never_ends_the_session(
    spawn: Spawn, names: Callable[[str], str], forget: list[str]
) -> None:
    q = names("q")
    forget.append(q)
    child = spawn()
    child.expect("1>")
    child.sendline(f"queue.declare {q}")
    child.expect(r"ok\. queue:")
    child.expect("2>")
    child.sendline("queue.bind onlyqueue")
    child.expect(r"error: queue\.bind needs EXCHANGE\r\nusage: queue\.bind QUEUE EXCHANGE")
    child.expect("3>")
    child.sendline(f"queue.declare {q} x-max-priority=10")
    child.expect(rf"error: queue '{q}' (already )?exists")
    child.expect("4>")
    child.sendline(f"queue.delete {names('missing')}")
    child.expect("does not exist")
    child.expect("5>")
    child.sendline("frob")
    child.expect("unknown verb 'frob'")
    child.expect("6>")
    child.sendcontrol("c")  # Ctrl-C drops the line, not the session
    child.expect("6>")
    child.sendline(f"queue.declare {q} passive")  # the broker still answers after a refusal
    child.expect(rf"ok\. queue:{q} messages:0 consumers:0\.")
    child.expect("7>")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def prompt(child: pexpect.spawn, number: int) -> None:
    """Wait for prompt ``number``, answering prompt_toolkit's cursor position request first."""
    child.expect(r"\x1b\[6n")
    child.send("\x1b[5;1R")
    child.expect(f"{number}>")


@pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)
def test_completion_hint_and_history_across_sessions(spawn: Spawn, tmp_path: Path) -> None:
    child = spawn(cpr=True)
    prompt(child, 1)
    child.expect(f"help{GAP}lists{GAP}the{GAP}verbs")  # the toolbar, before a verb is typed
    child.send("queue.dec\t")  # one match: completed in place, and the hint shows its usage
    child.expect(f"queue.declare{GAP}NAME{GAP}\\[passive\\]")
    child.send(" shelf\r")
    child.expect(r"ok\. queue:shelf messages:0 consumers:0\.")
    prompt(child, 2)
    child.send("basic.get sh\t")  # a queue name the shell has seen
    child.expect("elf")
    child.send("\r")
    child.expect(r"ok\. queue:shelf is empty\.")
    prompt(child, 3)
    child.send("queue.\t")  # several matches: a menu with each verb's usage
    child.expect(f"queue.purge{GAP}NAME")
    child.sendcontrol("c")
    prompt(child, 3)  # keys sent between two prompts would meet a terminal in cooked mode
    assert leave(child) == 0
    history = (tmp_path / "state" / "conveyor" / "amqp_history").read_text()
    assert "queue.declare shelf" in history

    again = spawn(cpr=True)
    prompt(again, 1)
    again.send("\x1b[A")  # up: the last line of the previous session
    again.expect("basic.get shelf")
    again.send("\r")
    again.expect(r"ok\. queue:shelf is empty\.")
    prompt(again, 2)
    assert leave(again) == 0


def test_one_shot_verbs_exit_with_their_status(
    broker_url: str, names: Callable[[str], str], forget: list[str]
) -> None:
    q = names("oneshot")
    forget.append(q)
    env = cli_env(broker_url)
    done = conveyor("amqp", "queue.declare", q, "x-max-priority=10", env=env)
    assert (done.returncode, done.stdout) == (0, f"ok. queue:{q} messages:0 consumers:0.\n")
    published = conveyor("amqp", "--json", "basic.publish", "hello", "", q, "priority=3", env=env)
    assert json.loads(published.stdout) == {"ok": True, "verb": "basic.publish", "routed": True}
    got = conveyor("amqp", "basic.get", q, "--json", env=env)
    answer = json.loads(got.stdout)
    assert answer["message"]["body"] == "hello"
    assert answer["message"]["properties"]["priority"] == 3
    refused = conveyor("amqp", "queue.declare", q, env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: queue '{q}'")
    refused_json = conveyor("amqp", "--json", "queue.declare", q, env=env)
    assert refused_json.returncode == 1
    assert json.loads(refused_json.stdout)["error_kind"] == "PreconditionFailed"
    wrong = conveyor("amqp", "queue.bind", q, env=env)
    assert wrong.returncode == 2
    assert "usage: queue.bind QUEUE EXCHANGE" in wrong.stderr
    wrong_json = conveyor("amqp", "--json", "basic.ack", "1", env=env)
    assert wrong_json.returncode == 1
    assert "unknown delivery tag 1" in json.loads(wrong_json.stdout)["error"]
    # The one-shot basic.get above did not ack: the message went back when the shell closed.
    assert conveyor("amqp", "queue.delete", q, env=env).stdout == "ok. 1 messages deleted.\n"


@pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)
def test_lines_piped_in_and_the_broker_option(broker_url: str, tmp_path: Path) -> None:
    other = f"sqlite://{tmp_path / 'other.db'}"
    script = "queue.declare piped\nbasic.publish x '' piped\nqueue.bind\nqueue.purge piped\n"
    out = conveyor("amqp", "--broker", other, input=script, env=cli_env(broker_url))
    assert out.returncode == 2  # the worst answer's status
    assert out.stdout.splitlines() == [
        "ok. queue:piped messages:0 consumers:0.",
        "ok.",
        "error: queue.bind needs QUEUE EXCHANGE",
        "usage: queue.bind QUEUE EXCHANGE [ROUTING_KEY] [ARG=VALUE...]",
        "ok. 1 messages deleted.",
    ]
    assert (tmp_path / "other.db").exists()
    nobody = "amqp://guest:guest@127.0.0.1:1/"
    unreachable = conveyor("amqp", "--broker", nobody, "help", env=cli_env(other))
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(
        "Error: cannot reach RabbitMQ at amqp://guest@127.0.0.1:1/"
    )
    assert "Traceback" not in unreachable.stderr
