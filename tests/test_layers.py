"""DESIGN.md's layering, checked on the source: a module imports only from its own layer or
the layers below it (imports under TYPE_CHECKING included), and routing stays pure."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "conveyor"

# Bottom to top. A module belongs to the first prefix it starts with.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "conveyor.errors",
            "conveyor._frozen",
            "conveyor.urls",
            "conveyor.task_ids",
            "conveyor.seconds",
            "conveyor.lifecycle",
        ),
    ),
    ("routing", ("conveyor.routing",)),
    ("protocol", ("conveyor.protocol",)),
    ("transports", ("conveyor.transports",)),
    (
        "application",
        (
            "conveyor.app",
            "conveyor.task",
            "conveyor.canvas",
            "conveyor.config",
            "conveyor.settings_load",
            "conveyor.options",
            "conveyor.sending",
            "conveyor.eager",
            "conveyor.rate_limits",
            "conveyor.sync_loop",
            "conveyor.signals",
            "conveyor.results",
            "conveyor.logs",
            "conveyor.settings_check",
            "conveyor.security",
            "conveyor.unconfirmed",
        ),
    ),
    ("services", ("conveyor.worker", "conveyor.beat")),
    # conveyor.testing starts an in-process worker for a user's tests.
    ("interfaces", ("conveyor.cli", "conveyor.contrib", "conveyor.__main__", "conveyor.testing")),
]


def layer_of(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, module: str) -> set[str]:
    """Every conveyor module ``path`` imports, wherever the import stands."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
    return {n for n in names if n == "conveyor" or n.startswith("conveyor.")}


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer() -> None:
    assert [module_name(p) for p in MODULES if layer_of(module_name(p)) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_a_module_imports_nothing_from_a_higher_layer(path: Path) -> None:
    module = module_name(path)
    own = layer_of(module)
    assert own is not None
    upward = sorted(
        name
        for name in imported(path, module)
        if (rank := layer_of(name)) is not None and rank > own
    )
    assert upward == [], f"{module} ({LAYERS[own][0]}) imports from higher layers: {upward}"


def test_importing_routing_loads_no_worker_and_no_transport() -> None:
    code = (
        "import sys, conveyor.routing; "
        "print(sorted(m for m in sys.modules if m.startswith(('conveyor.worker', "
        "'conveyor.transports', 'conveyor.app', 'conveyor.results'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
