"""``task_routes`` parsed into an ordered list of rules, in every form the routing guide shows.

The forms: a dict of exact task names and glob patterns (``'feed.tasks.*'``) or compiled regexes;
an ordered items list of ``(pattern, route)`` pairs wrapped in a tuple (``([...],)``); a router
function ``(name, args, kwargs, options, task=None, **kw)``; a dotted path naming such a function;
and a list or tuple mixing all of these. Rules are visited in order and the first truthy answer
wins. Inside one dict an exact name is tried before the patterns (as Celery does); an items list
is tried strictly in its order. Globs match the whole name; a regex matches from the start of the
name (``re.match``), as in Celery.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from conveyor.errors import RoutingError
from conveyor.routing.entities import Broadcast, Exchange, ExchangeType, FrozenMapping, Queue

__all__ = [
    "ROUTE_KEYS",
    "FunctionRule",
    "PatternRule",
    "Rule",
    "import_router",
    "parse_task_routes",
    "route_options",
]

ROUTE_KEYS = ("queue", "exchange", "exchange_type", "routing_key", "priority")
_GLOB_CHARS = "*?["
_REGEX_META = set(".^$*+?{}[]\\|()")


def route_options(value: Any, where: str) -> dict[str, Any]:
    """A route value as a dict of the keys the router honours, without ``None`` values.

    ``value`` is a dict, a queue name, or a Queue/Broadcast. Raises RoutingError naming
    ``where`` for an unknown key (with the closest known one) or a value of the wrong type.
    """
    if isinstance(value, (str, Queue, Broadcast)):
        value = {"queue": value}
    if not isinstance(value, Mapping):
        raise RoutingError(
            f"{where}: a route must be a dict like {{'queue': 'name'}} or a queue name, "
            f"got {value!r}"
        )
    options: dict[str, Any] = {}
    for key, item in value.items():
        if key not in ROUTE_KEYS:
            close = difflib.get_close_matches(str(key), ROUTE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RoutingError(
                f"{where}: unknown route key {key!r}{hint}; a route may set "
                + ", ".join(ROUTE_KEYS)
            )
        if item is not None:
            options[key] = _checked(key, item, where)
    return options


def _checked(key: str, value: Any, where: str) -> Any:
    allowed: tuple[type, ...]
    if key == "queue":
        allowed = (str, Queue, Broadcast)
    elif key == "exchange":
        allowed = (str, Exchange)
    elif key == "exchange_type":
        allowed = (str, ExchangeType)
    elif key == "routing_key":
        allowed = (str,)
    else:
        allowed = (int,)
    if not isinstance(value, allowed) or (key == "priority" and isinstance(value, bool)):
        names = " or ".join(t.__name__ for t in allowed)
        raise RoutingError(f"{where}: {key} must be {names}, got {value!r}")
    return value


def _literal_regex_prefix(pattern: str) -> str:
    """The text every match of ``re.match(pattern, name)`` starts with (may be shorter)."""
    depth = 0
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return ""  # top-level alternation: matches may start differently
        i += 1
    prefix: list[str] = []
    i = 1 if pattern.startswith("^") else 0
    while i < len(pattern):
        ch = pattern[i]
        if ch in "*?{":
            if prefix:
                prefix.pop()  # the previous character is optional or repeated from zero
            break
        if ch == "\\" and i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            prefix.append(pattern[i + 1])
            i += 2
            continue
        if ch in _REGEX_META:
            break
        prefix.append(ch)
        i += 1
    return "".join(prefix)


@dataclass(frozen=True, slots=True)
class PatternRule:
    """One entry of a dict or items list: a pattern and the route it gives.

    ``kind`` is ``exact`` (a task name), ``glob`` (contains ``*``, ``?`` or ``[``) or ``regex``
    (a compiled ``re.Pattern``). ``label`` says where the rule is written, for humans.
    """

    label: str
    kind: Literal["exact", "glob", "regex"]
    pattern: str
    route: FrozenMapping
    regex: re.Pattern[str] | None = None

    def matches(self, name: str) -> bool:
        """True if this rule applies to the task ``name``."""
        if self.kind == "exact":
            return name == self.pattern
        assert self.regex is not None
        if self.kind == "glob":
            return self.regex.fullmatch(name) is not None
        return self.regex.match(name) is not None

    @property
    def literal_prefix(self) -> str:
        """Every name this rule matches starts with this text."""
        if self.kind == "exact":
            return self.pattern
        if self.kind == "glob":
            cut = min((i for i, ch in enumerate(self.pattern) if ch in _GLOB_CHARS), default=0)
            return self.pattern[:cut]
        assert self.regex is not None
        if self.regex.flags & re.IGNORECASE:
            return ""
        return _literal_regex_prefix(self.pattern)

    @property
    def universal_prefix(self) -> str | None:
        """``p`` if this rule matches exactly the names that start with ``p``, else None."""
        if self.kind == "glob":
            body = self.pattern[:-1]
            if self.pattern.endswith("*") and not any(c in _GLOB_CHARS for c in body):
                return body
            return None
        if self.kind == "regex":
            assert self.regex is not None
            if self.regex.flags & re.IGNORECASE:
                return None
            body = self.pattern.removeprefix("^")
            if body.endswith(".*$"):
                body = body[:-3]
            elif body.endswith("$"):
                return None  # anchored at the end: matches whole names only
            body = body.removesuffix(".*")
            literal = _literal_regex_prefix(body)
            if re.escape(literal) == body or literal == body:
                return literal
        return None

    def covers(self, later: PatternRule) -> bool:
        """True if this rule matches every name ``later`` can match (so ``later`` never wins).

        Decided on ``later``'s name when it is exact, else on its literal prefix; False when
        it cannot be shown.
        """
        if later.kind == "exact":
            return self.matches(later.pattern)
        prefix = self.universal_prefix
        return prefix is not None and later.literal_prefix.startswith(prefix)


@dataclass(frozen=True, slots=True)
class FunctionRule:
    """A router function, or the dotted path of one, imported on first use."""

    label: str
    target: Callable[..., Any] | str


Rule = PatternRule | FunctionRule


def _describe_pattern(key: str | re.Pattern[str]) -> str:
    if isinstance(key, re.Pattern):
        return f"/{key.pattern}/"
    return repr(key)


def _pattern_rule(label: str, key: Any, value: Any) -> PatternRule:
    route = FrozenMapping(route_options(value, label))
    if isinstance(key, re.Pattern):
        if not isinstance(key.pattern, str):
            raise RoutingError(f"{label}: a regex pattern must be a str pattern, got {key!r}")
        return PatternRule(label, "regex", key.pattern, route, key)
    if not isinstance(key, str):
        raise RoutingError(
            f"{label}: a pattern must be a task name, a glob or re.compile(...), got {key!r}"
        )
    if any(ch in key for ch in _GLOB_CHARS):
        return PatternRule(label, "glob", key, route, re.compile(fnmatch.translate(key)))
    return PatternRule(label, "exact", key, route)


def _dict_rules(where: str, mapping: Mapping[Any, Any]) -> list[Rule]:
    exact: list[Rule] = []
    patterns: list[Rule] = []
    for key, value in mapping.items():
        rule = _pattern_rule(f"{where}[{_describe_pattern(key)}]", key, value)
        (exact if rule.kind == "exact" else patterns).append(rule)
    return exact + patterns


def _items_rules(where: str, items: Sequence[Any]) -> list[Rule]:
    rules: list[Rule] = []
    for j, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise RoutingError(
                f"{where}[{j}]: an items list holds (pattern, route) pairs, got {item!r}"
            )
        key, value = item
        label = f"{where}[{j}] {_describe_pattern(key)}"
        rules.append(_pattern_rule(label, key, value))
    return rules


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], (str, re.Pattern))
        and isinstance(value[1], (Mapping, str))
    )


def _function_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}()" if module else f"{qualname}()"


def _router_rules(where: str, router: Any) -> list[Rule]:
    if isinstance(router, Mapping):
        return _dict_rules(where, router)
    if isinstance(router, (list, tuple)):
        return _items_rules(where, router)
    if isinstance(router, str):
        return [FunctionRule(f"{where} {router!r}", router)]
    if callable(router):
        return [FunctionRule(f"{where} {_function_name(router)}", router)]
    raise RoutingError(
        f"{where}: a router must be a dict, an items list, a function or a dotted path to "
        f"one, got {router!r}"
    )


def parse_task_routes(task_routes: Any) -> tuple[Rule, ...]:
    """The rules of a ``task_routes`` setting, in the order they are tried.

    Raises RoutingError for a value that is none of the documented forms, for an unknown route
    key, and for an items list that is not wrapped in a tuple (the routing guide's pitfall).
    """
    if task_routes is None:
        return ()
    if isinstance(task_routes, (list, tuple)):
        rules: list[Rule] = []
        for i, router in enumerate(task_routes):
            if _is_pair(router):
                raise RoutingError(
                    f"task_routes[{i}] is a single (pattern, route) pair; an ordered items list "
                    "goes inside a tuple: task_routes = ([('feed.tasks.*', {'queue': 'feeds'}), "
                    "...],)"
                )
            rules.extend(_router_rules(f"task_routes[{i}]", router))
        return tuple(rules)
    return tuple(_router_rules("task_routes", task_routes))


def import_router(path: str) -> Callable[..., Any]:
    """Import the router function named by ``path`` (``pkg.module.func`` or ``pkg.module:func``).

    Raises RoutingError if the module cannot be imported or has no such callable.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise RoutingError(f"router {path!r} must be a dotted path like 'myapp.routers.route_task'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RoutingError(f"router {path!r}: cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise RoutingError(f"router {path!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise RoutingError(f"router {path!r} is not callable: {target!r}")
    return target  # type: ignore[no-any-return]
