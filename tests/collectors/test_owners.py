"""Top owners of realistic pods: the name rules without API calls, cached GETs otherwise."""

from __future__ import annotations

import pytest

from collectors.faults import FaultCounter
from collectors.owners import (
    OwnerCache,
    OwnerRef,
    controller_of,
    object_path,
    owner_by_name,
    top_owner,
)
from collectors.records import Owner
from tests.fakekube import FakeKube
from tests.fakekube import objects as k8s


class DictLookup:
    """A lookup over a dict of owner objects that records every GET."""

    def __init__(self, objects: dict[tuple[str, str, str], dict]) -> None:
        self.objects = objects
        self.cached: dict[tuple[str, str, str], dict] = {}
        self.gets: list[tuple[str, str, str]] = []

    def __call__(self, namespace: str, ref: OwnerRef, fetch: bool):
        key = (namespace, ref.kind, ref.name)
        if key in self.cached:
            return self.cached[key]
        if not fetch:
            return None
        self.gets.append(key)
        obj = self.objects.get(key)
        if obj is not None:
            self.cached[key] = obj["metadata"]
        return obj["metadata"] if obj else None


def lookup_with(*objs: dict) -> DictLookup:
    return DictLookup({(o["metadata"]["namespace"], o["kind"], o["metadata"]["name"]): o for o in objs})


@pytest.mark.parametrize(
    ("pod", "owner", "gets"),
    [
        (k8s.pytorchjob_worker, Owner("PyTorchJob", "llama-ft"), 0),
        (k8s.kserve_predictor, Owner("Deployment", "llama-chat-predictor"), 0),
        (k8s.rayjob_worker, Owner("RayJob", "nightly-eval"), 0),
        (k8s.rayservice_worker, Owner("RayService", "chat-serve"), 1),
        (k8s.deployment_pod, Owner("Deployment", "embedder"), 0),
        (k8s.notebook_pod, Owner("Notebook", "alice-nb"), 1),
        (k8s.bare_pod, None, 0),
        (k8s.cronjob_pod, Owner("CronJob", "nightly-finetune"), 0),
    ],
)
def test_top_owner_of_realistic_pods(pod, owner, gets):
    lookup = lookup_with(k8s.rayservice_cluster(), k8s.notebook_statefulset())
    assert top_owner(pod()["metadata"], lookup) == owner
    assert len(lookup.gets) == gets


def test_without_lookup_the_walk_stops_at_the_first_owner_it_cannot_name():
    assert top_owner(k8s.notebook_pod()["metadata"]) == Owner("StatefulSet", "alice-nb")
    assert top_owner(k8s.rayservice_worker()["metadata"]) == Owner("RayCluster", "chat-serve-raycluster-k8q2w")
    assert top_owner(k8s.kserve_predictor()["metadata"]) == Owner("Deployment", "llama-chat-predictor")


def test_replicaset_without_matching_hash_is_looked_up():
    meta = k8s.deployment_pod()["metadata"]
    meta["labels"].pop("pod-template-hash")
    lookup = lookup_with({"kind": "ReplicaSet", "metadata": {
        "namespace": "vision", "name": "embedder-5f7c9d8b6",
        "ownerReferences": [{"kind": "Deployment", "name": "embedder", "controller": True, "apiVersion": "apps/v1"}]}})
    assert top_owner(meta, lookup) == Owner("Deployment", "embedder")
    assert lookup.gets == [("vision", "ReplicaSet", "embedder-5f7c9d8b6")]
    # a bare ReplicaSet (no owner) is its own top
    assert top_owner(meta, lookup_with()) == Owner("ReplicaSet", "embedder-5f7c9d8b6")


def test_cached_job_owner_reference_wins_over_the_name_rule():
    meta = k8s.cronjob_pod()["metadata"]
    lookup = lookup_with()
    lookup.cached[("batch", "Job", "nightly-finetune-29412360")] = {
        "name": "nightly-finetune-29412360", "ownerReferences": [
            {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "name": "ft", "controller": True}]}
    assert top_owner(meta, lookup) == Owner("JobSet", "ft")
    assert lookup.gets == []


def test_a_job_without_the_schedule_suffix_is_read_for_its_owner():
    meta = k8s.cronjob_pod()["metadata"]
    meta["ownerReferences"][0]["name"] = "ft-workers-0"
    lookup = lookup_with({"kind": "Job", "metadata": {
        "namespace": "batch", "name": "ft-workers-0", "ownerReferences": [
            {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "name": "ft", "controller": True}]}})
    assert top_owner(meta, lookup) == Owner("JobSet", "ft")
    assert top_owner(meta, lookup_with()) == Owner("Job", "ft-workers-0")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (OwnerRef("batch/v1", "Job", "backup-29412360"), OwnerRef("batch/v1", "CronJob", "backup")),
        (OwnerRef("batch/v1", "Job", "train-12"), None),  # too short to be a schedule
        (OwnerRef("batch/v1", "Job", "train-1234567890123"), None),  # too long
        (OwnerRef("batch/v1", "Job", "train-00000042"), None),  # 1970
        (OwnerRef("apps/v1", "ReplicaSet", "web-abc"), None),  # no pod labels
    ],
)
def test_owner_by_name(ref, expected):
    assert owner_by_name(ref, None) == expected


