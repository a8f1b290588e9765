"""Which extended resources count as GPUs, and what the kubelet says each pod holds.

Frozen records of one ``List`` answer, already narrowed to the GPU resources, so the
placement code and the tests work on plain values rather than protobuf messages.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RESOURCES = ("nvidia.com/gpu", "nvidia.com/gpu.shared")
DEFAULT_PREFIXES = ("nvidia.com/mig-",)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"  # the kubelet pod-resources API


@dataclass(frozen=True)
class GpuResources:
    """Resource names that are GPUs: exact names (``nvidia.com/gpu``, a renamed
    time-sliced ``nvidia.com/gpu.shared``) and prefixes (``nvidia.com/mig-`` for the
    mixed MIG strategy's ``nvidia.com/mig-3g.20gb`` and the like)."""

    names: tuple[str, ...] = DEFAULT_RESOURCES
    prefixes: tuple[str, ...] = DEFAULT_PREFIXES

    def __contains__(self, resource: str) -> bool:
        return resource in self.names or resource.startswith(self.prefixes)


@dataclass(frozen=True)
class ContainerAssignment:
    """The device ids of GPU resources one container was given, in the kubelet's order."""

    name: str
    device_ids: tuple[str, ...]
    resources: tuple[str, ...]


@dataclass(frozen=True)
class PodAssignment:
    """A pod (by namespace and name: the kubelet API has no UID) holding GPU devices."""

    namespace: str
    name: str
    containers: tuple[ContainerAssignment, ...]


@dataclass(frozen=True)
class Allocatable:
    """The GPU device ids the kubelet can hand out, by resource name."""

    devices: dict[str, tuple[str, ...]]
