"""conveyor/worker/hostname.py: expanding ``%h``, ``%n``, ``%d`` and ``%%`` in host names."""

from __future__ import annotations

import pytest

from conveyor.worker import expand_hostname


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("z@%h", "z@web1.example.com"),
        ("z@%n", "z@web1"),
        ("%n.%d", "web1.example.com"),
        ("100%%@%n", "100%@web1"),
        ("plain", "plain"),
    ],
)
def test_hostname_expansion(template: str, expected: str) -> None:
    assert expand_hostname(template, host="web1.example.com") == expected