def test_controller_is_preferred_and_cycles_end():
    meta = {"namespace": "x", "ownerReferences": [
        {"kind": "ConfigMap", "name": "cm"}, {"kind": "Foo", "name": "a", "controller": True, "apiVersion": "ex.io/v1"}]}
    assert controller_of(meta) == OwnerRef("ex.io/v1", "Foo", "a")
    a = {"namespace": "x", "name": "a", "ownerReferences": [{"kind": "Foo", "name": "b", "controller": True}]}
    b = {"namespace": "x", "name": "b", "ownerReferences": [{"kind": "Foo", "name": "a", "controller": True}]}
    lookup = DictLookup({("x", "Foo", "a"): {"metadata": a}, ("x", "Foo", "b"): {"metadata": b}})
    owner = top_owner(meta, lookup, lookup_kinds=frozenset({"Foo"}))
    assert owner is not None and owner.kind == "Foo"


# --------------------------------------------------------------------------- OwnerCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_owner_cache_gets_once_and_remembers_failures_for_a_while():
    calls = []
    failing = {"on": True}

    def get(group, version, namespace, plural, name):
        calls.append((group, version, namespace, plural, name))
        if failing["on"]:
            raise ConnectionError("api server down")
        return k8s.notebook_statefulset()

    clock = Clock()
    cache = OwnerCache(get, faults=FaultCounter(), clock=clock, retry_s=60)
    ref = OwnerRef("apps/v1", "StatefulSet", "alice-nb")
    assert cache("kubeflow-alice", ref, True) is None
    assert cache("kubeflow-alice", ref, True) is None
    assert len(calls) == 1 and calls[0] == ("apps", "v1", "kubeflow-alice", "statefulsets", "alice-nb")
    assert cache.faults.count("owners", "owner_get_failed") == 1
    failing["on"] = False
    clock.now = 61
    meta = cache("kubeflow-alice", ref, True)
    assert meta["ownerReferences"][0]["kind"] == "Notebook"
    assert cache("kubeflow-alice", ref, False) is meta
    assert len(calls) == 2


def test_owner_cache_is_bounded_and_never_gets_core_kinds():
    cache = OwnerCache(lambda *a: {"metadata": {"name": a[-1]}}, max_entries=3)
    for i in range(10):
        cache("ns", OwnerRef("apps/v1", "ReplicaSet", f"rs-{i}"), True)
    assert len(cache._entries) == 3
    assert cache("ns", OwnerRef("v1", "ReplicationController", "rc"), True) is None
    assert cache.gets == 10


def test_object_paths():
    assert object_path("apps", "v1", "kubeflow-alice", "statefulsets", "alice-nb") == \
        "/apis/apps/v1/namespaces/kubeflow-alice/statefulsets/alice-nb"
    assert object_path("", "v1", "ns", "replicationcontrollers", "rc") == "/api/v1/namespaces/ns/replicationcontrollers/rc"
    assert object_path("ray.io", "v1", "ray", "rayclusters", "a/b?c") == "/apis/ray.io/v1/namespaces/ray/rayclusters/a%2Fb%3Fc"


def test_owner_cache_with_the_real_client_against_the_fake_api_server():
    with FakeKube() as kube:
        kube.add_owner("apps/v1", "statefulsets", k8s.notebook_statefulset())
        kube.add_owner("ray.io/v1", "rayclusters", k8s.rayservice_cluster())
        cache = OwnerCache.from_api_client(kube.client(), faults=FaultCounter())
        assert top_owner(k8s.notebook_pod()["metadata"], cache) == Owner("Notebook", "alice-nb")
        assert top_owner(k8s.rayservice_worker()["metadata"], cache) == Owner("RayService", "chat-serve")
        assert top_owner(k8s.notebook_pod()["metadata"], cache) == Owner("Notebook", "alice-nb")
        assert kube.count("/apis/apps/v1/namespaces/kubeflow-alice/statefulsets/alice-nb") == 1
        # a 404 (owner gone) and a 403 (RBAC) are counted, and the walk stops where it is
        meta = k8s.notebook_pod()["metadata"]
        meta["ownerReferences"][0]["name"] = "deleted-nb"
        assert top_owner(meta, cache) == Owner("StatefulSet", "deleted-nb")
        assert cache.faults.count("owners", "owner_not_found") == 1
        kube.fail_next(1, 403)
        meta["ownerReferences"][0]["name"] = "forbidden-nb"
        assert top_owner(meta, cache) == Owner("StatefulSet", "forbidden-nb")
        assert cache.faults.count("owners", "owner_get_forbidden") == 1
