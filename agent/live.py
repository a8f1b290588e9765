"""The live sources, assembled in one place: the price chain from the settings, and the
node's samples (NVML, with the Kubernetes placement and the model servers' counters).

``gpuledger agent``, ``gpuledger record`` and ``gpuledger prices show`` build what they
read here, so each cloud price source and each collector is wired once. Everything
heavy is imported on first use: the agent without ``--aws`` never loads boto3, and
``record --kubernetes off`` never loads the Kubernetes client.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from collectors.errors import InputError
from collectors.pricing.sources import SOURCES
from collectors.records import DevicesRecord, Record

if TYPE_CHECKING:
    from agent.agent_settings import AgentSettings

log = logging.getLogger("gpuledger.agent")


# --------------------------------------------------------------------------- prices


def requested_sources(values: Any) -> tuple[str, ...]:
    """The names of the cloud price sources switched on in ``values`` (the agent's settings
    or ``prices show``'s parsed flags: an attribute per source's name), in the chain's order."""
    return tuple(s.name for s in SOURCES if getattr(values, s.name, False))


def price_chain(card, names, cache_dir: str | None):
    """The chain over ``card``, the named cloud sources (packages checked first: an
    InputError names the flag) and the snapshot, with API answers kept in ``cache_dir``."""
    from collectors.pricing import sources
    from collectors.pricing.cache import PriceCache
    from collectors.pricing.chain import PriceChain

    return PriceChain(card=card, apis=sources.build(names), cache=PriceCache(cache_dir))


def agent_price_chain(settings: AgentSettings):
    """The agent's chain: ``--rates``, the enabled sources, ``--price-cache``."""
    from collectors.pricing.ratecard import load_rate_card

    card = load_rate_card(settings.rates) if settings.rates else None
    return price_chain(card, requested_sources(settings), settings.price_cache)


# --------------------------------------------------------------------------- samples


def nvml_collector(node: str, proc_root: str | None):
    """NVML for ``node``; per-process use mapped to pods through ``proc_root`` (None: not)."""
    from collectors.nvml import NvmlCollector
    from collectors.procfs import PodResolver

    return NvmlCollector(node, resolver=PodResolver(proc_root) if proc_root is not None else None)


def wants_kubernetes(mode: str, socket_path: str) -> bool:
    """``--kubernetes``: ``on``, or ``auto`` when the kubelet's pod-resources socket exists."""
    return mode == "on" or (mode == "auto" and Path(socket_path).exists())


def with_placement(collector, node: str, socket_path: str, kubeconfig: str | None) -> "WithPlacement":
    """``collector`` with the node's placement; the collector is closed when that cannot be had."""
    try:
        return WithPlacement(collector, placement_source(node, socket_path, kubeconfig))
    except InputError:
        collector.close()
        raise


def sample_source(settings: AgentSettings) -> tuple[Any, bool]:
    """The live agent's record source, and whether it has Kubernetes placement."""
    node = settings.node
    collector = nvml_collector(node, settings.proc_root if settings.processes == "on" else None)
    wanted = settings.kubernetes
    if wants_kubernetes(wanted, settings.kubelet_socket):
        source = with_placement(collector, node, settings.kubelet_socket, settings.kubeconfig)
        if settings.serving != "off":
            source = with_serving(source, settings)
        return source, True
    if settings.serving == "on":
        log.warning("serving counters need Kubernetes placement (the pods and their IPs): not reading them")
    if wanted == "auto":
        log.warning("no kubelet pod-resources socket at %s: attributing GPUs without pods (all unallocated)",
                    settings.kubelet_socket)
    return collector, False


def with_serving(source: "WithPlacement", settings: AgentSettings):
    """The placement source with the node's GPU pods' model server counters added (docs/unit-economics.md)."""
    from collectors.faults import FAULTS
    from collectors.serving import SERVERS, ServingScraper, ServingSource, endpoints_of

    node = settings.node
    placement = source.placement
    # the config's servers are tried first, and one named like a known server replaces it
    servers = dict(settings.serving_mappings)
    servers.update({name: metrics for name, metrics in SERVERS.items() if name not in servers})

    def targets():
        return [e for _, obj in placement.gpu_pods() for e in endpoints_of(obj, node, settings.serving_ports)]

    scraper = ServingScraper(targets, interval_s=settings.serving_interval, timeout_s=settings.serving_timeout,
                             faults=FAULTS, servers=servers)
    return ServingSource(source, scraper.start())


class WithPlacement:
    """NVML plus the Kubernetes placement collectors, as one RecordSource.

    The placement source needs the node's devices to read device ids that are not UUIDs
    (GKE's ``nvidia0/gi0``), so every ``devices`` record NVML emits is handed to it before
    it is polled.
    """

    def __init__(self, nvml, placement) -> None:
        self.nvml = nvml
        self.placement = placement

    def poll(self, now: float) -> list[Record]:
        gpus = self.nvml.poll(now)
        for record in gpus:
            if isinstance(record, DevicesRecord):
                self.placement.set_devices(record)
        return self.placement.poll(now) + gpus

    @property
    def problem(self) -> str | None:
        """Why no GPU can be sampled (see NvmlCollector.problem), or None."""
        return self.nvml.problem

    def close(self) -> None:
        try:
            self.placement.close()
        finally:
            self.nvml.close()


def placement_source(node: str, socket_path: str, kubeconfig: str | None):
    """The kubelet pod-resources client and the API-server informers for ``node``."""
    from collectors.kubeapi import api_client_from_environment, node_informer, pod_informer
    from collectors.kubehttp import ConfigError
    from collectors.kubelet.client import PodResourcesClient
    from collectors.owners import OwnerCache
    from collectors.placement import PlacementSource

    try:
        api = api_client_from_environment(kubeconfig)
    except ConfigError as err:
        raise InputError(f"cannot configure the Kubernetes API client: {err}", file=kubeconfig) from None
    return PlacementSource(
        node, PodResourcesClient(socket_path), pod_informer(api, node).start(),
        node_informer(api, node).start(), owners=OwnerCache.from_api_client(api),
    )
