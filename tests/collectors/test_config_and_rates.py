"""Config and rate-card files: good ones load, every mistake names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, load_config, settings_markdown
from collectors.errors import InputError
from collectors.pricing.ratecard import GpuPrice, gpu_price, load_rate_card, load_snapshot

ROOT = Path(__file__).resolve().parents[2]
GOOD = """currency: USD
gpu_share: 0.8
nodes:
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge, karpenter.sh/capacity-type: spot}
    hourly: 9.83
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge}
    hourly: 21.96
gpus:
  "NVIDIA H100 80GB HBM3": 2.50
default_gpu_hourly: 2.00
"""


def test_rate_card_matching_order_share_model_and_default(rates):
    card = load_rate_card(rates(GOOD))
    spot = {"node.kubernetes.io/instance-type": "p4d.24xlarge", "karpenter.sh/capacity-type": "spot"}
    od = {"node.kubernetes.io/instance-type": "p4d.24xlarge", "karpenter.sh/capacity-type": "on-demand"}
    assert gpu_price(card, spot, "any", 8) == GpuPrice(pytest.approx(9.83 * 0.8 / 8), "rate-card")
    assert gpu_price(card, od, "any", 8).hourly == pytest.approx(21.96 * 0.8 / 8)
    assert gpu_price(card, {}, "NVIDIA H100 80GB HBM3", 8) == GpuPrice(2.5, "rate-card")
    assert gpu_price(card, {}, "Tesla T4", 1) == GpuPrice(2.0, "default")
    assert gpu_price(card, od, "x", 8).per_second == pytest.approx(21.96 * 0.8 / 8 / 3600)


@pytest.mark.parametrize("text, line, field, words", [
    (GOOD.replace("currency: USD", "currency: dollars"), 1, "currency", "ISO 4217"),
    (GOOD.replace("gpu_share: 0.8", "gpu_share: 1.5"), 2, "gpu_share", "at most 1"),
    (GOOD.replace("gpu_share: 0.8", "gpu_share: 0"), 2, "gpu_share", "above 0"),
    (GOOD.replace("hourly: 9.83", "hourly: cheap"), 5, "nodes[0].hourly", "a number"),
    (GOOD.replace("hourly: 21.96", "hourly: -1"), 7, "nodes[1].hourly", "at least 0"),
    (GOOD.replace("hourly: 21.96", "hourly: 21.96\n    price: 3"), 8, "nodes[1].price", "unknown field"),
    (GOOD.replace("2.50", "[1]"), 9, "gpus.NVIDIA H100 80GB HBM3", "a number"),
    (GOOD.replace("default_gpu_hourly: 2.00", ""), None, None, "default_gpu_hourly' is required"),
    (GOOD + "extra: 1\n", 11, "extra", "unknown field"),
    ("currency: USD\nnodes: [unclosed\n", 3, None, "not valid YAML"),
    ("- a\n- b\n", 1, None, "expected a mapping"),
])
def test_rate_card_errors(rates, text, line, field, words):
    with pytest.raises(InputError) as info:
        load_rate_card(rates(text))
    err = info.value
    assert err.file.endswith("rates.yaml")
    if line is not None:
        assert err.line == line
    assert err.field == field
    assert words in err.message


def test_bundled_snapshot_loads_and_names_its_date():
    card = load_snapshot()
    assert card.name.startswith("snapshot:20")
    p5 = {"node.kubernetes.io/instance-type": "p5.48xlarge", "topology.kubernetes.io/region": "us-east-1"}
    price = gpu_price(card, p5, "NVIDIA H100 80GB HBM3", 8)
    assert price.source == card.name
    assert 1.0 < price.hourly < 20.0
    assert gpu_price(card, {}, "Some Future GPU", 1).source == "default"


def test_example_files_load():
    load_rate_card(ROOT / "examples" / "rates.yaml")
    load_config(ROOT / "examples" / "config.yaml")


def test_config_loads_and_rejects_mistakes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("namespace_teams: {research: ml}\nlabel_rules:\n  - {label: app, value: llm, class: inference}\n")
    config = load_config(path)
    assert config.namespace_teams == {"research": "ml"}
    assert config.label_rules[0].value == "llm"
    assert config.team_labels == Config().team_labels
    for text, line, field in [
        ("team_label: [x]\n", 1, "team_label"),
        ("label_rules:\n  - {label: app, class: serving}\n", 2, "label_rules[0].class"),
        ("owner_kind_classes: {Job: batch}\n", 1, "owner_kind_classes.Job"),
        ("team_labels: team\n", 1, "team_labels"),
    ]:
        path.write_text(text)
        with pytest.raises(InputError) as info:
            load_config(path)
        assert (info.value.line, info.value.field) == (line, field), text


def test_configuration_doc_is_generated_from_the_declarations():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert settings_markdown() in doc


@pytest.mark.parametrize("text, line, words", [
    ("team_labels: [team]\nnamespace_teams: {a: \"b\x01\"}\n", 2, "unacceptable character #x0001"),
    ("team_labels: [team\n", 2, "expected ',' or ']'"),
])
def test_yaml_errors_are_one_line_with_the_line_number(tmp_path, text, line, words):
    """A YAML error that quotes a position (the reader's, for a control character) is
    given as FILE:LINE on one line, like every other."""
    import subprocess
    import sys

    path = tmp_path / "config.yaml"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "agent.cli", "config", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith(f"gpuledger: error: {path}:{line}: not valid YAML (") and words in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
