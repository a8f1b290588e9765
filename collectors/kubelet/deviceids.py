"""Turning the device ids the kubelet reports into the GPU and MIG UUIDs of the trace.

Device plugins name devices in their own ways, and the kubelet passes their ids on:

* NVIDIA's device plugin (``deviceIDStrategy: uuid``, the default): ``GPU-…`` and
  ``MIG-…``; with time-slicing or MPS each replica is ``GPU-…::N``.
* NVIDIA's device plugin with ``deviceIDStrategy: index`` (Bottlerocket's default):
  ``0``, ``1``, … for GPUs (the NVML index) and ``0:1`` for MIG device 1 of GPU 0.
* GKE's device plugin: ``nvidia0`` (GPU with minor number 0), ``nvidia0/gi2`` (the MIG
  slice that is GPU instance 2 of that GPU), and ``…/vgpuN`` for its time-shared replicas.

UUID forms need nothing else. The others are looked up in a :class:`DeviceInventory`
made from the node's ``devices`` record, which knows each GPU's index (its minor number
defaults to the index) and, when the NVML collector supplies them, each MIG slice's GPU
instance id and MIG index. Everything here is pure, so it is tested without a kubelet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from collectors.records import DevicesRecord

_REPLICA = re.compile(r"::\d+$")
_GKE = re.compile(r"^nvidia(\d+)(?:/gi(\d+))?(?:/vgpu\d+)?$")
_INDEX = re.compile(r"^(\d+)(?::(\d+))?$")
_LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/(\d+)/(\d+)$")


@dataclass(frozen=True)
class DeviceInventory:
    """What is needed to resolve index-style and GKE-style device ids to UUIDs.

    ``gpu_by_index`` and ``gpu_by_minor`` map a physical GPU's NVML index and device
    minor number (``/dev/nvidiaN``) to its UUID; ``mig_by_instance`` maps (parent GPU
    UUID, GPU instance id) and ``mig_by_index`` (parent GPU UUID, MIG device index) to
    a MIG slice's UUID.
    """

    gpu_by_index: Mapping[int, str] = field(default_factory=dict)
    gpu_by_minor: Mapping[int, str] = field(default_factory=dict)
    mig_by_instance: Mapping[tuple[str, int], str] = field(default_factory=dict)
    mig_by_index: Mapping[tuple[str, int], str] = field(default_factory=dict)

    @classmethod
    def from_devices(
        cls,
        record: DevicesRecord,
        minor_numbers: Mapping[str, int] | None = None,
        gpu_instance_ids: Mapping[str, int] | None = None,
    ) -> "DeviceInventory":
        """Build the inventory from a ``devices`` record.

        A GPU's minor number is taken from ``minor_numbers`` (UUID -> minor) and
        defaults to its NVML index, which is what it is on the nodes we know of. MIG
        slices are found by GPU instance id only when ``gpu_instance_ids`` (MIG UUID ->
        GI id, from ``nvmlDeviceGetGpuInstanceId``) or a legacy
        ``MIG-GPU-…/gi/ci`` UUID says it; their MIG index is their order among their
        parent's slices in the record, as NVML enumerates them.
        """
        minor_numbers = minor_numbers or {}
        gpu_instance_ids = gpu_instance_ids or {}
        by_index: dict[int, str] = {}
        by_minor: dict[int, str] = {}
        by_instance: dict[tuple[str, int], str] = {}
        by_mig_index: dict[tuple[str, int], str] = {}
        for device in record.devices:
            if device.parent_uuid is None:
                if device.index is not None:
                    by_index[device.index] = device.uuid
                minor = minor_numbers.get(device.uuid, device.index)
                if minor is not None:
                    by_minor[minor] = device.uuid
                continue
            siblings = sum(1 for key in by_mig_index if key[0] == device.parent_uuid)
            by_mig_index[(device.parent_uuid, siblings)] = device.uuid
            gi = gpu_instance_ids.get(device.uuid)
            legacy = _LEGACY_MIG.match(device.uuid)
            if gi is None and legacy:
                gi = int(legacy.group(2))
            if gi is not None:
                by_instance[(device.parent_uuid, gi)] = device.uuid
        return cls(by_index, by_minor, by_instance, by_mig_index)


def is_uuid(device_id: str) -> bool:
    return device_id.startswith(("GPU-", "MIG-"))


def resolve(device_id: str, inventory: DeviceInventory | None) -> str | None:
    """The GPU or MIG UUID a kubelet device id stands for, or None if it cannot be known.

    Replica suffixes (``::N``, ``/vgpuN``) are dropped: every replica of a GPU is that
    GPU, and a GPU listed by several pods is shared.
    """
    device_id = _REPLICA.sub("", device_id.strip())
    if is_uuid(device_id):
        return device_id
    if inventory is None:
        return None
    gke = _GKE.match(device_id)
    if gke:
        gpu = inventory.gpu_by_minor.get(int(gke.group(1)))
        if gpu is None or gke.group(2) is None:
            return gpu
        return inventory.mig_by_instance.get((gpu, int(gke.group(2))))
    index = _INDEX.match(device_id)
    if index:
        gpu = inventory.gpu_by_index.get(int(index.group(1)))
        if gpu is None or index.group(2) is None:
            return gpu
        return inventory.mig_by_index.get((gpu, int(index.group(2))))
    return None


def resolve_all(device_ids: Iterable[str], inventory: DeviceInventory | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(resolved UUIDs, each once and in order; ids that could not be resolved)."""
    resolved: dict[str, None] = {}
    unresolved: list[str] = []
    for device_id in device_ids:
        uuid = resolve(device_id, inventory)
        if uuid is None:
            unresolved.append(device_id)
        else:
            resolved[uuid] = None
    return tuple(resolved), tuple(unresolved)
