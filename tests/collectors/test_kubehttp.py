"""The agent's own Kubernetes client (collectors/kubehttp.py) against the fake API server,
over HTTP and HTTPS: queries, errors, token rotation, TLS verification, watch lines cut
across chunks, kubeconfig loading, and that a pod's placement stack never imports the
``kubernetes`` package."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import urllib3

from collectors.faults import FaultCounter
from collectors.kubeapi import WatchSettings, api_client_from_environment, pod_informer
from collectors.kubehttp import ConfigError, KubeClient, KubeError, bearer_from_file, iter_lines, release
from tests.fakekube import FakeKube
from tests.fakekube import objects as k8s
from tests.fakekube.tls import CLIENT_NAME, SERVER_NAME, TlsFiles, make_tls

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    # cryptography comes with the kubernetes package (google-auth requires it): never skipped
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def kube():
    with FakeKube() as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ServiceAccount:
    """A service account volume as the kubelet projects it: ``token`` and ``ca.crt`` are
    symlinks into ``..data``, itself a symlink to a timestamped directory, swapped
    atomically when the token is rotated."""

    def __init__(self, root: Path, ca_file: str, token: str) -> None:
        self.root = root
        self.ca = Path(ca_file).read_bytes()
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)
        self.rotate(token)
        for name in ("token", "ca.crt", "namespace"):
            os.symlink(f"..data/{name}", root / name)

    def rotate(self, token: str) -> None:
        self.generation += 1
        data = self.root / f"..2026_11_24_10_00_{self.generation:02d}.000000001"
        data.mkdir()
        (data / "token").write_text(token)
        (data / "ca.crt").write_bytes(self.ca)
        (data / "namespace").write_text("gpuledger")
        tmp = self.root / "..data_tmp"
        os.symlink(data.name, tmp)
        os.replace(tmp, self.root / "..data")


def env_for(kube: FakeKube, host: str = "127.0.0.1") -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(kube.port)}


# --------------------------------------------------------------------------- requests


def test_get_sends_the_query_as_the_api_server_reads_it(kube):
    kube.add("pods", k8s.pytorchjob_worker())
    kube.add("pods", k8s.on_node(k8s.deployment_pod(), "gpu-node-2"))
    client = kube.client()
    body = client.get_json("/api/v1/pods", {"fieldSelector": f"spec.nodeName={k8s.NODE}",
                                            "labelSelector": "team in (ml-research, vision)",
                                            "resourceVersion": None, "allowWatchBookmarks": False})
    assert [p["metadata"]["name"] for p in body["items"]] == ["llama-ft-worker-0"]
    [call] = kube.calls
    assert call.path == "/api/v1/pods"
    assert call.query == {"fieldSelector": [f"spec.nodeName={k8s.NODE}"],
                          "labelSelector": ["team in (ml-research, vision)"], "allowWatchBookmarks": ["false"]}
    assert call.authorization is None  # no credentials configured, none sent


@pytest.mark.parametrize("code, reason", [(403, "Forbidden"), (404, "Not Found"), (500, "Internal Server Error")])
def test_errors_carry_the_status_reason_and_the_servers_message(kube, code, reason):
    client = kube.client()
    kube.fail_next(1, code)
    with pytest.raises(KubeError) as caught:
        client.get("/api/v1/pods")
    err = caught.value
    assert (err.status, err.reason, err.message) == (code, reason, f"injected failure {code}")
    assert str(err) == f"HTTP {code} {reason}: injected failure {code}"
    assert client.get_json("/api/v1/pods")["kind"] == "PodList"  # the connection is usable again


def test_an_unknown_path_is_a_404_and_a_streamed_error_is_raised_too(kube):
    client = kube.client()
    with pytest.raises(KubeError) as caught:
        client.get("/apis/apps/v1/namespaces/x/statefulsets/nope", stream=True)
    assert caught.value.status == 404 and "not found" in caught.value.message


def test_nothing_listening_raises_urllib3s_error_at_once():
    start = time.monotonic()
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        KubeClient("http://127.0.0.1:9").get("/api/v1/pods")  # retries are off
    assert time.monotonic() - start < 2


# --------------------------------------------------------------------------- watch lines


def test_watch_lines_are_joined_across_chunk_boundaries(kube):
    chunks = [b'{"a":', b'1}\n{"b":2}\n{"c"', b':3}', b"\n\n", b'{"d":', b"4", b"}\n", b'{"e":5}']
    kube.raw_chunks["/raw"] = chunks
    client = kube.client()
    resp = client.get("/raw", stream=True)
    assert list(resp.stream(None)) == chunks  # the chunks arrive cut as they were sent
    release(resp)
    resp = client.get("/raw", stream=True)
    lines = list(iter_lines(resp))
    release(resp)
    assert lines == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}', b'{"e":5}']


def test_a_watch_event_is_delivered_when_it_is_sent_not_when_more_follow(kube):
    kube.add("pods", k8s.pytorchjob_worker())
    client = kube.client(timeout=(2, 5))
    resp = client.get("/api/v1/pods", {"watch": True}, stream=True)
    try:
        lines = iter_lines(resp)
        first = json.loads(next(lines))  # the server holds the watch open after this one
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "llama-ft-worker-0")
        kube.add("pods", k8s.deployment_pod())
        second = json.loads(next(lines))
        assert (second["type"], second["object"]["metadata"]["name"]) == ("ADDED", "embedder-5f7c9d8b6-qz4lp")
    finally:
        release(resp)


def test_a_silent_watch_times_out_on_the_read_timeout(kube):
    client = kube.client()
    resp = client.get("/api/v1/pods", {"watch": True}, stream=True, timeout=(2, 0.3))
    start = time.monotonic()
    try:
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            list(iter_lines(resp))
    finally:
        release(resp)
    assert 0.25 < time.monotonic() - start < 3


# --------------------------------------------------------------------------- in a pod


@pytest.mark.slow
def test_in_cluster_client_verifies_the_server_with_the_service_account_ca(tls, tmp_path):
    with FakeKube(tls=tls, tokens={"t1"}) as kube:
        kube.add("nodes", k8s.gpu_node())
        ServiceAccount(tmp_path / "sa", tls.ca, "t1\n")
        client = KubeClient.in_cluster(tmp_path / "sa", environ=env_for(kube))
        assert client.host == f"https://127.0.0.1:{kube.port}"
        body = client.get_json("/api/v1/nodes", {"fieldSelector": f"metadata.name={k8s.NODE}"})
        assert [n["metadata"]["name"] for n in body["items"]] == [k8s.NODE]
        assert kube.calls[-1].authorization == "Bearer t1"

        # a CA that did not sign the server's certificate: no request reaches the server
        other = ServiceAccount(tmp_path / "other", tls.other_ca, "t1")
        untrusting = KubeClient.in_cluster(other.root, environ=env_for(kube))
        calls = len(kube.calls)
        with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.get("/api/v1/nodes")
        assert len(kube.calls) == calls


def test_the_token_is_read_again_after_the_kubelet_rotates_it(tls, tmp_path):
    with FakeKube(tls=tls) as kube:
        sa = ServiceAccount(tmp_path / "sa", tls.ca, "token-1")
        clock = Clock()
        client = KubeClient.in_cluster(sa.root, environ=env_for(kube), clock=clock)
        client.get("/api/v1/pods")
        sa.rotate("token-2")
        clock.now += 30
        client.get("/api/v1/pods")  # within the minute: the token read before
        clock.now += 31
        client.get("/api/v1/pods")
        client.get("/api/v1/pods")
        assert [c.authorization for c in kube.calls] == ["Bearer token-1", "Bearer token-1",
                                                         "Bearer token-2", "Bearer token-2"]


def test_a_401_makes_the_next_request_read_the_token_again(tls, tmp_path):
    with FakeKube(tls=tls, tokens={"new"}) as kube:
        sa = ServiceAccount(tmp_path / "sa", tls.ca, "old")
        client = KubeClient.in_cluster(sa.root, environ=env_for(kube), clock=Clock())  # the clock never moves
        sa.rotate("new")
        with pytest.raises(KubeError) as caught:
            client.get("/api/v1/pods")
        assert caught.value.status == 401
        assert client.get_json("/api/v1/pods")["kind"] == "PodList"
        assert [c.authorization for c in kube.calls] == ["Bearer old", "Bearer new"]


def test_a_token_that_cannot_be_read_again_keeps_the_last_one(kube, tmp_path, caplog):
    token = tmp_path / "token"
    token.write_text("t1")
    clock = Clock()
    client = KubeClient(kube.url, authorization=bearer_from_file(token), clock=clock)
    token.unlink()
    clock.now += 61
    with caplog.at_level(logging.WARNING, logger="gpuledger.kubehttp"):
        client.get("/api/v1/pods")
    assert kube.calls[-1].authorization == "Bearer t1"
    assert "cannot read the API token again" in caplog.text
    token.write_text("t2")
    clock.now += 61
    client.get("/api/v1/pods")
    assert kube.calls[-1].authorization == "Bearer t2"


def test_in_cluster_configuration_errors(tls, tmp_path):
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        KubeClient.in_cluster(tmp_path, environ={})
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="token does not exist"):
        KubeClient.in_cluster(tmp_path, environ=env)
    (tmp_path / "token").write_text("")
    (tmp_path / "ca.crt").write_bytes(Path(tls.ca).read_bytes())
    with pytest.raises(ConfigError, match="is empty"):
        KubeClient.in_cluster(tmp_path, environ=env)
    (tmp_path / "token").write_text("t")
    v6 = KubeClient.in_cluster(tmp_path, environ={"KUBERNETES_SERVICE_HOST": "fd00:10:96::1",
                                                  "KUBERNETES_SERVICE_PORT": "443"})
    assert v6.host == "https://[fd00:10:96::1]:443"


# --------------------------------------------------------------------------- kubeconfig


def kubeconfig(path: Path, server: str, user: dict, cluster: dict | None = None) -> Path:
    path.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def test_kubeconfig_with_inline_ca_and_client_certificate(tls, tmp_path):
    with FakeKube(tls=tls) as kube:
        config = kubeconfig(tmp_path / "config", kube.url,
                            {"client-certificate-data": b64(tls.client_cert), "client-key-data": b64(tls.client_key)},
                            {"certificate-authority-data": b64(tls.ca)})
        client = KubeClient.from_kubeconfig(str(config))
        assert client.get_json("/api/v1/pods")["kind"] == "PodList"
        assert (kube.calls[-1].client_cn, kube.calls[-1].authorization) == (CLIENT_NAME, None)


def test_kubeconfig_token_ca_file_and_tls_server_name(tls, tmp_path):
    with FakeKube(tls=tls, tokens={"dev-token"}) as kube:
        by_name = f"https://localhost:{kube.port}"  # not a name in the server's certificate
        plain = kubeconfig(tmp_path / "plain", by_name, {"token": "dev-token"}, {"certificate-authority": tls.ca})
        with pytest.raises(urllib3.exceptions.SSLError, match="localhost"):
            KubeClient.from_kubeconfig(str(plain)).get("/api/v1/pods")
        named = kubeconfig(tmp_path / "named", by_name, {"token": "dev-token"},
                           {"certificate-authority": tls.ca, "tls-server-name": SERVER_NAME})
        assert KubeClient.from_kubeconfig(str(named)).get_json("/api/v1/pods")["kind"] == "PodList"
        assert kube.calls[-1].authorization == "Bearer dev-token" and kube.calls[-1].client_cn is None


def test_kubeconfig_exec_plugin_tokens_are_refreshed(kube, tmp_path):
    token = tmp_path / "current-token"
    token.write_text("exec-1")
    plugin = tmp_path / "get-token.py"
    plugin.write_text(textwrap.dedent(f"""
        import datetime, json
        soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                          "status": {{"token": open({str(token)!r}).read(),
                                      "expirationTimestamp": soon.strftime("%Y-%m-%dT%H:%M:%SZ")}}}}))
    """))
    config = kubeconfig(tmp_path / "config", kube.url, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable, "args": [str(plugin)],
        "interactiveMode": "Never"}})
    clock = Clock()
    client = KubeClient.from_kubeconfig(str(config), clock=clock)
    client.get("/api/v1/pods")
    token.write_text("exec-2")
    client.get("/api/v1/pods")
    clock.now += 61  # the token expires within the loader's 5-minute margin: the plugin runs again
    client.get("/api/v1/pods")
    assert [c.authorization for c in kube.calls] == ["Bearer exec-1", "Bearer exec-1", "Bearer exec-2"]


def test_a_kubeconfig_that_cannot_be_loaded_is_a_config_error_naming_it(tmp_path):
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    with pytest.raises(ConfigError, match=f"cannot load the kubeconfig {bad}"):
        KubeClient.from_kubeconfig(str(bad))
    with pytest.raises(ConfigError, match="no-such-file"):
        KubeClient.from_kubeconfig(str(tmp_path / "no-such-file"))


def test_from_environment_prefers_a_given_kubeconfig_then_the_pod_then_kubeconfig(tls, tmp_path, monkeypatch):
    with FakeKube(tls=tls) as kube:
        sa = ServiceAccount(tmp_path / "sa", tls.ca, "pod-token")
        config = kubeconfig(tmp_path / "config", "https://dev-cluster.example:6443", {"token": "dev"})
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))
        monkeypatch.setenv("KUBECONFIG", str(config))
        assert api_client_from_environment(service_account_dir=str(sa.root)).host == kube.url
        given = api_client_from_environment(str(config), service_account_dir=str(sa.root))
        assert given.host == "https://dev-cluster.example:6443"
        assert api_client_from_environment(service_account_dir=str(tmp_path / "none")).host == given.host
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
        with pytest.raises(ConfigError) as caught:
            api_client_from_environment(service_account_dir=str(tmp_path / "none"))
        assert "token does not exist" in str(caught.value) and "missing" in str(caught.value)


# --------------------------------------------------------------------------- memory


IN_A_POD = """
import json, sys, time
import agent.cli, agent.cmd_agent, agent.cmd_record  # the commands' modules, as `gpuledger` loads them
from collectors.faults import FaultCounter
from collectors.kubeapi import WatchSettings, api_client_from_environment, node_informer, pod_informer
from collectors.owners import OwnerCache, top_owner
from collectors.placement import PlacementSource
from collectors.kubelet.client import PodResourcesClient

