"""The placement source: the kubelet (real gRPC) joined with the API server (a real HTTP fake)."""

from __future__ import annotations

import pytest

from collectors.faults import FaultCounter
from collectors.kubeapi import WatchSettings, node_informer, pod_informer
from collectors.kubehttp import KubeClient
from collectors.kubelet.client import PodResourcesClient
from collectors.kubelet.deviceids import DeviceInventory
from collectors.kubelet.resources import ContainerAssignment, PodAssignment
from collectors.nodelabels import gpu_labels, stable_labels
from collectors.owners import OwnerCache
from collectors.placement import PlacementSource, placement, pod_record
from collectors.records import Container, Device, DevicesRecord, NodeRecord, Owner, PodsRecord, from_json, to_json
from tests.fakekube import FakeKube
from tests.fakekube import objects as k8s
from tests.fakekube.kubelet import FakeKubelet

FAST = WatchSettings(backoff_initial_s=0.01, backoff_max_s=0.05, watch_timeout_s=30, read_timeout_s=10)
GPU = [f"GPU-0000000{i}-aaaa-4bbb-8ccc-00000000000{i}" for i in range(4)]
MIG = "MIG-0000000a-aaaa-4bbb-8ccc-00000000000a"
A100 = "NVIDIA A100-SXM4-40GB"


def test_pod_record_from_full_pod_json():
    pod = pod_record(k8s.pytorchjob_worker(), (Container("pytorch", (GPU[0], GPU[1])),))
    assert pod.uid == "8d3f6a7e-1c2b-4e5f-9a0b-1c2d3e4f5a6b"
    assert (pod.namespace, pod.name) == ("research", "llama-ft-worker-0")
    assert pod.labels["team"] == "ml-research" and pod.owner == Owner("PyTorchJob", "llama-ft")
    assert pod.devices == (GPU[0], GPU[1])
    assert from_json(to_json(PodsRecord(1.0, "n", (pod,)))).pods[0] == pod


def test_placement_joins_by_namespace_and_name_and_skips_finished_pods():
    api = {("research", "llama-ft-worker-0"): k8s.pytorchjob_worker()}
    done = k8s.deployment_pod()
    done["status"]["phase"] = "Succeeded"
    api[("vision", "embedder-5f7c9d8b6-qz4lp")] = done
    assignments = (
        PodAssignment("research", "llama-ft-worker-0", (ContainerAssignment("pytorch", ("nvidia0", GPU[1] + "::2"), ("nvidia.com/gpu",)),)),
        PodAssignment("vision", "embedder-5f7c9d8b6-qz4lp", (ContainerAssignment("embedder", (GPU[2],), ("nvidia.com/gpu",)),)),
        PodAssignment("new", "just-started", (ContainerAssignment("c", ("nvidia9",), ("nvidia.com/gpu",)),)),
    )
    inventory = DeviceInventory(gpu_by_minor={0: GPU[0]})
    pods, unresolved, missing = placement(assignments, lambda ns, n: api.get((ns, n)), inventory)
    assert [p.name for p in pods] == ["just-started", "llama-ft-worker-0"]
    assert pods[1].devices == (GPU[0], GPU[1])
    assert pods[0].uid == "kubelet:new/just-started" and pods[0].owner is None and pods[0].devices == ()
    assert unresolved == ("nvidia9",) and missing == ("new/just-started",)


def test_node_labels_for_records_and_gfd():
    labels = k8s.gpu_node()["metadata"]["labels"]
    assert "nvidia.com/gfd.timestamp" not in stable_labels(labels)
    gfd = gpu_labels(labels)
    assert (gfd.product, gfd.count, gfd.memory_mib, gfd.replicas, gfd.mig_strategy, gfd.mig_capable) == (
        "NVIDIA-A100-SXM4-40GB", 8, 40960, 1, "mixed", True)
    shared = gpu_labels({"nvidia.com/gpu.product": "Tesla-T4-SHARED", "nvidia.com/gpu.replicas": "4",
                         "nvidia.com/gpu.sharing-strategy": "time-slicing", "nvidia.com/gpu.count": "x"})
    assert (shared.replicas, shared.sharing_strategy, shared.count, shared.mig_capable) == (4, "time-slicing", None, None)


