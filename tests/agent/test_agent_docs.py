"""docs/agent.md's settings table is the one the declarations make."""

from pathlib import Path

from agent.agent_settings import SETTINGS, settings_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent.md"


def test_settings_table_is_generated_from_the_declarations():
    assert settings_markdown() in DOC.read_text()


def test_every_setting_has_flag_env_and_help():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for s in SETTINGS:
        assert s.help.endswith(".") and s.flag.startswith("--") and s.env.startswith("GPULEDGER_")
