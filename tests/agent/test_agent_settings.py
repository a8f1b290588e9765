"""Where each agent setting comes from: flag, then environment, then file, then default."""

import argparse

import pytest

from agent import agent_settings
from collectors.errors import InputError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    agent_settings.add_flags(parser)
    return parser.parse_args(list(argv))


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("agent:\n  interval: 5s\n  listen: 127.0.0.1:1\n  ledger_dir: /from/file\n  aws: true\n")
    env = {"GPULEDGER_INTERVAL": "3s", "GPULEDGER_LISTEN": "127.0.0.1:2", "NODE_NAME": "node-a"}
    got = agent_settings.resolve(_args("--interval", "2s"), env, str(config))
    assert got.interval == 2.0  # flag
    assert got.listen == ("127.0.0.1", 2)  # environment
    assert got.ledger_dir == "/from/file" and got.aws is True  # file
    assert got.price_refresh == 3600.0 and got.report_schedule == "0 6 * * 1"  # defaults
    assert got.node == "node-a"  # downward API's NODE_NAME when --node is not given
    assert agent_settings.resolve(_args("--node", "b"), env).node == "b"


def test_booleans_and_choices_from_the_environment():
    got = agent_settings.resolve(_args(), {"GPULEDGER_GCP": "yes", "GPULEDGER_PROCESSES": "OFF"})
    assert got.gcp is True and got.processes == "off"
    with pytest.raises(InputError, match="GPULEDGER_KUBERNETES.*expected one of auto, on, off"):
        agent_settings.resolve(_args(), {"GPULEDGER_KUBERNETES": "maybe"})


def test_a_config_without_an_agent_section_is_fine_and_teams_still_load(tmp_path):
    from agent.config import load_config

    config = tmp_path / "c.yaml"
    config.write_text("team_labels: [squad]\nagent:\n  speed: 2\n")
    assert load_config(config).team_labels == ("squad",)
    assert agent_settings.resolve(_args(), {}, str(config)).speed == 2.0


def test_gpuledger_config_checks_the_agent_section_too(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text("team_labels: [team]\nagent:\n  interval: 1s\n  speed: fast\n")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "config", str(config)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"gpuledger: error: {config}:4: field 'agent.speed': "
                                   "expected a number such as 1, 60 or 3600, got 'fast'")
    config.write_text("team_labels: [team]\nagent:\n  interval: 1s\n  speed: 60\n")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "config", str(config)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"{config}: ok"