# --------------------------------------------------------------------------- live


@pytest.fixture
def world():
    """A fake API server, a fake kubelet, and a started placement source over both."""
    with FakeKube() as kube, FakeKubelet() as kubelet:
        faults = FaultCounter()
        api = kube.client()
        pods = pod_informer(api, k8s.NODE, faults, FAST).start()
        node = node_informer(api, k8s.NODE, faults, FAST).start()
        source = PlacementSource(
            k8s.NODE, PodResourcesClient(kubelet.socket_path, timeout_s=2, faults=faults), pods, node,
            owners=OwnerCache.from_api_client(api, faults=faults), api_wait_s=5, faults=faults,
        )
        yield kube, kubelet, source
        source.close()


def add_pod(kube: FakeKube, kubelet: FakeKubelet, obj: dict, resource: str, ids: list[str]) -> None:
    kube.add("pods", obj)
    meta = obj["metadata"]
    kubelet.set_pod(meta["namespace"], meta["name"], [(obj["spec"]["containers"][0]["name"], [(resource, ids)])])


def poll_until(kube: FakeKube, source: PlacementSource, predicate, start: float = 100.0, node: bool = False,
               placeholders: bool = False):
    """Poll (advancing the time by one second a poll) until the last PodsRecord satisfies
    predicate and (unless ``placeholders``) has no pod the informer had not seen yet
    (and, with ``node``, a NodeRecord came too)."""
    found: list = []
    now = [start]

    def check():
        now[0] += 1
        for record in source.poll(now[0]):
            assert from_json(to_json(record)) == record
            found.append(record)
        pods = [r for r in found if isinstance(r, PodsRecord)]
        return bool(pods) and predicate(pods[-1]) and (
            placeholders or not any(p.uid.startswith("kubelet:") for p in pods[-1].pods)) and (not node or any(isinstance(r, NodeRecord) for r in found))

    kube.wait_for(check)
    return found


def by_name(record: PodsRecord) -> dict:
    return {p.name: p for p in record.pods}


def test_live_placement_of_realistic_pods(world):
    kube, kubelet, source = world
    kube.add("nodes", k8s.gpu_node())
    kube.add_owner("apps/v1", "statefulsets", k8s.notebook_statefulset())
    kube.add_owner("ray.io/v1", "rayclusters", k8s.rayservice_cluster())
    add_pod(kube, kubelet, k8s.pytorchjob_worker(), "nvidia.com/gpu", [GPU[0], GPU[1]])
    add_pod(kube, kubelet, k8s.kserve_predictor(), "nvidia.com/gpu", [GPU[2]])
    add_pod(kube, kubelet, k8s.rayjob_worker(), "nvidia.com/gpu.shared", [GPU[3] + "::0"])
    add_pod(kube, kubelet, k8s.rayservice_worker(), "nvidia.com/gpu.shared", [GPU[3] + "::1"])
    add_pod(kube, kubelet, k8s.notebook_pod(), "nvidia.com/mig-1g.10gb", [MIG])
    add_pod(kube, kubelet, k8s.bare_pod(), "nvidia.com/gpu.shared", [GPU[3] + "::2"])
    add_pod(kube, kubelet, k8s.cronjob_pod(), "nvidia.com/gpu", [GPU[3] + "::3"])
    kube.add("pods", k8s.deployment_pod())  # no GPU: not in the snapshot

    known = lambda r: len(r.pods) == 7 and not any(p.uid.startswith("kubelet:") for p in r.pods)  # noqa: E731
    records = poll_until(kube, source, known, node=True)
    node = [r for r in records if isinstance(r, NodeRecord)][-1]
    assert node.labels["karpenter.sh/capacity-type"] == "on-demand" and "nvidia.com/gfd.timestamp" not in node.labels
    pods = by_name([r for r in records if isinstance(r, PodsRecord)][-1])
    owners = {name: p.owner for name, p in pods.items()}
    assert owners == {
        "llama-ft-worker-0": Owner("PyTorchJob", "llama-ft"),
        "llama-chat-predictor-6b8f7d9c4f-x2v9k": Owner("Deployment", "llama-chat-predictor"),
        "nightly-eval-raycluster-v5x6k-gpu-group-worker-8ghzq": Owner("RayJob", "nightly-eval"),
        "chat-serve-raycluster-k8q2w-gpu-group-worker-tt5mn": Owner("RayService", "chat-serve"),
        "alice-nb-0": Owner("Notebook", "alice-nb"),
        "cuda-debug": None,
        "nightly-finetune-29412360-7xk2d": Owner("CronJob", "nightly-finetune"),
    }
    assert pods["llama-ft-worker-0"].devices == (GPU[0], GPU[1])
    assert pods["alice-nb-0"].devices == (MIG,)
    shared = [name for name, p in pods.items() if p.devices == (GPU[3],)]
    assert len(shared) == 4  # four pods time-slice one GPU
    assert pods["cuda-debug"].uid == "7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d"
    # nothing changed: nothing emitted
    assert source.poll(1000.0) == []


