"""YAML files that remember where each value was, so errors can name the line.

Rate cards and config files are hand-written; a mistake in one should be reported
as ``rates.yaml:12: field 'nodes[1].hourly': expected a number above 0``.

They are also input from anyone, so a document is refused, with one line, past the
sizes declared here: :data:`MAX_BYTES` of text, :data:`MAX_DEPTH` levels of nesting and
:data:`MAX_VALUES` values with every alias expanded (a "billion laughs" document of a
few hundred bytes would expand to gigabytes). Each alias is converted once and shared,
recursive aliases are refused, and merge keys (``<<: *defaults``) work as YAML 1.1
says. Values are plain data: strings, numbers, booleans, null, dates, lists, mappings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from collectors.errors import InputError

Key = tuple[Any, ...]

MAX_BYTES = 4 << 20  # 4 MiB: the bundled price snapshot is under 50 kB
MAX_DEPTH = 64  # levels of lists and mappings
MAX_VALUES = 1_000_000  # values, aliases expanded

_MERGE = "tag:yaml.org,2002:merge"


class LocatedYaml:
    """Plain data from a YAML file plus the line of every mapping key and item."""

    def __init__(self, path: str | Path, bundled: bool = False) -> None:
        """``bundled``: a file shipped with gpuledger (the price snapshot, the carbon table),
        composed by libyaml's C parser, which gives the same nodes and lines ten times
        faster; users' files keep the pure-Python parser, whose errors the docs quote."""
        self.file = str(path)
        self._loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if bundled else yaml.SafeLoader
        self.lines: dict[Key, int] = {}
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as err:
            raise InputError(f"cannot read: {err.strerror}", file=self.file) from None
        if len(raw) > MAX_BYTES:
            raise InputError(f"is larger than {MAX_BYTES >> 20} MiB, the most a rate card or config may be",
                             file=self.file)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("is not UTF-8 text", file=self.file) from None
        node = self._compose(text)
        self._constructor = yaml.SafeLoader("")
        self._done: dict[int, Any] = {}
        self.data = self._convert(node, ()) if node is not None else None

    def _compose(self, text: str) -> yaml.Node | None:
        try:
            self._check_depth(text)
            node = yaml.compose(text, Loader=self._loader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            problem = getattr(err, "problem", None)
            if problem is None and isinstance(err, yaml.reader.ReaderError):
                problem = f"unacceptable character #x{err.character:04x}" if isinstance(err.character, int) \
                    else str(err.reason)
                line = text.count("\n", 0, err.position) + 1 if isinstance(err.position, int) else None
            else:
                line = mark.line + 1 if mark else None
            problem = " ".join(str(problem or err).split())  # one line
            raise InputError(f"not valid YAML ({problem})", file=self.file, line=line) from None
        if node is not None:
            self._count(node)
        return node

    def _check_depth(self, text: str) -> None:
        """Refuse nesting past MAX_DEPTH from the event stream, before anything recursive
        (PyYAML's composer) sees it."""
        depth = 0
        for event in yaml.parse(text, Loader=self._loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise InputError(f"nested more than {MAX_DEPTH} levels deep", file=self.file,
                                     line=event.start_mark.line + 1)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1

    def _count(self, root: yaml.Node) -> None:
        """Refuse recursive aliases, and documents of more than MAX_VALUES values once every
        alias is expanded (counted without expanding: each node once, by its children's counts)."""
        sizes: dict[int, int] = {}
        open_: set[int] = set()
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            key = id(node)
            if children_done:
                open_.discard(key)
                sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
                if sizes[key] > MAX_VALUES:
                    raise InputError(f"expands to more than {MAX_VALUES:,} values (aliases of aliases?)",
                                     file=self.file, line=node.start_mark.line + 1)
                continue
            if key in sizes:
                continue
            if key in open_:
                raise InputError("an alias refers to a list or mapping that contains it (a recursive alias)",
                                 file=self.file, line=node.start_mark.line + 1)
            open_.add(key)
            stack.append((node, True))
            for child in _children(node):
                if id(child) in open_:
                    raise InputError("an alias refers to a list or mapping that contains it (a recursive alias)",
                                     file=self.file, line=child.start_mark.line + 1)
                if id(child) not in sizes:
                    stack.append((child, False))

    def _convert(self, node: yaml.Node, key: Key) -> Any:
        self.lines.setdefault(key, node.start_mark.line + 1)
        done = self._done.get(id(node))
        if done is not None:  # an alias: converted once, shared
            self._note_lines(node, key)
            return done
        if isinstance(node, yaml.MappingNode):
            self._flatten(node)
            out: dict[Any, Any] = {}
            self._done[id(node)] = out
            for k_node, v_node in node.value:
                k = self._scalar(k_node)
                self.lines[key + (k,)] = k_node.start_mark.line + 1
                out[k] = self._convert(v_node, key + (k,))
            return out
        if isinstance(node, yaml.SequenceNode):
            items: list[Any] = []
            self._done[id(node)] = items
            items.extend(self._convert(v, key + (i,)) for i, v in enumerate(node.value))
            return items
        return self._scalar(node)

    def _note_lines(self, node: yaml.Node, key: Key) -> None:
        """Lines of the first level under an alias, so errors inside it can name a line."""
        if isinstance(node, yaml.MappingNode):
            for k_node, _ in node.value:
                if isinstance(k_node, yaml.ScalarNode):
                    self.lines.setdefault(key + (self._scalar(k_node),), k_node.start_mark.line + 1)

    def _flatten(self, node: yaml.MappingNode) -> None:
        """Merge keys (``<<: *anchor`` or ``<<: [*a, *b]``) into the mapping, as YAML 1.1 says."""
        if not any(k.tag == _MERGE for k, _ in node.value):
            return
        try:
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None) or node.start_mark
            raise InputError(f"cannot merge: {getattr(err, 'problem', None) or err}", file=self.file,
                             line=mark.line + 1) from None

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise InputError("mapping keys must be plain values", file=self.file, line=node.start_mark.line + 1)
        try:
            value = self._constructor.construct_object(node, deep=True)
            if isinstance(value, str) and not value.isascii():
                value.encode("utf-8")  # a lone surrogate ("\ud800") is not text
            return value
        except UnicodeEncodeError:
            raise InputError("expected Unicode text, got a lone surrogate escape", file=self.file,
                             line=node.start_mark.line + 1) from None
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as err:
            why = getattr(err, "problem", None) if isinstance(err, yaml.YAMLError) else None
            raise InputError(f"cannot read {node.value[:40]!r} as a value of tag {node.tag.rsplit(':', 1)[-1]!r}"
                             + (f" ({why})" if why else ""), file=self.file, line=node.start_mark.line + 1) from None

    def line(self, key: Key) -> int | None:
        """The line of ``key`` or of its nearest ancestor that has one."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get(())

    def error(self, key: Key, message: str) -> InputError:
        """An InputError about the value at ``key``."""
        return InputError(message, file=self.file, line=self.line(key), field=field_name(key) or None)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def field_name(key: Key) -> str:
    """``('nodes', 1, 'hourly')`` -> ``nodes[1].hourly``."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
