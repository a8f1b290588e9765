"""Settings declared once, on the fields of a frozen dataclass: flags, environment, files, docs.

A settings class is a frozen dataclass whose fields are made by :func:`setting`: the
default, the help text, the unit, the bounds, and for values a user writes as text (a
duration, HOST:PORT, a choice) the parser that reads them. From the class alone this
module makes the ``argparse`` flags (``--ledger-dir`` for ``ledger_dir``; a ``bool`` field
is a switch), reads environment variables (``PREFIX`` + ``LEDGER_DIR``) and a section of
a YAML file (its keys are the field names), checks every value against its bounds and
renders the Markdown table the docs carry; so a setting cannot be documented in one place
and read in another.

Values come in layers (:func:`resolve`): the first layer that gives a value wins, and a
bad value is reported by the layer it came from: the flag, the variable, or the file,
line and key (each caller says how, so this module needs nothing from ``collectors``).

It lives in ``recommenders`` for the same reason as :mod:`recommenders.ledger_schema`:
the dependency rule lets both sides import it there (``agent`` may use ``recommenders``;
``recommenders`` may use neither of the others), and it imports only the standard library,
so the live agent and the CLI stay light.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

_KEY = "setting"


@dataclass(frozen=True)
class About:
    """What a field declares besides its default (kept in the field's metadata)."""

    help: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    parse: Callable[[Any], Any] | None = None  # text (or a YAML value) -> value; ValueError says what was expected
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    shown_default: str | None = None  # the default as docs and --help say it, when not str(default)
    read_by: tuple[str, ...] = ()  # what reads it (a strategy's name, or words), for the docs


def setting(default: Any, help: str, *, unit: str = "", min: float | None = None, max: float | None = None,
            parse: Callable[[Any], Any] | None = None, metavar: str | None = None,
            choices: Iterable[str] | None = None, shown_default: str | None = None,
            read_by: Iterable[str] = ()) -> Any:
    """A dataclass field declaring one setting. ``min``/``max`` are inclusive bounds of a
    number; ``parse`` reads a value given as text (the default parser follows the type of
    ``default``: bool, int, float or str; with ``choices``, one of them)."""
    about = About(help, unit, min, max, parse, metavar, tuple(choices) if choices else None, shown_default,
                  tuple(read_by))
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={_KEY: about})
    return field(default=default, metadata={_KEY: about})


def declared(cls: type) -> tuple[Field, ...]:
    """The settings of a class, in declaration order."""
    return tuple(f for f in fields(cls) if _KEY in f.metadata)


def about(f: Field) -> About:
    return f.metadata[_KEY]


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def flag_name(f: Field) -> str:
    return "--" + f.name.replace("_", "-")


def env_name(f: Field, prefix: str) -> str:
    return prefix + f.name.upper()


def is_switch(f: Field) -> bool:
    """A bool setting: its flag takes no value (``--dry-run``)."""
    return isinstance(default_of(f), bool)


# ---------------------------------------------------------------- values


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_choice(*options: str) -> Callable[[Any], str]:
    """One of ``options``, any case; YAML's on/off (read as booleans) count as 'on'/'off'."""
    def parse(value: Any) -> str:
        text = str(value).strip().lower() if not isinstance(value, bool) else ("on" if value else "off")
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text
    return parse


def _parse_number(kind: type) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"expected {'a whole number' if kind is int else 'a number'}, got {value!r}") from None
    return parse


def _parser(f: Field) -> Callable[[Any], Any]:
    declared_parse = about(f).parse
    if declared_parse is not None:
        return declared_parse
    if about(f).choices:
        return parse_choice(*about(f).choices)
    default = default_of(f)
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, (int, float)):
        return _parse_number(type(default))
    return str


def problem(f: Field, value: Any) -> str | None:
    """What is wrong with a parsed value for its bounds (None when it is fine)."""
    lo, hi = about(f).min, about(f).max
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    if lo is not None and value < lo:
        return f"expected a value of at least {lo:g}, got {value:g}"
    if hi is not None and value > hi:
        return f"expected a value of at most {hi:g}, got {value:g}"
    return None


def value_of(f: Field, raw: Any) -> Any:
    """``raw`` (text, a YAML value, or an already converted flag value) read by the field's
    parser and checked against its bounds; ValueError saying what was expected."""
    value = _parser(f)(raw)
    wrong = problem(f, value)
    if wrong:
        raise ValueError(wrong)
    return value