def test_pods_come_and_go_and_labels_change(world):
    kube, kubelet, source = world
    add_pod(kube, kubelet, k8s.pytorchjob_worker(), "nvidia.com/gpu", [GPU[0]])
    poll_until(kube, source, lambda r: len(r.pods) == 1)
    add_pod(kube, kubelet, k8s.kserve_predictor(), "nvidia.com/gpu", [GPU[1]])
    poll_until(kube, source, lambda r: len(r.pods) == 2)
    relabelled = k8s.pytorchjob_worker()
    relabelled["metadata"]["labels"]["team"] = "platform"
    kube.update("pods", relabelled)
    poll_until(kube, source, lambda r: by_name(r)["llama-ft-worker-0"].labels["team"] == "platform")
    kubelet.remove_pod("research", "llama-ft-worker-0")
    kube.delete("pods", "research", "llama-ft-worker-0")
    poll_until(kube, source, lambda r: [p.name for p in r.pods] == ["llama-chat-predictor-6b8f7d9c4f-x2v9k"])
    kubelet.remove_pod("serving", "llama-chat-predictor-6b8f7d9c4f-x2v9k")
    poll_until(kube, source, lambda r: r.pods == ())


def test_faults_keep_the_last_known_state(world):
    kube, kubelet, source = world
    add_pod(kube, kubelet, k8s.pytorchjob_worker(), "nvidia.com/gpu", [GPU[0]])
    poll_until(kube, source, lambda r: len(r.pods) == 1)
    kubelet.stop()  # kubelet restarting: the socket is gone
    kube.set_down(True)  # and the API server is down
    for t in range(2000, 2005):
        assert source.poll(float(t)) == []  # the last snapshot stands; nothing raised
    # every call that found no socket: the five List calls and the allocatable refresh due at 2000
    assert source.faults.count("kubelet", "socket_missing") == 6
    assert source.faults.count("kubelet", "list_unavailable") == 0
    kube.wait_for(lambda: any(collector == "kubeapi" for collector, _ in source.faults.counts()))
    assert source.poll(2006.0) == []
    kubelet.start()
    kube.set_down(False)
    add_pod(kube, kubelet, k8s.kserve_predictor(), "nvidia.com/gpu", [GPU[1]])
    poll_until(kube, source, lambda r: len(r.pods) == 2, start=3000.0)


