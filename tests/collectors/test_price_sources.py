"""The cloud price sources are declared once (collectors/pricing/sources.py), and everything
that names them follows: the chain's order, the agent's settings, the flags of
`prices show`, the package checks and the docs. (The chart: tests/chart/test_helm_chart.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent import agent_settings
from agent.cli import build_parser
from agent.live import requested_sources
from recommenders.settingfields import about, default_of, flag_name, is_switch
from collectors.errors import InputError
from collectors.pricing import sources
from collectors.pricing.chain import PriceChain
from collectors.pricing.ratecard import RateCard
from collectors.pricing.sources import NAMES, SOURCES

ROOT = Path(__file__).resolve().parents[2]


class Silent:
    """A client the chain never gets to ask (the card below is not USD)."""


def test_the_registry_is_aws_then_gcp_then_azure():
    assert NAMES == ("aws", "gcp", "azure")
    assert len(set(NAMES)) == len(NAMES) and all(re.fullmatch(r"[a-z][a-z0-9]*", n) for n in NAMES)
    for s in SOURCES:
        layer = s.layer()
        assert callable(layer.price) and callable(layer.commitments) and layer.SOURCE == f"{s.name}-api"
        assert (s.module is None) == (s.package is None) == (s.extra is None)


def test_the_chain_asks_in_the_registrys_order_whatever_it_is_given():
    eur = RateCard(currency="EUR", default_gpu_hourly=2.0)
    chain = PriceChain(card=eur, apis={name: Silent() for name in reversed(NAMES)})
    assert list(chain.apis) == list(NAMES)
    explained = chain.explain({"node.kubernetes.io/instance-type": "p5.48xlarge"}, "NVIDIA H100 80GB HBM3", 8)
    skipped = [step.source for step in explained.steps if step.outcome == "skipped"]
    assert skipped[:len(NAMES)] == [s.layer().SOURCE for s in SOURCES]


def test_the_chain_refuses_a_source_it_does_not_know():
    with pytest.raises(ValueError, match="unknown price sources"):
        PriceChain(apis={"oracle": Silent()})


def test_every_source_is_an_agent_setting():
    settings = {f.name: f for f in agent_settings.SETTINGS}
    for source in SOURCES:
        setting = settings[source.name]
        assert default_of(setting) is False and about(setting).help == source.setting_help
        assert is_switch(setting) and flag_name(setting) == source.flag
    names = [f.name for f in agent_settings.SETTINGS if f.name in NAMES]
    assert names == list(NAMES)


def test_the_setting_help_says_what_each_source_needs():
    assert [s.setting_help for s in SOURCES] == [
        "Ask the AWS price APIs (standard credential chain; needs gpuledger[cloud]).",
        "Ask the GCP Cloud Billing Catalog (Application Default Credentials; needs gpuledger[cloud]).",
        "Ask the Azure Retail Prices API (no credentials; no extra package).",
    ]


def test_every_source_is_a_prices_show_flag():
    args = build_parser().parse_args(["prices", "show", "--node-labels", "a=b", *(s.flag for s in SOURCES)])
    assert requested_sources(args) == NAMES
    none = build_parser().parse_args(["prices", "show", "--node-labels", "a=b"])
    assert requested_sources(none) == ()


def test_every_source_is_in_the_docs():
    agent_doc = (ROOT / "docs" / "agent.md").read_text()
    pricing = (ROOT / "docs" / "pricing.md").read_text()
    readme = (ROOT / "README.md").read_text()
    usage = next(line for line in pricing.splitlines() if "[--rates rates.yaml]" in line)
    for s in SOURCES:
        source = s.layer().SOURCE
        assert f"| `{s.flag}` | `GPULEDGER_{s.name.upper()}` | `{s.name}` |" in agent_doc
        assert f"(`{source}`)" in pricing, f"docs/pricing.md has no section on {source}"
        assert f"| `{source}` |" in pricing, f"docs/pricing.md's order table has no row for {source}"
        assert f"[{s.flag}]" in usage and f"[{s.flag}]" in readme


def test_a_missing_package_names_the_flag_and_the_extra(monkeypatch):
    monkeypatch.setattr(sources, "_importable", lambda module: False)
    with pytest.raises(InputError) as info:
        sources.require_packages(["gcp"])
    assert info.value.message == ("--gcp needs the google-cloud-billing package (pip install "
                                    "'gpuledger[cloud]'); install it or leave --gcp out")
    assert info.value.field == "--gcp"
    with pytest.raises(InputError, match="--aws needs the boto3 package"):
        sources.build(["azure", "aws"])
    assert list(sources.build(["azure"])) == ["azure"]  # Azure needs no package
    sources.require_packages([])


def test_no_source_module_is_loaded_until_asked():
    code = ("import sys\n"
            "import agent.cli, agent.cmd_agent, agent.live, agent.agent_settings, collectors.pricing.chain\n"
            "from collectors.pricing.chain import PriceChain\n"
            "PriceChain()({'node.kubernetes.io/instance-type': 'p5.48xlarge'}, 'NVIDIA H100 80GB HBM3', 8)\n"
            "print(' '.join(sorted(m for m in sys.modules if m in ('boto3', 'botocore', 'google.cloud.billing_v1')"
            " or m in ('collectors.pricing.aws', 'collectors.pricing.gcp', 'collectors.pricing.azure'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
