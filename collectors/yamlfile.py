"""YAML files that remember where each value was, so errors can name the line.

Rate cards and config files are hand-written; a mistake in one should be reported
as ``rates.yaml:12: field 'nodes[1].hourly': expected a number above 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from collectors.errors import InputError

Key = tuple[Any, ...]


class LocatedYaml:
    """Plain data from a YAML file plus the line of every mapping key and item."""

    def __init__(self, path: str | Path) -> None:
        self.file = str(path)
        self.lines: dict[Key, int] = {}
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise InputError(f"cannot read: {err.strerror}", file=self.file) from None
        except UnicodeDecodeError:
            raise InputError("is not UTF-8 text", file=self.file) from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = mark.line + 1 if mark else None
            problem = getattr(err, "problem", None)
            if isinstance(err, yaml.reader.ReaderError):  # its text quotes a position on a second line
                line = text.count("\n", 0, err.position) + 1
                problem = f"unacceptable character #x{err.character:04x}: {err.reason}"
            problem = " ".join(str(problem or err).split())  # one line, whatever the parser said
            raise InputError(f"not valid YAML ({problem})", file=self.file, line=line) from None
        self.data = self._convert(node, ()) if node is not None else None

    def _convert(self, node: yaml.Node, key: Key) -> Any:
        self.lines.setdefault(key, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for k_node, v_node in node.value:
                k = _scalar(k_node)
                self.lines[key + (k,)] = k_node.start_mark.line + 1
                out[k] = self._convert(v_node, key + (k,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(v, key + (i,)) for i, v in enumerate(node.value)]
        return _scalar(node)

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


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise InputError("mapping keys must be plain values", line=node.start_mark.line + 1)
    loader = yaml.SafeLoader("")
    return loader.construct_object(node, deep=True)


def field_name(key: Key) -> str:
    """``('nodes', 1, 'hourly')`` -> ``nodes[1].hourly``."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