def test_a_pod_the_api_server_has_not_told_us_of_is_kept_under_a_placeholder(world):
    kube, kubelet, source = world
    kube.add("pods", k8s.pytorchjob_worker())
    kubelet.set_pod("research", "llama-ft-worker-0", [("pytorch", [("nvidia.com/gpu", [GPU[0]])])])
    kubelet.set_pod("research", "static-probe", [("probe", [("nvidia.com/gpu", [GPU[1]])])])
    records = poll_until(kube, source, lambda r: len(r.pods) == 2 and r.pods[0].owner is not None, placeholders=True)
    pods = by_name([r for r in records if isinstance(r, PodsRecord)][-1])
    assert pods["static-probe"].uid == "kubelet:research/static-probe" and pods["static-probe"].labels == {}
    assert source.faults.count("placement", "pod_missing_from_api") >= 1


def test_gke_style_ids_resolve_once_the_devices_are_known(world):
    kube, kubelet, source = world
    add_pod(kube, kubelet, k8s.notebook_pod(), "nvidia.com/gpu", ["nvidia1/gi2/vgpu0"])
    kubelet.set_allocatable([("nvidia.com/gpu", ["nvidia1/gi2/vgpu0", "nvidia1/gi2/vgpu1"])])
    poll_until(kube, source, lambda r: len(r.pods) == 1 and r.pods[0].devices == ())
    assert source.faults.count("placement", "device_id_unresolved") >= 1
    assert source.allocatable.devices == {"nvidia.com/gpu": ("nvidia1/gi2/vgpu0", "nvidia1/gi2/vgpu1")}
    source.set_devices(
        DevicesRecord(0, k8s.NODE, (Device(GPU[0], A100, index=0), Device(GPU[1], A100, index=1),
                                     Device(MIG, A100, parent_uuid=GPU[1], mig_profile="3g.20gb"))),
        gpu_instance_ids={MIG: 2},
    )
    poll_until(kube, source, lambda r: r.pods[0].devices == (MIG,), start=500.0)


def test_without_the_api_server_the_first_snapshot_waits_then_uses_placeholders():
    with FakeKubelet() as kubelet:
        faults = FaultCounter()
        pods = pod_informer(KubeClient("http://127.0.0.1:9"), k8s.NODE, faults, FAST).start()
        kubelet.set_pod("research", "llama-ft-worker-0", [("pytorch", [("nvidia.com/gpu", [GPU[0]])])])
        source = PlacementSource(k8s.NODE, PodResourcesClient(kubelet.socket_path, faults=faults), pods,
                                 api_wait_s=30, faults=faults)
        try:
            assert source.poll(0.0) == []  # waiting for the API server's first list
            assert source.poll(29.0) == []
            [record] = source.poll(30.0)
            assert record.pods[0].uid == "kubelet:research/llama-ft-worker-0"
        finally:
            source.close()


def test_pods_are_rebuilt_only_on_change_or_every_rebuild_interval(world):
    """Each rebuild counts the unresolvable device id once: the count says how often the
    pods were rebuilt. Unchanged answers rebuild nothing until ``rebuild_every_s``."""
    kube, kubelet, source = world
    add_pod(kube, kubelet, k8s.pytorchjob_worker(), "nvidia.com/gpu", ["nvidia9"])
    poll_until(kube, source, lambda r: len(r.pods) == 1)
    faults = source.faults

    def rebuilds() -> int:
        return faults.count("placement", "device_id_unresolved")

    start = rebuilds()
    assert start >= 1
    for t in range(500, 505):  # five polls, nothing changed
        source.poll(float(t))
    assert rebuilds() - start == 1  # the first of them only: 500 s is past rebuild_every_s
    settled = rebuilds()
    for t in range(505, 510):
        source.poll(float(t))
    assert rebuilds() == settled
    source.poll(540.0)  # rebuild_every_s (30 s) since the last rebuild
    assert rebuilds() == settled + 1
    add_pod(kube, kubelet, k8s.kserve_predictor(), "nvidia.com/gpu", [GPU[1]])
    poll_until(kube, source, lambda r: len(r.pods) == 2, start=541.0)
    assert rebuilds() > settled + 1  # the change rebuilt at once
