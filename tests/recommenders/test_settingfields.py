"""The one settings mechanism (recommenders/settingfields.py): a frozen dataclass's fields
declare default, help, unit, bounds and parser; flags, environment variables, config keys,
bounds checks and the docs table all come from them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from collectors.errors import InputError
from collectors.yamlfile import LocatedYaml
from recommenders.settingfields import (Layer, add_flags, env_values, flag_name, flag_values, markdown_table,
                                        resolve, setting, yaml_values)

ROOT = Path(__file__).resolve().parents[2]


def _minutes(value) -> float:
    text = str(value)
    if not text.endswith("min") or not text[:-3].isdigit():
        raise ValueError(f"expected minutes such as 5min, got {value!r}")
    return float(text[:-3])


@dataclasses.dataclass(frozen=True)
class Toy:
    count: int = setting(3, "How many.", unit="rows", min=1, max=10)
    ratio: float = setting(0.5, "A share.", unit="fraction", min=0.0, max=1.0)
    verbose: bool = setting(False, "Talk more.")
    mode: str = setting("auto", "How.", choices=("auto", "on", "off"))
    wait: float = setting(5.0, "How long.", parse=_minutes, metavar="MINUTES", shown_default="`5min`")
    name: str | None = setting(None, "Who.")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="toy")
    add_flags(parser, Toy, "TOY_")
    return parser.parse_args(list(argv))


def _resolve(argv=(), environ=None, yaml_text=None, tmp_path=None) -> Toy:
    layers = [Layer(flag_values(Toy, _parse(*argv)), lambda f, err: InputError(err, field=flag_name(f))),
              Layer(env_values(Toy, environ or {}, "TOY_"),
                    lambda f, err: InputError(err, field="TOY_" + f.name.upper()))]
    if yaml_text is not None:
        path = tmp_path / "toy.yaml"
        path.write_text(yaml_text)
        doc = LocatedYaml(path)
        layers.append(Layer(yaml_values(Toy, doc, ("toy",), "toy setting"),
                            lambda f, err: doc.error(("toy", f.name), err)))
    return resolve(Toy, layers)


def test_defaults_when_nothing_is_given():
    assert _resolve() == Toy(count=3, ratio=0.5, verbose=False, mode="auto", wait=5.0, name=None)


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    got = _resolve(["--count", "7"], {"TOY_COUNT": "5", "TOY_RATIO": "0.25"},
                   "toy:\n  count: 2\n  ratio: 0.75\n  mode: off\n  wait: 9min\n", tmp_path)
    assert got.count == 7  # flag over environment and file
    assert got.ratio == 0.25  # environment over file
    assert got.mode == "off"  # file (YAML reads `off` as false)
    assert got.wait == 9.0  # file, through the field's parser
    assert got.verbose is False and got.name is None  # defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.count = 1  # type: ignore[misc]


def test_a_bool_field_is_a_switch_and_reads_words_from_the_environment():
    assert _resolve(["--verbose"]).verbose is True
    assert _resolve([], {"TOY_VERBOSE": "yes"}).verbose is True
    assert _resolve([], {"TOY_VERBOSE": "0"}).verbose is False
    with pytest.raises(SystemExit):
        _parse("--verbose", "true")  # a switch takes no value


def test_bounds_name_the_flag_the_variable_or_the_file_and_line(tmp_path, capsys):
    with pytest.raises(InputError) as err:
        _resolve(["--count", "11"])
    assert str(err.value) == "field '--count': expected a value of at most 10, got 11"
    with pytest.raises(InputError) as err:
        _resolve([], {"TOY_RATIO": "-0.5"})
    assert str(err.value) == "field 'TOY_RATIO': expected a value of at least 0, got -0.5"
    with pytest.raises(InputError) as err:
        _resolve([], {}, "toy:\n  count: 2\n  ratio: 1.5\n", tmp_path)
    assert str(err.value) == f"{tmp_path / 'toy.yaml'}:3: field 'toy.ratio': expected a value of at most 1, got 1.5"
    with pytest.raises(InputError) as err:
        _resolve([], {}, "toy:\n  wait: soon\n", tmp_path)
    assert str(err.value) == f"{tmp_path / 'toy.yaml'}:2: field 'toy.wait': expected minutes such as 5min, got 'soon'"
    with pytest.raises(InputError) as err:
        _resolve([], {"TOY_MODE": "maybe"})
    assert str(err.value) == "field 'TOY_MODE': expected one of auto, on, off, got 'maybe'"
    with pytest.raises(SystemExit):
        _parse("--count", "many")  # a number's flag is typed: argparse's usage error
    assert "argument --count: invalid int value: 'many'" in capsys.readouterr().err


def test_unknown_and_misshapen_file_sections_name_the_line(tmp_path):
    with pytest.raises(InputError) as err:
        _resolve([], {}, "other: 1\ntoy:\n  count: 2\n  cuont: 3\n", tmp_path)
    assert str(err.value) == (f"{tmp_path / 'toy.yaml'}:4: field 'toy.cuont': unknown toy setting; "
                              "expected one of count, mode, name, ratio, verbose, wait")
    with pytest.raises(InputError) as err:
        _resolve([], {}, "toy: [1, 2]\n", tmp_path)
    assert str(err.value) == f"{tmp_path / 'toy.yaml'}:1: field 'toy': expected a mapping of toy settings"
    assert _resolve([], {}, "other: 1\n", tmp_path) == Toy()  # no section: nothing from the file


def test_help_names_the_default_and_the_variable():
    parser = argparse.ArgumentParser(prog="toy")
    add_flags(parser, Toy, "TOY_")
    helps = {a.dest: a.help for a in parser._actions if a.dest != "help"}
    assert helps == {
        "count": "How many (default 3). Env TOY_COUNT.",
        "ratio": "A share (default 0.5). Env TOY_RATIO.",
        "verbose": "Talk more. Env TOY_VERBOSE.",
        "mode": "How (default auto). Env TOY_MODE.",
        "wait": "How long (default 5min). Env TOY_WAIT.",
        "name": "Who. Env TOY_NAME.",
    }
    metavars = {a.dest: a.metavar for a in parser._actions if a.dest != "help"}
    assert metavars == {"count": "ROWS", "ratio": "FRACTION", "verbose": None, "mode": None, "wait": "MINUTES",
                        "name": "N"}


def test_docs_table_lists_every_field():
    assert markdown_table(Toy, ("flag", "environment", "setting", "default", "unit", "range", "what it does"),
                          "TOY_", headers={"setting": "key"}) == (
        "| flag | environment | key | default | unit | range | what it does |\n"
        "|---|---|---|---|---|---|---|\n"
        "| `--count` | `TOY_COUNT` | `count` | `3` | rows | 1 – 10 | How many. |\n"
        "| `--ratio` | `TOY_RATIO` | `ratio` | `0.5` | fraction | 0 – 1 | A share. |\n"
        "| `--verbose` | `TOY_VERBOSE` | `verbose` | `False` |  |  | Talk more. |\n"
        "| `--mode` | `TOY_MODE` | `mode` | `auto` |  |  | How. |\n"
        "| `--wait` | `TOY_WAIT` | `wait` | `5min` |  |  | How long. |\n"
        "| `--name` | `TOY_NAME` | `name` | — |  |  | Who. |\n")


def test_the_agent_resolves_one_field_from_flag_environment_and_file(tmp_path):
    from agent import agent_settings

    parser = argparse.ArgumentParser()
    agent_settings.add_flags(parser)
    config = tmp_path / "c.yaml"
    config.write_text("agent:\n  speed: 4\n  serving_timeout: 3s\n  azure: yes\n")
    env = {"GPULEDGER_SPEED": "2", "GPULEDGER_SERVING_TIMEOUT": "500ms", "NODE_NAME": "n"}
    got = agent_settings.resolve(parser.parse_args(["--speed", "3"]), env, str(config))
    assert (got.speed, got.serving_timeout, got.azure, got.gcp) == (3.0, 0.5, True, False)
    got = agent_settings.resolve(parser.parse_args([]), env, str(config))
    assert (got.speed, got.serving_timeout) == (2.0, 0.5)
    got = agent_settings.resolve(parser.parse_args([]), {"NODE_NAME": "n"}, str(config))
    assert (got.speed, got.serving_timeout, got.interval, got.listen) == (4.0, 3.0, 1.0, ("0.0.0.0", 9400))
    config.write_text("agent:\n  speed: 4\n  serving_timeout: 50ms\n")
    with pytest.raises(InputError) as err:
        agent_settings.resolve(parser.parse_args([]), {"NODE_NAME": "n"}, str(config))
    assert str(err.value) == f"{config}:3: field 'agent.serving_timeout': expected at least 0.1 s, got '50ms'"


def test_every_report_setting_names_the_strategies_that_read_it():
    from recommenders.rightsizing import STRATEGIES
    from recommenders.settingfields import about, declared
    from recommenders.settings import Settings

    for f in declared(Settings):
        readers = about(f).read_by
        assert readers, f.name
        for name in readers:
            assert " " in name or name in STRATEGIES, (f.name, name)  # a strategy, or words
    assert {r for f in declared(Settings) for r in about(f).read_by if " " not in r} == set(STRATEGIES)


@pytest.mark.parametrize("doc, cls", [("agent.md", "agent.agent_settings:AgentSettings"),
                                      ("configuration.md", "agent.config:Config"),
                                      ("recommendations.md", "recommenders.settings:Settings")])
def test_each_docs_table_has_a_row_per_declared_field(doc, cls):
    import importlib

    from recommenders.settingfields import declared

    module, name = cls.split(":")
    text = (ROOT / "docs" / doc).read_text()
    for f in declared(getattr(importlib.import_module(module), name)):
        assert f"| `{f.name}` |" in text or f"| `--{f.name.replace('_', '-')}` |" in text, f.name
