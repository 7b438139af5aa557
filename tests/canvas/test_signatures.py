"""Signatures as values: cloning with partial arguments, without any broker."""

from __future__ import annotations

from conveyor import chain, group, signature


def test_a_chain_clone_gives_partial_arguments_to_its_first_step_only() -> None:
    original = chain(signature("a", (1,)), signature("b"))
    copy = original.clone((5,), {"k": 2})
    assert [(t["task"], list(t["args"]), dict(t["kwargs"])) for t in copy.tasks] == [
        ("a", [5, 1], {"k": 2}),
        ("b", [], {}),
    ]
    assert [list(t["args"]) for t in original.tasks] == [[1], []]  # the original is untouched


def test_a_group_clone_gives_partial_arguments_to_every_member() -> None:
    copy = group(signature("a", (1,)), signature("b")).clone((5,), {"k": 2}, priority=3)
    assert [(t["task"], list(t["args"]), dict(t["kwargs"])) for t in copy.tasks] == [
        ("a", [5, 1], {"k": 2}),
        ("b", [5], {"k": 2}),
    ]
    assert copy.options["priority"] == 3


def test_a_signature_clone_takes_partial_arguments_unless_immutable() -> None:
    original = signature("a", (1,), {"x": 1})
    copy = original.clone((5,), {"k": 2}, priority=3)
    assert (list(copy.args), dict(copy.kwargs), copy.options["priority"]) == (
        [5, 1],
        {"x": 1, "k": 2},
        3,
    )
    assert (list(original.args), dict(original.kwargs)) == ([1], {"x": 1})
    frozen = signature("a", (1,), immutable=True).clone((5,), {"k": 2})
    assert (list(frozen.args), dict(frozen.kwargs)) == ([1], {})


def test_a_chord_clone_gives_partial_arguments_to_its_header() -> None:
    from conveyor import chord

    copy = chord([signature("a", (1,)), signature("b")], signature("c")).clone((5,))
    assert [list(t["args"]) for t in copy.header.tasks] == [[5, 1], [5]]
    assert list(copy.body.args) == []
