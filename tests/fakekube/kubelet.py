"""A real gRPC server on a unix socket implementing the kubelet's v1 PodResourcesLister.

Tests set what it serves (pods with their containers' devices, the allocatable devices)
and change it while clients poll, as pods come and go on a node.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from collectors.kubelet import api_pb2, api_pb2_grpc

# (container name, [(resource name, [device ids])])
ContainerSpec = tuple[str, list[tuple[str, list[str]]]]


@dataclass
class KubeletState:
    pods: dict[tuple[str, str], list[ContainerSpec]] = field(default_factory=dict)
    allocatable: list[tuple[str, list[str]]] = field(default_factory=list)
    allocatable_implemented: bool = True
    calls: int = 0


class _Servicer(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, state: KubeletState, lock: threading.Lock) -> None:
        self.state = state
        self.lock = lock

    def List(self, request, context):  # noqa: N802 - gRPC method name
        with self.lock:
            self.state.calls += 1
            return api_pb2.ListPodResourcesResponse(pod_resources=[
                api_pb2.PodResources(namespace=ns, name=name, containers=[
                    api_pb2.ContainerResources(name=cname, cpu_ids=[2, 3], devices=[
                        api_pb2.ContainerDevices(
                            resource_name=res, device_ids=ids,
                            topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=0)]))
                        for res, ids in devices
                    ])
                    for cname, devices in containers
                ])
                for (ns, name), containers in self.state.pods.items()
            ])

    def GetAllocatableResources(self, request, context):  # noqa: N802
        with self.lock:
            if not self.state.allocatable_implemented:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetAllocatableResources disabled by feature gate")
            return api_pb2.AllocatableResourcesResponse(
                cpu_ids=list(range(8)),
                devices=[api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in self.state.allocatable],
            )

    def Get(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by the fake")


class FakeKubelet:
    """Serves PodResourcesLister on ``<tmpdir>/kubelet.sock``; ``restart()`` recreates it."""

    def __init__(self, socket_path: str | None = None) -> None:
        # unix socket paths are limited to 107 bytes, so keep it short, not in pytest's tmp_path
        self._dir = None if socket_path else tempfile.mkdtemp(prefix="kl")
        self.socket_path = socket_path or os.path.join(self._dir, "kubelet.sock")
        self.state = KubeletState()
        self.lock = threading.Lock()
        self._server: grpc.Server | None = None

    def start(self) -> "FakeKubelet":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Servicer(self.state, self.lock), server)
        server.add_insecure_port("unix://" + self.socket_path)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop serving and remove the socket, as a kubelet restart does."""
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "FakeKubelet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    def set_pod(self, namespace: str, name: str, containers: list[ContainerSpec]) -> None:
        with self.lock:
            self.state.pods[(namespace, name)] = containers

    def remove_pod(self, namespace: str, name: str) -> None:
        with self.lock:
            self.state.pods.pop((namespace, name), None)

    def set_allocatable(self, allocatable: list[tuple[str, list[str]]], implemented: bool = True) -> None:
        with self.lock:
            self.state.allocatable = allocatable
            self.state.allocatable_implemented = implemented
