"""The kubelet client's own HTTP/2 call, against grpcio's real server (FakeKubelet) and against
sockets that misbehave in the ways a restarting kubelet does."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

import pytest

from collectors.kubelet import api_pb2
from collectors.kubelet.unary import RpcError, call
from tests.fakekube.kubelet import FakeKubelet

LIST = "/v1.PodResourcesLister/List"


@pytest.fixture
def kubelet():
    with FakeKubelet() as server:
        yield server


def listed(kubelet: FakeKubelet, **kwargs) -> api_pb2.ListPodResourcesResponse:
    answer = api_pb2.ListPodResourcesResponse()
    answer.ParseFromString(call(kubelet.socket_path, LIST, api_pb2.ListPodResourcesRequest().SerializeToString(),
                                **kwargs))
    return answer


def test_an_answer_far_above_the_default_window_arrives_whole(kubelet):
    """5,000 pods are about 300 KB, over four times HTTP/2's default 64 KiB window (a client
    that did not open it would wait for ever) and many frames: every pod comes back."""
    for i in range(5000):
        kubelet.set_pod("ns", f"pod-{i:04d}", [("c", [("nvidia.com/gpu", [f"GPU-{i % 8}::{i}"])])])
    answer = listed(kubelet)
    assert answer.ByteSize() > 4 * 65535
    assert sorted(p.name for p in answer.pod_resources) == [f"pod-{i:04d}" for i in range(5000)]
    assert {p.containers[0].devices[0].device_ids[0] for p in answer.pod_resources} == {
        f"GPU-{i % 8}::{i}" for i in range(5000)}


def test_an_answer_above_the_limit_is_refused(kubelet):
    for i in range(50):
        kubelet.set_pod("ns", f"pod-{i}", [("c", [("nvidia.com/gpu", [f"GPU-{i}"])])])
    assert listed(kubelet, max_message=1 << 20).pod_resources  # under the limit: answered
    with pytest.raises(RpcError) as err:
        listed(kubelet, max_message=100)
    assert err.value.code == "resource_exhausted"


def test_a_status_from_the_server_is_its_name_and_message(kubelet):
    """FakeKubelet answers Get with UNIMPLEMENTED and a message (a trailers-only answer)."""
    with pytest.raises(RpcError) as err:
        call(kubelet.socket_path, "/v1.PodResourcesLister/Get", b"")
    assert err.value.code == "unimplemented" and err.value.details == "not served by the fake"
    with pytest.raises(RpcError) as err:
        call(kubelet.socket_path, "/v1.PodResourcesLister/NoSuchMethod", b"")
    assert err.value.code == "unimplemented"


def silent_server(behaviour: str):
    """A unix socket that accepts and then either never answers or closes at once."""
    folder = tempfile.mkdtemp(prefix="ku")
    path = os.path.join(folder, "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            if behaviour == "garbage":  # a HEADERS frame of stream 1 whose block is not HPACK
                conn.sendall(b"\x00\x00\x04\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff")
                held.append(conn)
            elif behaviour == "close":
                conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty SETTINGS, then gone
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    return path, server, held


def test_a_server_that_never_answers_is_a_deadline():
    path, server, held = silent_server("hang")
    try:
        started = time.monotonic()
        with pytest.raises(RpcError) as err:
            call(path, LIST, b"", timeout_s=0.3)
        assert err.value.code == "deadline_exceeded"
        assert 0.25 < time.monotonic() - started < 3
    finally:
        server.close()
        for c in held:
            c.close()


def test_a_connection_closed_mid_answer_and_a_missing_socket_are_unavailable(tmp_path):
    path, server, _ = silent_server("close")
    try:
        with pytest.raises(RpcError) as err:
            call(path, LIST, b"", timeout_s=2)
        assert err.value.code == "unavailable"
    finally:
        server.close()
    with pytest.raises(RpcError) as err:
        call(str(tmp_path / "nobody.sock"), LIST, b"")
    assert err.value.code == "unavailable"


def test_an_answer_that_is_not_http2_is_an_internal_error():
    path, server, held = silent_server("garbage")
    try:
        with pytest.raises(RpcError) as err:
            call(path, LIST, b"", timeout_s=2)
        assert err.value.code == "internal" and "malformed" in err.value.details
    finally:
        server.close()
        for c in held:
            c.close()
