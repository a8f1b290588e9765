"""A client for the kubelet's pod-resources API (v1) over its unix socket.

``List`` says which container holds which device ids; ``GetAllocatableResources`` says
which device ids exist. The client narrows both to the GPU resources, turns faults
(socket gone while the kubelet restarts, deadline, an old kubelet without
``GetAllocatableResources``) into counted faults and ``None``, and dials again on the
next call, so a caller polling once a second never sees an exception.

Each call is one short HTTP/2 connection (:mod:`collectors.kubelet.unary`), not grpcio:
the same answers at about half the CPU a call, without grpcio's threads and memory.
"""

from __future__ import annotations

import os
import threading

from collectors.kubelet import api_pb2
from collectors.kubelet.unary import RpcError, call
from collectors.faults import FAULTS, FaultCounter
from collectors.kubelet.resources import (
    DEFAULT_SOCKET,
    Allocatable,
    ContainerAssignment,
    GpuResources,
    PodAssignment,
)

# The kubelet refuses messages above 16 MiB; a node with 110 pods answers in a few KiB.
_MAX_MESSAGE = 16 << 20

COLLECTOR = "kubelet"
SERVICE = "/v1.PodResourcesLister/"


def assignments_from_response(
    response: api_pb2.ListPodResourcesResponse, resources: GpuResources
) -> tuple[PodAssignment, ...]:
    """The pods of a ``List`` answer that hold GPU resources, with only those devices."""
    pods = []
    for pod in response.pod_resources:
        containers = []
        for container in pod.containers:
            ids: list[str] = []
            names: list[str] = []
            for devices in container.devices:
                if devices.resource_name in resources:
                    ids.extend(devices.device_ids)
                    names.append(devices.resource_name)
            if ids:
                containers.append(ContainerAssignment(container.name, tuple(ids), tuple(dict.fromkeys(names))))
        if containers:
            pods.append(PodAssignment(pod.namespace, pod.name, tuple(containers)))
    return tuple(pods)


def allocatable_from_response(
    response: api_pb2.AllocatableResourcesResponse, resources: GpuResources
) -> Allocatable:
    by_resource: dict[str, list[str]] = {}
    for devices in response.devices:
        if devices.resource_name in resources:
            by_resource.setdefault(devices.resource_name, []).extend(devices.device_ids)
    return Allocatable({k: tuple(v) for k, v in sorted(by_resource.items())})


class PodResourcesClient:
    """Calls ``List`` and ``GetAllocatableResources`` on the kubelet's socket."""

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        resources: GpuResources = GpuResources(),
        timeout_s: float = 5.0,
        faults: FaultCounter | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.resources = resources
        self.timeout_s = timeout_s
        self.faults = faults or FAULTS
        self._lock = threading.Lock()  # one call at a time, as the poller and a scrape may both ask
        # the last List answer's bytes and what they said: pods change rarely, and turning an
        # answer into assignments costs more than asking (0.19 ms against 0.25 ms for 50 pods)
        self._last_list: tuple[bytes, tuple[PodAssignment, ...]] | None = None

    def _call(self, call_name: str, method: str, request) -> bytes | None:
        """The kubelet's answer to ``method``, serialized, or None (the fault counted)."""
        if not os.path.exists(self.socket_path):
            self.faults.record(COLLECTOR, "socket_missing", self.socket_path)
            return None
        with self._lock:
            try:
                return call(self.socket_path, SERVICE + method, request.SerializeToString(), self.timeout_s,
                            _MAX_MESSAGE)
            except RpcError as err:
                self.faults.record(COLLECTOR, f"{call_name}_{err.code}", err.details)
                return None

    def _parse(self, call_name: str, data: bytes, answer):
        """``answer`` parsed from ``data``, or None (a damaged answer, counted)."""
        response = answer()
        try:
            response.ParseFromString(data)
        except Exception as err:  # noqa: BLE001 - protobuf's DecodeError: a damaged answer
            self.faults.record(COLLECTOR, f"{call_name}_internal", f"cannot parse the answer: {err}")
            return None
        return response

    def list(self) -> tuple[PodAssignment, ...] | None:
        """The pods holding GPU devices now, or None when the kubelet cannot be asked."""
        data = self._call("list", "List", api_pb2.ListPodResourcesRequest())
        if data is None:
            return None
        last = self._last_list
        if last is not None and last[0] == data:  # the same bytes say the same thing
            return last[1]
        response = self._parse("list", data, api_pb2.ListPodResourcesResponse)
        if response is None:
            return None
        pods = assignments_from_response(response, self.resources)
        self._last_list = (data, pods)
        return pods

    def allocatable(self) -> Allocatable | None:
        """The GPU device ids the kubelet can allocate, or None when it cannot be asked."""
        data = self._call("allocatable", "GetAllocatableResources", api_pb2.AllocatableResourcesRequest())
        response = None if data is None else self._parse("allocatable", data, api_pb2.AllocatableResourcesResponse)
        return None if response is None else allocatable_from_response(response, self.resources)

    def close(self) -> None:
        """Nothing to release: each call's connection is closed when it ends."""
