"""The top owner of a pod: the controller a person created (a Deployment, a PyTorchJob).

Pods point at their immediate controller; the top one is found by walking
``ownerReferences`` up. Most steps need no API call because the reference says enough:

* a ReplicaSet named ``<deployment>-<pod-template-hash>``, where the pod carries that
  ``pod-template-hash`` label, belongs to the Deployment ``<deployment>``;
* a Job named ``<cronjob>-<N>``, where N is the scheduled time in minutes since the
  epoch (what the CronJob controller appends), belongs to the CronJob ``<cronjob>``,
  unless the Job itself is cached and its own ``ownerReferences`` say otherwise;
* a KubeRay pod's ``ray.io/originated-from-crd`` and ``ray.io/originated-from-cr-name``
  labels name the RayJob or RayService that owns its RayCluster.

Other steps, for the kinds in ``lookup_kinds`` (a StatefulSet a Kubeflow Notebook owns,
a Job a JobSet owns, a RayCluster without the labels), read the owner object through a
cached GET. :func:`top_owner` is pure, given a lookup function; :class:`OwnerCache` is
the lookup against the API server.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import quote

from collectors.faults import FAULTS, FaultCounter
from collectors.records import Owner

COLLECTOR = "owners"

#: Owner kinds read with a GET when the name rules do not settle them.
DEFAULT_LOOKUP_KINDS = frozenset({"ReplicaSet", "Job", "StatefulSet", "RayCluster"})

#: kind -> (apiVersion, resource plural) for the kinds the agent may GET; other kinds
#: use their ownerReference's apiVersion and the lower-case kind plus "s".
KNOWN_KINDS: Mapping[str, tuple[str, str]] = {
    "ReplicaSet": ("apps/v1", "replicasets"),
    "Deployment": ("apps/v1", "deployments"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "DaemonSet": ("apps/v1", "daemonsets"),
    "Job": ("batch/v1", "jobs"),
    "CronJob": ("batch/v1", "cronjobs"),
    "RayCluster": ("ray.io/v1", "rayclusters"),
    "Notebook": ("kubeflow.org/v1", "notebooks"),
    "LeaderWorkerSet": ("leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
}

_CRONJOB_JOB = re.compile(r"^(.+)-(\d{7,10})$")
# Scheduled times a CronJob's Job name can carry: 2001-09-09 .. 2128, in minutes.
_MINUTES_LOW, _MINUTES_HIGH = 16_666_667, 99_999_999
_RAY_CRDS = ("RayJob", "RayService", "RayCluster")


@dataclass(frozen=True)
class OwnerRef:
    """One ``ownerReferences`` entry, the part that names the owner."""

    api_version: str
    kind: str
    name: str


class OwnerLookup(Protocol):
    """Returns an owner object's ``metadata`` (a dict), or None.

    With ``fetch=False`` only what is already cached; with ``fetch=True`` it may GET.
    """

    def __call__(self, namespace: str, ref: OwnerRef, fetch: bool) -> Mapping[str, Any] | None: ...


def controller_of(metadata: Mapping[str, Any]) -> OwnerRef | None:
    """The owner reference marked ``controller: true``, else the first one, else None."""
    refs = metadata.get("ownerReferences") or ()
    chosen = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if chosen is None or not chosen.get("kind") or not chosen.get("name"):
        return None
    return OwnerRef(chosen.get("apiVersion", ""), chosen["kind"], chosen["name"])


def owner_by_name(ref: OwnerRef, pod_labels: Mapping[str, str] | None) -> OwnerRef | None:
    """The owner of ``ref`` when its name alone says it; None otherwise.

    ``pod_labels`` are the pod's when ``ref`` is the pod's own controller (the
    ``pod-template-hash`` rule only holds there), else None.
    """
    if ref.kind == "ReplicaSet" and pod_labels:
        template_hash = pod_labels.get("pod-template-hash")
        if template_hash and ref.name.endswith("-" + template_hash) and len(ref.name) > len(template_hash) + 1:
            return OwnerRef("apps/v1", "Deployment", ref.name[: -len(template_hash) - 1])
    if ref.kind == "Job":
        match = _CRONJOB_JOB.match(ref.name)
        if match and _MINUTES_LOW <= int(match.group(2)) <= _MINUTES_HIGH:
            return OwnerRef("batch/v1", "CronJob", match.group(1))
    return None


def owner_by_labels(ref: OwnerRef, pod_labels: Mapping[str, str]) -> OwnerRef | None:
    """KubeRay's labels name the custom resource that created a pod's RayCluster."""
    if ref.kind != "RayCluster":
        return None
    crd = pod_labels.get("ray.io/originated-from-crd")
    name = pod_labels.get("ray.io/originated-from-cr-name")
    if crd in _RAY_CRDS and name:
        return OwnerRef("ray.io/v1", crd, name)  # type: ignore[arg-type]
    return None


def top_owner(
    metadata: Mapping[str, Any],
    lookup: OwnerLookup | None = None,
    lookup_kinds: frozenset[str] = DEFAULT_LOOKUP_KINDS,
    max_depth: int = 8,
) -> Owner | None:
    """The top owner of the pod whose ``metadata`` is given; None for a bare pod."""
    current = controller_of(metadata)
    if current is None:
        return None
    namespace = metadata.get("namespace", "")
    labels = metadata.get("labels") or {}
    hint = owner_by_labels(current, labels)
    if hint is not None:
        return Owner(hint.kind, hint.name)
    pod_labels: Mapping[str, str] | None = labels
    for _ in range(max_depth):
        owner_meta = lookup(namespace, current, False) if lookup else None
        if owner_meta is None:
            by_name = owner_by_name(current, pod_labels)
            pod_labels = None
            if by_name is not None:
                current = by_name
                continue
            if lookup is not None and current.kind in lookup_kinds:
                owner_meta = lookup(namespace, current, True)
        pod_labels = None
        parent = controller_of(owner_meta) if owner_meta is not None else None
        if parent is None:
            break
        current = parent
    return Owner(current.kind, current.name)


def resource_path(namespace: str, ref: OwnerRef) -> tuple[str, str, str] | None:
    """(group, version, plural) of an owner, or None for the core group (never looked up)."""
    api_version, plural = KNOWN_KINDS.get(ref.kind, (ref.api_version, ref.kind.lower() + "s"))
    if ref.api_version and ref.kind not in KNOWN_KINDS:
        api_version = ref.api_version
    if "/" not in api_version:
        return None
    group, version = api_version.split("/", 1)
    return group, version, plural


def object_path(group: str, version: str, namespace: str, plural: str, name: str) -> str:
    """The REST path of a namespaced object: ``/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>``,
    or ``/api/<version>/...`` for the core group (``group`` empty)."""
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}/{quote(name, safe='')}"


def slim_owner(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an owner object the walk needs, so the cache stays small."""
    meta = obj.get("metadata") or {}
    return {"name": meta.get("name"), "namespace": meta.get("namespace"),
            "ownerReferences": [
                {"apiVersion": r.get("apiVersion", ""), "kind": r.get("kind"), "name": r.get("name"),
                 "controller": r.get("controller", False)}
                for r in meta.get("ownerReferences") or ()
            ]}


