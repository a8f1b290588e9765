"""The pod-resources client against a real gRPC server on a unix socket, and device ids."""

from __future__ import annotations

import logging

import pytest

from collectors.faults import FaultCounter
from collectors.kubelet.client import PodResourcesClient
from collectors.kubelet.deviceids import DeviceInventory, resolve, resolve_all
from collectors.kubelet.resources import ContainerAssignment, GpuResources, PodAssignment
from collectors.records import Device, DevicesRecord
from tests.fakekube.kubelet import FakeKubelet

GPU0 = "GPU-5f1c2a3b-0000-4000-8000-000000000000"
GPU1 = "GPU-5f1c2a3b-0000-4000-8000-000000000001"
GPU2 = "GPU-5f1c2a3b-0000-4000-8000-000000000002"
MIG_A = "MIG-9a2b0000-1111-4222-8333-000000000001"
MIG_B = "MIG-9a2b0000-1111-4222-8333-000000000002"

A100 = "NVIDIA A100-SXM4-40GB"
DEVICES = DevicesRecord(0.0, "gpu-node-1", (
    Device(GPU0, A100, index=0), Device(GPU1, A100, index=1), Device(GPU2, A100, index=2),
    Device(MIG_A, A100, parent_uuid=GPU2, mig_profile="3g.20gb"),
    Device(MIG_B, A100, parent_uuid=GPU2, mig_profile="1g.5gb"),
))


def make_client(*args, **kwargs) -> PodResourcesClient:
    """A client with its own fault counter, so tests do not see each other's faults."""
    kwargs.setdefault("faults", FaultCounter())
    return PodResourcesClient(*args, **kwargs)


@pytest.fixture
def kubelet():
    with FakeKubelet() as server:
        yield server


def test_lists_exclusive_mig_and_shared_devices(kubelet):
    kubelet.set_pod("research", "llama-ft-worker-0", [("pytorch", [("nvidia.com/gpu", [GPU0, GPU1])])])
    kubelet.set_pod("kubeflow-alice", "alice-nb-0", [("alice-nb", [("nvidia.com/mig-3g.20gb", [MIG_A])])])
    kubelet.set_pod("sandbox", "cuda-debug", [
        ("init", []),
        ("cuda-debug", [("nvidia.com/gpu.shared", [GPU2 + "::3"]), ("example.com/nic", ["eth1"])]),
    ])
    kubelet.set_pod("kube-system", "coredns-abc", [("coredns", [])])
    client = make_client(kubelet.socket_path)
    pods = {(p.namespace, p.name): p for p in client.list()}
    assert set(pods) == {("research", "llama-ft-worker-0"), ("kubeflow-alice", "alice-nb-0"), ("sandbox", "cuda-debug")}
    assert pods[("research", "llama-ft-worker-0")].containers == (
        ContainerAssignment("pytorch", (GPU0, GPU1), ("nvidia.com/gpu",)),)
    assert pods[("kubeflow-alice", "alice-nb-0")].containers[0].device_ids == (MIG_A,)
    assert pods[("sandbox", "cuda-debug")].containers == (
        ContainerAssignment("cuda-debug", (GPU2 + "::3",), ("nvidia.com/gpu.shared",)),)
    client.close()


def test_configurable_resources(kubelet):
    kubelet.set_pod("a", "p", [("c", [("amd.com/gpu", ["0000:03:00.0"]), ("nvidia.com/gpu", [GPU0])])])
    only_amd = make_client(kubelet.socket_path, GpuResources(names=("amd.com/gpu",), prefixes=()))
    assert only_amd.list()[0].containers[0].device_ids == ("0000:03:00.0",)


def test_pods_come_and_go(kubelet):
    client = make_client(kubelet.socket_path)
    assert client.list() == ()
    kubelet.set_pod("a", "p1", [("c", [("nvidia.com/gpu", [GPU0])])])
    assert [p.name for p in client.list()] == ["p1"]
    kubelet.set_pod("a", "p2", [("c", [("nvidia.com/gpu", [GPU1])])])
    assert sorted(p.name for p in client.list()) == ["p1", "p2"]
    kubelet.remove_pod("a", "p1")
    assert [p.name for p in client.list()] == ["p2"]


