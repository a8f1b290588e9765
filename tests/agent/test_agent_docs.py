"""docs/agent.md's settings table is the one the declarations make."""

from pathlib import Path

from agent.agent_settings import ENV_PREFIX, SETTINGS, settings_markdown
from recommenders.settingfields import about, env_name, flag_name

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent.md"


def test_settings_table_is_generated_from_the_declarations():
    assert settings_markdown() in DOC.read_text()


def test_every_setting_has_flag_env_and_help():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for s in SETTINGS:
        assert about(s).help.endswith(".") and flag_name(s).startswith("--")
        assert env_name(s, ENV_PREFIX).startswith("GPULEDGER_")