# ---------------------------------------------------------------- sources


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, env_prefix: str | None = None) -> None:
    """One flag per setting, each defaulting to None ('not given'). A switch stores the text
    'true'; a field with a parser takes text; others take their default's type, so a
    mistyped number is argparse's usage error. ``env_prefix`` names the variable in the help."""
    for f in declared(cls):
        a = about(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": flag_help(f, env_prefix)}
        if is_switch(f):
            kwargs.update(action="store_const", const="true")
        else:
            kwargs.update(metavar=a.metavar or (None if a.choices else metavar_of(a.unit)), choices=a.choices)
            if a.parse is None:
                kwargs["type"] = type(default_of(f))
        parser.add_argument(flag_name(f), **kwargs)


def metavar_of(unit: str) -> str:
    """A flag's metavar from a setting's unit: 'GPU-HOURS', 'DAYS'; 'FACTOR' for '×', 'N' for none."""
    if unit == "×":
        return "FACTOR"
    text = unit.upper().replace(" ", "_")
    return text if text and all(c.isascii() and (c.isalnum() or c in "_-") for c in text) else "N"


def flag_help(f: Field, env_prefix: str | None = None) -> str:
    """``--help`` text of a setting: its help, its default (not for switches or a None
    default), its variable."""
    a = about(f)
    text = a.help.rstrip(".").replace("%", "%%")
    default = (a.shown_default or "").replace("`", "") or (
        None if default_of(f) is None or is_switch(f) else str(default_of(f)))
    if default:
        text += f" (default {default})"
    return text + (f". Env {env_name(f, env_prefix)}." if env_prefix else "")


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags."""
    return {f.name: getattr(args, f.name) for f in declared(cls) if getattr(args, f.name, None) is not None}


def env_values(cls: type, environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """The settings given as environment variables ``prefix + NAME``."""
    return {f.name: environ[env_name(f, prefix)] for f in declared(cls) if env_name(f, prefix) in environ}


def yaml_values(cls: type, doc: Any, key: tuple = (), what: str = "setting") -> dict[str, Any]:
    """The settings in the mapping at ``key`` of a YAML document (a
    :class:`collectors.yamlfile.LocatedYaml`, whose ``error(key, message)`` names the file
    and line); a missing or null section is empty, an unknown key an error."""
    data = doc.data
    for k in key:
        data = data.get(k) if isinstance(data, dict) else None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise doc.error(key, f"expected a mapping of {what}s")
    known = {f.name for f in declared(cls)}
    for name in data:
        if name not in known:
            raise doc.error(key + (name,), f"unknown {what}; expected one of {', '.join(sorted(known))}")
    return {name: value for name, value in data.items() if value is not None}


@dataclass(frozen=True)
class Layer:
    """Values from one place, and how a bad one is reported: ``error(field, message)``
    returns the exception to raise."""

    values: Mapping[str, Any]
    error: Callable[[Field, str], Exception]


def resolve(cls: type, layers: Sequence[Layer]) -> Any:
    """An instance of ``cls``: each setting from the first layer that gives it, else its
    default."""
    values: dict[str, Any] = {}
    for f in declared(cls):
        for layer in layers:
            if f.name in layer.values:
                try:
                    values[f.name] = value_of(f, layer.values[f.name])
                except ValueError as err:
                    raise layer.error(f, str(err)) from None
                break
    return cls(**values)


def check_values(cls: type, layer: Layer) -> None:
    """Check the values of one layer alone (a config file before it is used)."""
    for f in declared(cls):
        if f.name in layer.values:
            try:
                value_of(f, layer.values[f.name])
            except ValueError as err:
                raise layer.error(f, str(err)) from None


def with_values(instance: Any, **values: Any) -> Any:
    """A copy with the given settings changed (None values are ignored)."""
    return replace(instance, **{k: v for k, v in values.items() if v is not None})


# ---------------------------------------------------------------- docs


def shown(f: Field) -> str:
    """The default as a docs table cell."""
    a = about(f)
    return a.shown_default or ("—" if default_of(f) is None else f"`{default_of(f)}`")


def bounds(f: Field) -> str:
    lo, hi = about(f).min, about(f).max
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f"≥ {lo:g}"
    if lo is None:
        return f"≤ {hi:g}"
    return f"{lo:g} – {hi:g}"


COLUMNS: dict[str, Callable[[Field, str], str]] = {
    "setting": lambda f, prefix: f"`{f.name}`",
    "flag": lambda f, prefix: f"`{flag_name(f)}`",
    "environment": lambda f, prefix: f"`{env_name(f, prefix)}`",
    "read by": lambda f, prefix: ", ".join(r if " " in r else f"`{r}`" for r in about(f).read_by),
    "default": lambda f, prefix: shown(f),
    "unit": lambda f, prefix: about(f).unit,
    "range": lambda f, prefix: bounds(f),
    "what it does": lambda f, prefix: about(f).help,
}


def markdown_table(cls: type, columns: Sequence[str], env_prefix: str = "",
                   headers: Mapping[str, str] | None = None,
                   cells: Mapping[str, Callable[[Field], str]] | None = None) -> str:
    """A Markdown table with a row per setting; ``columns`` among :data:`COLUMNS` (or
    given in ``cells``), ``headers`` renaming some."""
    headers, cells = headers or {}, cells or {}
    rows = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for f in declared(cls):
        row = [cells[c](f) if c in cells else COLUMNS[c](f, env_prefix) for c in columns]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows) + "\n"