def test_allocatable_and_an_old_kubelet_without_it(kubelet, caplog):
    kubelet.set_allocatable([("nvidia.com/gpu.shared", [GPU0 + "::0", GPU0 + "::1"]), ("cpu-ish", ["x"])])
    client = make_client(kubelet.socket_path)
    assert client.allocatable().devices == {"nvidia.com/gpu.shared": (GPU0 + "::0", GPU0 + "::1")}
    kubelet.set_allocatable([], implemented=False)
    with caplog.at_level(logging.WARNING):
        assert client.allocatable() is None
        assert client.allocatable() is None
    assert client.faults.count("kubelet", "allocatable_unimplemented") == 2
    assert sum("allocatable_unimplemented" in r.message for r in caplog.records) == 1
    assert client.list() == ()  # the channel is still good


def test_kubelet_restart_and_socket_gone_are_survived(kubelet, caplog):
    kubelet.set_pod("a", "p1", [("c", [("nvidia.com/gpu", [GPU0])])])
    client = make_client(kubelet.socket_path, timeout_s=2)
    assert len(client.list()) == 1
    kubelet.stop()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert client.list() is None
    faults = client.faults.counts()
    assert sum(faults.values()) == 3
    assert len([r for r in caplog.records if "are counted, not logged" in r.message]) == len(faults)
    kubelet.start()
    assert len(client.list()) == 1


def test_missing_socket_from_the_start():
    client = make_client("/nonexistent/kubelet.sock")
    assert client.list() is None and client.allocatable() is None
    assert client.faults.count("kubelet", "socket_missing") == 2


# --------------------------------------------------------------------------- device ids


INVENTORY = DeviceInventory.from_devices(DEVICES, gpu_instance_ids={MIG_A: 1, MIG_B: 13})


@pytest.mark.parametrize(
    ("device_id", "uuid"),
    [
        (GPU0, GPU0),
        (MIG_A, MIG_A),
        (GPU1 + "::7", GPU1),  # NVIDIA time-slicing / MPS replica
        ("MIG-GPU-5f1c2a3b-0000-4000-8000-000000000002/1/0", "MIG-GPU-5f1c2a3b-0000-4000-8000-000000000002/1/0"),
        ("nvidia0", GPU0),  # GKE
        ("nvidia1/vgpu3", GPU1),  # GKE time-sharing
        ("nvidia2/gi1", MIG_A),  # GKE MIG
        ("nvidia2/gi13/vgpu0", MIG_B),  # GKE MIG, time-shared
        ("nvidia2/gi5", None),  # no such GPU instance
        ("nvidia9", None),
        ("1", GPU1),  # deviceIDStrategy=index
        ("2:1", MIG_B),  # MIG device 1 of GPU 2
        ("bogus", None),
    ],
)
def test_resolve(device_id, uuid):
    assert resolve(device_id, INVENTORY) == uuid


def test_non_uuid_ids_need_the_inventory_and_legacy_mig_uuids_carry_their_instance():
    assert resolve("nvidia0", None) is None
    legacy = "MIG-GPU-5f1c2a3b-0000-4000-8000-000000000002/7/0"
    inventory = DeviceInventory.from_devices(DevicesRecord(0, "n", (
        Device(GPU2, A100, index=0), Device(legacy, A100, parent_uuid=GPU2, mig_profile="1g.5gb"))))
    assert resolve("nvidia0/gi7", inventory) == legacy
    minors = DeviceInventory.from_devices(DEVICES, minor_numbers={GPU0: 4})
    assert resolve("nvidia4", minors) == GPU0


def test_resolve_all_deduplicates_replicas_of_one_gpu():
    assert resolve_all([GPU0 + "::0", GPU0 + "::1", "nvidia7", GPU1], INVENTORY) == ((GPU0, GPU1), ("nvidia7",))


def test_assignment_records_are_values():
    a = PodAssignment("ns", "p", (ContainerAssignment("c", (GPU0,), ("nvidia.com/gpu",)),))
    assert a == PodAssignment("ns", "p", (ContainerAssignment("c", (GPU0,), ("nvidia.com/gpu",)),))


def test_an_unchanged_answer_is_not_parsed_again_and_a_changed_one_is(kubelet):
    """The same bytes from the kubelet give the very assignments of the last answer (nothing is
    parsed); a pod that comes or goes changes the bytes and is seen at once."""
    kubelet.set_pod("research", "train-0", [("pytorch", [("nvidia.com/gpu", [GPU0])])])
    client = make_client(kubelet.socket_path)
    first = client.list()
    assert client.list() is first
    kubelet.set_pod("research", "train-1", [("pytorch", [("nvidia.com/gpu", [GPU1])])])
    second = client.list()
    assert {p.name for p in second} == {"train-0", "train-1"} and second is not first
    kubelet.remove_pod("research", "train-1")
    assert client.list() == first