class OwnerCache:
    """A bounded cache of owner objects read with GET, for :func:`top_owner`.

    ``get`` is any function ``(group, version, namespace, plural, name) -> dict`` that
    raises on failure; :meth:`from_api_client` makes one from the API client.
    A failed GET is remembered for ``retry_s`` (``forbidden_s`` for 403/404) so an
    outage or a missing RBAC rule costs one request per owner per period, not one per
    poll.
    """

    def __init__(
        self,
        get: Callable[[str, str, str, str, str], Mapping[str, Any]],
        faults: FaultCounter | None = None,
        max_entries: int = 1024,
        retry_s: float = 60.0,
        forbidden_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._get = get
        self.faults = faults or FAULTS
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._max = max_entries
        self._retry_s = retry_s
        self._forbidden_s = forbidden_s
        self._clock = clock
        self.gets = 0

    @classmethod
    def from_api_client(cls, client: Any, timeout_s: float = 10.0, **kwargs: Any) -> "OwnerCache":
        """An OwnerCache that GETs through ``client`` (a :class:`collectors.kubehttp.KubeClient`)."""

        def get(group: str, version: str, namespace: str, plural: str, name: str) -> Mapping[str, Any]:
            return client.get_json(object_path(group, version, namespace, plural, name), timeout=timeout_s)

        return cls(get, **kwargs)

    def __call__(self, namespace: str, ref: OwnerRef, fetch: bool) -> Mapping[str, Any] | None:
        key = (namespace, ref.kind, ref.name)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            expires, meta = entry
            if meta is not None or now < expires or not fetch:
                self._entries.move_to_end(key)
                return meta
        if not fetch:
            return None
        path = resource_path(namespace, ref)
        if path is None:
            return None
        self.gets += 1
        try:
            meta: dict[str, Any] | None = slim_owner(self._get(path[0], path[1], namespace, path[2], ref.name))
            expires = 0.0
        except Exception as err:  # noqa: BLE001 - any failure is a counted fault, never a crash
            status = getattr(err, "status", None)
            kind = {403: "owner_get_forbidden", 404: "owner_not_found"}.get(status, "owner_get_failed")  # type: ignore[arg-type]
            self.faults.record(COLLECTOR, kind, f"{ref.kind} {namespace}/{ref.name}: {err}".splitlines()[0])
            meta = None
            expires = now + (self._forbidden_s if status in (403, 404) else self._retry_s)
        self._entries[key] = (expires, meta)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return meta
