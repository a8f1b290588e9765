"""A client for the kubelet's pod-resources API (v1) over its unix socket.

``List`` says which container holds which device ids; ``GetAllocatableResources`` says
which device ids exist. The client narrows both to the GPU resources, turns faults
(socket gone while the kubelet restarts, deadline, an old kubelet without
``GetAllocatableResources``) into counted faults and ``None``, and reconnects on the
next call, so a caller polling once a second never sees an exception.
"""

from __future__ import annotations

import os
import threading

import grpc

from collectors.kubelet import api_pb2, api_pb2_grpc
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
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None

    def _connect(self) -> api_pb2_grpc.PodResourcesListerStub | None:
        if self._stub is not None:
            return self._stub
        if not os.path.exists(self.socket_path):
            self.faults.record(COLLECTOR, "socket_missing", self.socket_path)
            return None
        self._channel = grpc.insecure_channel(
            "unix://" + os.path.abspath(self.socket_path),
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE)],
        )
        self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    def _drop(self) -> None:
        """Forget the channel so the next call dials the (maybe recreated) socket again."""
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None

    def list(self) -> tuple[PodAssignment, ...] | None:
        """The pods holding GPU devices now, or None when the kubelet cannot be asked."""
        with self._lock:
            stub = self._connect()
            if stub is None:
                return None
            try:
                response = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
            except grpc.RpcError as err:
                self._rpc_fault("list", err)
                return None
        return assignments_from_response(response, self.resources)

    def allocatable(self) -> Allocatable | None:
        """The GPU device ids the kubelet can allocate, or None when it cannot be asked."""
        with self._lock:
            stub = self._connect()
            if stub is None:
                return None
            try:
                response = stub.GetAllocatableResources(
                    api_pb2.AllocatableResourcesRequest(), timeout=self.timeout_s
                )
            except grpc.RpcError as err:
                self._rpc_fault("allocatable", err)
                return None
        return allocatable_from_response(response, self.resources)

    def _rpc_fault(self, call: str, err: grpc.RpcError) -> None:
        code = err.code() if hasattr(err, "code") else None
        name = code.name.lower() if code is not None else "error"
        details = err.details() if hasattr(err, "details") else str(err)
        self.faults.record(COLLECTOR, f"{call}_{name}", details)
        if code != grpc.StatusCode.UNIMPLEMENTED:
            self._drop()

    def close(self) -> None:
        with self._lock:
            self._drop()
