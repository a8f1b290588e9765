"""Label and field selectors as the API server reads them, for the fake server."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

_SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def label_matcher(selector: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over labels for ``k=v``, ``k==v``, ``k!=v``, ``k in (..)``, ``k notin (..)``, ``k``, ``!k``."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split(selector):
        match = _SET.match(term)
        if match:
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            tests.append(lambda labels, k=term[1:].strip(): k not in labels)
        else:
            tests.append(lambda labels, k=term: k in labels)
    return lambda labels: all(t(labels) for t in tests)


def _field(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def field_matcher(selector: str) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over objects for ``path=value``, ``path==value`` and ``path!=value``."""
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split(selector):
        if "!=" in term:
            path, value = term.split("!=", 1)
            tests.append(lambda obj, p=path.strip(), v=value.strip(): _field(obj, p) != v)
        else:
            path, value = term.replace("==", "=").split("=", 1)
            tests.append(lambda obj, p=path.strip(), v=value.strip(): _field(obj, p) == v)
    return lambda obj: all(t(obj) for t in tests)
