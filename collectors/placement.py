"""Which pod holds which GPU: the kubelet's device assignments joined with the API server.

The kubelet knows which container holds which device ids, by pod namespace and name;
the API server knows each pod's UID, labels and owners, and the node's labels. This
source joins the two into the trace's ``node`` and ``pods`` records, exactly as replay
reads them, and emits a record only when it differs from the last one it emitted.

Mapping (``docs/kubernetes.md`` has the full table):

* a pod is in the snapshot when the kubelet lists at least one GPU resource for one of
  its containers and the API server does not say it has finished;
* ``uid``, ``labels`` and ``owner`` (the top controller, :mod:`collectors.owners`) come
  from the API server; a pod the API server has not told us about yet gets the UID
  ``kubelet:<namespace>/<name>`` and no labels, so its GPUs are still attributed (to its
  namespace) rather than lost;
* device ids are resolved to GPU and MIG UUIDs (:mod:`collectors.kubelet.deviceids`);
  replicas of a time-sliced GPU become that GPU, listed by every pod sharing it.

When the kubelet cannot be asked, the last assignments it gave stand; when the API
server cannot be reached, the informers' caches stand. Nothing here raises for a fault.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from collectors.kubelet.client import PodResourcesClient
from collectors.kubelet.deviceids import DeviceInventory, resolve_all
from collectors.faults import FaultCounter
from collectors.kubelet.resources import Allocatable, PodAssignment
from collectors.kubeapi import Informer
from collectors.nodelabels import stable_labels
from collectors.owners import DEFAULT_LOOKUP_KINDS, OwnerLookup, top_owner
from collectors.records import (
    Container,
    DevicesRecord,
    NodeRecord,
    Pod,
    PodsRecord,
    Record,
)

COLLECTOR = "placement"

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


# --------------------------------------------------------------------------- pure mapping


def pod_record(
    pod: Mapping[str, Any],
    containers: tuple[Container, ...],
    lookup: OwnerLookup | None = None,
    lookup_kinds: frozenset[str] = DEFAULT_LOOKUP_KINDS,
) -> Pod:
    """The trace's Pod for a pod object (as the API server returns it, or slimmed)."""
    meta = pod.get("metadata") or {}
    return Pod(
        uid=meta.get("uid") or f"kubelet:{meta.get('namespace', '')}/{meta.get('name', '')}",
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        labels=dict(sorted((meta.get("labels") or {}).items())),
        owner=top_owner(meta, lookup, lookup_kinds),
        containers=containers,
    )


def containers_of(
    assignment: PodAssignment, inventory: DeviceInventory | None
) -> tuple[tuple[Container, ...], tuple[str, ...]]:
    """(containers with their devices as UUIDs, the device ids that could not be resolved)."""
    containers = []
    unresolved: list[str] = []
    for c in assignment.containers:
        uuids, bad = resolve_all(c.device_ids, inventory)
        unresolved.extend(bad)
        containers.append(Container(c.name, uuids))
    return tuple(containers), tuple(unresolved)


def placement(
    assignments: tuple[PodAssignment, ...],
    api_pod: Callable[[str, str], Mapping[str, Any] | None],
    inventory: DeviceInventory | None = None,
    lookup: OwnerLookup | None = None,
    lookup_kinds: frozenset[str] = DEFAULT_LOOKUP_KINDS,
) -> tuple[tuple[Pod, ...], tuple[str, ...], tuple[str, ...]]:
    """(the pods snapshot sorted by namespace and name, unresolved ids, pods unknown to the API)."""
    pods: list[Pod] = []
    unresolved: list[str] = []
    missing: list[str] = []
    for assignment in assignments:
        obj = api_pod(assignment.namespace, assignment.name)
        if obj is not None and _phase(obj) in FINISHED_PHASES:
            continue
        if obj is None:
            missing.append(f"{assignment.namespace}/{assignment.name}")
            obj = {"metadata": {"namespace": assignment.namespace, "name": assignment.name}}
        containers, bad = containers_of(assignment, inventory)
        unresolved.extend(bad)
        pods.append(pod_record(obj, containers, lookup, lookup_kinds))
    pods.sort(key=lambda p: (p.namespace, p.name))
    return tuple(pods), tuple(unresolved), tuple(missing)


def _phase(pod: Mapping[str, Any]) -> str | None:
    """A pod's phase, from a slimmed pod or a full one."""
    return pod.get("phase") or (pod.get("status") or {}).get("phase")


# --------------------------------------------------------------------------- the source