client = api_client_from_environment(service_account_dir=sys.argv[1])
faults = FaultCounter()
pods = pod_informer(client, sys.argv[2], faults).start()
node = node_informer(client, sys.argv[2], faults).start()
owners = OwnerCache.from_api_client(client, faults=faults)
meta = json.loads(sys.stdin.read())
deadline = time.monotonic() + 10
while not (pods.synced.is_set() and node.synced.is_set()) and time.monotonic() < deadline:
    time.sleep(0.01)
owner = top_owner(meta, owners)
source = PlacementSource(sys.argv[2], PodResourcesClient(sys.argv[3]), pods, node, owners=owners)
print(json.dumps({"pods": len(pods.cache), "node": len(node.cache), "owner": [owner.kind, owner.name],
                  "host": client.host, "faults": {"/".join(k): v for k, v in faults.counts().items()},
                  "kubernetes": sorted(m for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes."))}))
source.close()
"""


@pytest.mark.slow
def test_in_a_pod_the_placement_stack_never_imports_the_kubernetes_package(tls, tmp_path):
    with FakeKube(tls=tls, tokens={"pod-token"}) as kube:
        kube.add("nodes", k8s.gpu_node())
        kube.add("pods", k8s.notebook_pod())
        kube.add_owner("apps/v1", "statefulsets", k8s.notebook_statefulset())
        sa = ServiceAccount(tmp_path / "sa", tls.ca, "pod-token")
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        env.update(env_for(kube), PYTHONPATH=str(REPO), KUBECONFIG=str(tmp_path / "no-kubeconfig"))
        done = subprocess.run(
            [sys.executable, "-c", IN_A_POD, str(sa.root), k8s.NODE, str(tmp_path / "kubelet.sock")],
            input=json.dumps(k8s.notebook_pod()["metadata"]), capture_output=True, text=True, env=env,
            cwd=tmp_path, timeout=60,
        )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["host"] == f"https://127.0.0.1:{kube.port}"
    assert (out["pods"], out["node"], out["owner"], out["faults"]) == (1, 1, ["Notebook", "alice-nb"], {})
    assert out["kubernetes"] == []
    assert {c.authorization for c in kube.calls} == {"Bearer pod-token"}
    assert kube.count("/apis/apps/v1/namespaces/kubeflow-alice/statefulsets/alice-nb") == 1


def test_stop_interrupts_a_watch_over_tls(tls, tmp_path):
    with FakeKube(tls=tls) as kube:
        inf = pod_informer(kube.client(), k8s.NODE, FaultCounter(), WatchSettings(read_timeout_s=30)).start()
        try:
            assert inf.synced.wait(5)
            kube.wait_for(lambda: kube.open_watches == 1)
        finally:
            start = time.monotonic()
            inf.stop()
        assert time.monotonic() - start < 1 and not inf._thread.is_alive()
        assert inf.faults.counts() == {}


@pytest.mark.slow
def test_the_client_is_safe_to_share_between_threads(kube):
    kube.add("pods", k8s.pytorchjob_worker())
    client = kube.client(max_connections=2)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert len(client.get_json("/api/v1/pods")["items"]) == 1
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and kube.count("/api/v1/pods") == 120
