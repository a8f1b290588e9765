"""The cloud price sources, declared once: the chain's order, the agent's settings, the
flags of ``prices show``, the package each needs, and how each is built.

Each entry names a module in ``collectors/pricing/`` that holds the source: its client
class (which talks to the API), ``SOURCE`` (the ``price_source`` its prices carry) and
the two functions the chain calls, ``price(chain, api, labels, model, physical, steps)``
and ``commitments(chain, api, labels, model)``. The module is imported only when the
source is used, so an agent without ``--aws`` never loads the AWS code (nor boto3).

:data:`SOURCES` is in the chain's order of precedence (``docs/pricing.md``): a node is
asked of the enabled sources in this order, after the rate card and before the
snapshot. Adding a source is its module and one entry here; the settings, flags, chart
test and docs tests follow from this tuple.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable

from collectors.errors import InputError


@dataclass(frozen=True)
class PriceSource:
    """One cloud price source.

    ``name`` is the flag (``--aws``), the agent setting (``aws``, ``GPULEDGER_AWS``) and the
    chart value (``pricing.aws``); ``provider`` is what
    :func:`collectors.nodelabels.provider_of` answers for the nodes it prices. ``module``
    is the Python module to look for before asking (None when gpuledger's own
    dependencies suffice), ``package`` the distribution that provides it and ``extra``
    the gpuledger extra that installs that.
    """

    name: str
    provider: str
    asks: str  # what it asks, after "Ask": "the AWS price APIs"
    credentials: str  # the credentials it uses, in a few words
    implementation: str  # "collectors.pricing.aws:AwsPrices": the source's module and client class
    module: str | None = None
    package: str | None = None
    extra: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def needs(self) -> str:
        return f"needs gpuledger[{self.extra}]" if self.extra else "no extra package"

    @property
    def setting_help(self) -> str:
        """The agent setting's description (``docs/agent.md``)."""
        return f"Ask {self.asks} ({self.credentials}; {self.needs})."

    @property
    def flag_help(self) -> str:
        """The ``prices show`` flag's help."""
        return f"ask {self.asks} ({self.credentials}; {self.needs})"

    def layer(self) -> ModuleType:
        """The source's module: ``SOURCE``, ``price`` and ``commitments`` (imported on first use)."""
        return importlib.import_module(self.implementation.partition(":")[0])

    def build(self) -> Any:
        """A client with its defaults (credentials from the environment, made on first use)."""
        return getattr(self.layer(), self.implementation.partition(":")[2])()


SOURCES: tuple[PriceSource, ...] = (
    PriceSource("aws", "aws", "the AWS price APIs", "standard credential chain",
                "collectors.pricing.aws:AwsPrices", module="boto3", package="boto3", extra="cloud"),
    PriceSource("gcp", "gcp", "the GCP Cloud Billing Catalog", "Application Default Credentials",
                "collectors.pricing.gcp:GcpPrices", module="google.cloud.billing_v1",
                package="google-cloud-billing", extra="cloud"),
    # Azure's client is urllib3, one of gpuledger's own dependencies
    PriceSource("azure", "azure", "the Azure Retail Prices API", "no credentials",
                "collectors.pricing.azure:AzurePrices"),
)
NAMES: tuple[str, ...] = tuple(s.name for s in SOURCES)


def source(name: str) -> PriceSource:
    """The declaration named ``name``; KeyError naming the known ones otherwise."""
    for s in SOURCES:
        if s.name == name:
            return s
    raise KeyError(f"no price source {name!r}; expected one of {', '.join(NAMES)}")


def require_packages(names: Iterable[str]) -> None:
    """InputError naming the flag when a requested source's package is not installed."""
    for s in SOURCES:
        if s.name in names and s.module is not None and not _importable(s.module):
            raise InputError(f"{s.flag} needs the {s.package} package (pip install 'gpuledger[{s.extra}]'); "
                             f"install it or leave {s.flag} out", field=s.flag)


def build(names: Iterable[str]) -> dict[str, Any]:
    """Clients of the named sources, in the registry's order, their packages checked first."""
    wanted = set(names)
    for name in wanted:
        source(name)
    require_packages(wanted)
    return {s.name: s.build() for s in SOURCES if s.name in wanted}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