class PlacementSource:
    """A RecordSource of ``node`` and ``pods`` records for one node.

    ``pods`` and ``node_informer`` are started :class:`Informer` s (or None to run
    without the API server); ``owners`` is the lookup for owner kinds that need a GET.
    ``api_wait_s`` is how long the first snapshot waits for the pod informer's first list,
    so a starting agent does not record placeholder pods it would fix a second later.
    """

    def __init__(
        self,
        node: str,
        kubelet: PodResourcesClient,
        pods: Informer | None = None,
        node_informer: Informer | None = None,
        owners: OwnerLookup | None = None,
        lookup_kinds: frozenset[str] = DEFAULT_LOOKUP_KINDS,
        inventory: DeviceInventory | None = None,
        api_wait_s: float = 30.0,
        allocatable_every_s: float = 300.0,
        faults: FaultCounter | None = None,
        rebuild_every_s: float = 30.0,
    ) -> None:
        self.node = node
        self.kubelet = kubelet
        self.pods = pods
        self.node_informer = node_informer
        self.owners = owners
        self.lookup_kinds = lookup_kinds
        self.inventory = inventory
        self.api_wait_s = api_wait_s
        self.allocatable_every_s = allocatable_every_s
        self.faults = faults or kubelet.faults
        self.allocatable: Allocatable | None = None
        self._allocatable_at: float | None = None
        self._first_poll: float | None = None
        self._assignments: tuple[PodAssignment, ...] | None = None
        self._node_labels: dict[str, str] | None = None
        self._pods: tuple[Pod, ...] | None = None
        # The pods are rebuilt only when the kubelet's answer, the pod informer's cache or
        # the device inventory changed, and every ``rebuild_every_s`` regardless, so an
        # owner lookup that failed is retried: nothing is redone for an unchanged node.
        self.rebuild_every_s = rebuild_every_s
        self._built_from: tuple | None = None
        self._built_at = float("-inf")

    def set_devices(
        self,
        record: DevicesRecord,
        minor_numbers: Mapping[str, int] | None = None,
        gpu_instance_ids: Mapping[str, int] | None = None,
    ) -> None:
        """Learn the node's GPUs (from the NVML collector's ``devices`` record), for ids
        that are not UUIDs (``nvidia0/gi0``, ``0``)."""
        self.inventory = DeviceInventory.from_devices(record, minor_numbers, gpu_instance_ids)

    def poll(self, now: float) -> list[Record]:
        if self._first_poll is None:
            self._first_poll = now
        out: list[Record] = []
        node = self._node_record(now)
        if node is not None:
            out.append(node)
        self._refresh_allocatable(now)
        assignments = self.kubelet.list()
        if assignments is not None:
            self._assignments = assignments
        if self._assignments is None:
            return out
        if self.pods is not None and not self.pods.synced.is_set() and now - self._first_poll < self.api_wait_s:
            return out
        built_from = (self._assignments, self.pods.version if self.pods is not None else None, self.inventory)
        if built_from == self._built_from and now - self._built_at < self.rebuild_every_s:
            return out
        self._built_from, self._built_at = built_from, now
        api_pod = self.pods.get if self.pods is not None else (lambda ns, name: None)
        pods, unresolved, missing = placement(
            self._assignments, api_pod, self.inventory, self.owners, self.lookup_kinds
        )
        for device_id in unresolved:
            self.faults.record(COLLECTOR, "device_id_unresolved", f"{device_id!r}: not a UUID and not in the devices inventory")
        for pod in missing:
            self.faults.record(COLLECTOR, "pod_missing_from_api", f"{pod}: held GPUs before the API server told us of it")
        if pods != self._pods:
            self._pods = pods
            out.append(PodsRecord(now, self.node, pods))
        return out

    def gpu_pods(self) -> list[tuple[str, Mapping[str, Any]]]:
        """(uid, the API server's pod object) of each pod holding GPUs in the newest snapshot:
        what the serving scraper reads (its IP, annotations and ports)."""
        if not self._pods or self.pods is None:
            return []
        out = []
        for pod in self._pods:
            obj = self.pods.get(pod.namespace, pod.name)
            if obj is not None and (obj.get("metadata") or {}).get("uid") == pod.uid:
                out.append((pod.uid, obj))
        return out

    def _node_record(self, now: float) -> NodeRecord | None:
        if self.node_informer is None:
            return None
        obj = self.node_informer.get("", self.node)
        if obj is None:
            return None
        labels = stable_labels(obj["metadata"]["labels"])
        if labels == self._node_labels:
            return None
        self._node_labels = labels
        return NodeRecord(now, self.node, labels)

    def _refresh_allocatable(self, now: float) -> None:
        if self._allocatable_at is not None and now - self._allocatable_at < self.allocatable_every_s:
            return
        self._allocatable_at = now
        allocatable = self.kubelet.allocatable()
        if allocatable is None:
            return
        self.allocatable = allocatable
        for ids in allocatable.devices.values():
            _, bad = resolve_all(ids, self.inventory)
            for device_id in bad:
                self.faults.record(COLLECTOR, "device_id_unresolved", f"{device_id!r}: allocatable, but not a UUID and not in the devices inventory")

    def close(self) -> None:
        for informer in (self.pods, self.node_informer):
            if informer is not None:
                informer.stop()
        self.kubelet.close()
