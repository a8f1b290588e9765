"""The informers, through the agent's own API client, against a local fake API server
(a real HTTP server: list, watch, bookmarks, 410 Gone, injected faults)."""

from __future__ import annotations

import json
import logging
import time

import pytest

from collectors.faults import FaultCounter
from collectors.kubehttp import KubeClient
from collectors.kubeapi import (
    Informer,
    WatchSettings,
    node_informer,
    pod_informer,
    slim_pod,
)
from tests.fakekube import FakeKube
from tests.fakekube import objects as k8s
from tests.fakekube.selectors import field_matcher, label_matcher

FAST = WatchSettings(backoff_initial_s=0.01, backoff_max_s=0.05, watch_timeout_s=30, read_timeout_s=10)
NODE = k8s.NODE


def pod(name: str, node: str = NODE, labels: dict | None = None) -> dict:
    obj = k8s.deployment_pod()
    obj["metadata"].update(name=name, labels=labels or {"app": name})
    obj["metadata"].pop("uid")
    obj["spec"]["nodeName"] = node
    return obj


@pytest.fixture
def kube():
    with FakeKube() as server:
        yield server


@pytest.fixture
def informer(kube):
    made: list[Informer] = []

    def make(**kwargs) -> Informer:
        inf = pod_informer(kube.client(), NODE, settings=FAST, faults=FaultCounter(), **kwargs).start()
        made.append(inf)
        assert inf.synced.wait(5)
        kube.wait_for(lambda: kube.open_watches == len(made))  # events from here on reach the watch
        return inf

    yield make
    for inf in made:
        inf.stop()


def names(inf: Informer) -> set[str]:
    return {o["metadata"]["name"] for o in inf.items()}


def test_lists_and_watches_only_this_nodes_pods(kube, informer):
    kube.add("pods", pod("a"))
    kube.add("pods", pod("elsewhere", node="gpu-node-2"))
    inf = informer()
    assert names(inf) == {"a"}
    kube.add("pods", pod("b"))
    kube.add("pods", pod("other", node="gpu-node-2"))
    kube.wait_for(lambda: names(inf) == {"a", "b"})
    changed = pod("b", labels={"app": "b", "team": "x"})
    uid = inf.get(changed["metadata"]["namespace"], "b")["metadata"]["uid"]
    changed["metadata"]["uid"] = uid
    kube.update("pods", changed)
    kube.wait_for(lambda: inf.cache[uid]["metadata"]["labels"].get("team") == "x")
    kube.delete("pods", changed["metadata"]["namespace"], "b")
    kube.wait_for(lambda: names(inf) == {"a"})
    assert inf.lists == 1 and inf.faults.counts() == {}
    req = [q for p, q in kube.requests if q.get("watch")][0]
    assert req["fieldSelector"] == [f"spec.nodeName={NODE}"]
    assert req["allowWatchBookmarks"][0].lower() == "true"


def test_dropped_watch_resumes_from_the_bookmarked_resource_version(kube, informer):
    kube.add("pods", pod("a"))
    inf = informer()
    kube.add("pods", pod("far", node="gpu-node-2"))  # moves the resourceVersion, not our cache
    kube.bookmark()
    kube.wait_for(lambda: inf.resource_version == str(kube.rv))
    bookmarked = inf.resource_version
    kube.drop_watches()
    kube.wait_for(lambda: kube.count("/api/v1/pods", watch=True) == 2)
    kube.add("pods", pod("b"))
    kube.wait_for(lambda: names(inf) == {"a", "b"})
    watches = [q for p, q in kube.requests if q.get("watch")]
    assert watches[1]["resourceVersion"] == [bookmarked]
    assert inf.lists == 1  # resumed, not relisted
    assert inf.faults.count("kubeapi", "pods_watch_dropped") == 1


def test_410_gone_relists_and_catches_up(kube, informer):
    kube.add("pods", pod("a"))
    kube.add("pods", pod("b"))
    inf = informer()
    kube.compact()
    kube.wait_for(lambda: inf.lists == 2)
    kube.delete("pods", pod("b")["metadata"]["namespace"], "b")
    kube.add("pods", pod("c"))
    kube.wait_for(lambda: names(inf) == {"a", "c"})
    assert inf.faults.count("kubeapi", "pods_watch_gone") == 1


def test_a_410_status_on_resuming_a_watch_relists_too(kube, informer):
    kube.add("pods", pod("a"))
    inf = informer()
    kube.fail_next(1, 410)  # the resumed watch's request
    kube.drop_watches()
    kube.wait_for(lambda: inf.lists == 2)
    kube.add("pods", pod("b"))
    kube.wait_for(lambda: names(inf) == {"a", "b"})
    assert inf.faults.count("kubeapi", "pods_watch_gone") == 1
    assert inf.faults.count("kubeapi", "pods_http_410") == 0


def test_a_watch_from_a_compacted_version_gets_410_and_relists(kube):
    kube.add("pods", pod("a"))
    inf = pod_informer(kube.client(), NODE, settings=FAST, faults=FaultCounter())
    inf.resource_version = "5"  # as if resumed from long ago
    kube.compact()
    kube.add("pods", pod("b"))
    inf.start()
    try:
        kube.wait_for(lambda: names(inf) == {"a", "b"})
        assert inf.faults.count("kubeapi", "pods_watch_gone") == 1 and inf.lists == 1
    finally:
        inf.stop()


def test_500s_back_off_and_serve_the_last_state_while_down(kube, informer, caplog):
    kube.add("pods", pod("a"))
    kube.fail_next(3)
    inf = informer()
    assert inf.faults.count("kubeapi", "pods_http_500") == 3 and names(inf) == {"a"}
    with caplog.at_level(logging.WARNING):
        kube.set_down(True)
        kube.wait_for(lambda: inf.faults.count("kubeapi", "pods_http_500") >= 6)
        assert names(inf) == {"a"}  # the last known state stands
        kube.set_down(False)
    kube.add("pods", pod("b"))
    kube.wait_for(lambda: names(inf) == {"a", "b"})
    assert sum("pods_http_500" in r.message for r in caplog.records) == 1  # logged once
    assert inf.faults.count("kubeapi", "pods_watch_dropped") == 1


def test_403_and_401_are_counted_by_status(kube, caplog):
    kube.add("pods", pod("a"))
    kube.fail_next(2, 403)
    with caplog.at_level(logging.WARNING):
        inf = pod_informer(kube.client(), NODE, settings=FAST, faults=FaultCounter()).start()
        try:
            assert inf.synced.wait(5) and names(inf) == {"a"}
        finally:
            inf.stop()
    assert inf.faults.count("kubeapi", "pods_http_403") == 2
    # the log line says what the server said (which RBAC rule is missing, on a real one)
    assert "pods_http_403: HTTP 403 Forbidden: injected failure 403" in caplog.text
    kube.tokens = {"right"}
    inf = pod_informer(kube.client(authorization=lambda: "Bearer wrong"), NODE, settings=FAST,
                       faults=FaultCounter()).start()
    try:
        kube.wait_for(lambda: inf.faults.count("kubeapi", "pods_http_401") >= 2)
        assert not inf.synced.is_set()
    finally:
        inf.stop()


@pytest.mark.parametrize("chunk_size", [7, 1 << 20])
def test_watch_events_cut_anywhere_across_chunks(kube, informer, chunk_size):
    """The fake cuts the stream every 7 bytes (lines span chunks), or sends every pending
    event in one chunk (a chunk holds several lines)."""
    kube.chunk_size = chunk_size
    kube.add("pods", pod("a"))
    inf = informer()
    added = [pod(f"p{i}") for i in range(20)]
    with kube.cond:  # all twenty land in the history before the watch wakes, so they go out together
        for obj in added:
            kube.add("pods", obj)
    kube.wait_for(lambda: names(inf) == {"a"} | {f"p{i}" for i in range(20)})
    assert inf.faults.counts() == {} and inf.resource_version == str(kube.rv)


@pytest.mark.slow
def test_a_silent_watch_times_out_and_resumes_without_a_relist(kube):
    kube.add("pods", pod("a"))
    settings = WatchSettings(backoff_initial_s=0.01, backoff_max_s=0.05, watch_timeout_s=30, read_timeout_s=0.2)
    inf = pod_informer(kube.client(), NODE, settings=settings, faults=FaultCounter()).start()
    try:
        kube.wait_for(lambda: inf.faults.count("kubeapi", "pods_timeout") >= 2)
        kube.add("pods", pod("b"))
        kube.wait_for(lambda: names(inf) == {"a", "b"})
        assert inf.lists == 1 and inf.watches >= 3
    finally:
        inf.stop()


@pytest.mark.slow
def test_backoff_grows_so_an_outage_is_not_a_request_storm(kube):
    kube.set_down(True)
    settings = WatchSettings(backoff_initial_s=0.02, backoff_max_s=0.16, watch_timeout_s=30)
    inf = pod_informer(kube.client(), NODE, settings=settings, faults=FaultCounter()).start()
    try:
        kube.wait_for(lambda: inf.faults.count("kubeapi", "pods_http_500") >= 5)
        start = time.monotonic()
        count = inf.faults.count("kubeapi", "pods_http_500")
        kube.wait_for(lambda: inf.faults.count("kubeapi", "pods_http_500") >= count + 2)
        assert time.monotonic() - start >= 0.16  # at the cap: two waits of 0.16 s at least
    finally:
        inf.stop()


def test_unreachable_server_is_counted_and_stop_is_prompt():
    client = KubeClient("http://127.0.0.1:9")  # nothing listens on the discard port
    inf = pod_informer(client, NODE, settings=FAST, faults=FaultCounter()).start()
    deadline = time.monotonic() + 5
    while inf.faults.count("kubeapi", "pods_unreachable") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert inf.faults.count("kubeapi", "pods_unreachable") >= 2 and not inf.synced.is_set()
    start = time.monotonic()
    inf.stop()
    assert time.monotonic() - start < 1


def test_stop_interrupts_an_open_watch(kube, informer):
    inf = informer()
    kube.wait_for(lambda: kube.open_watches == 1)
    start = time.monotonic()
    inf.stop()
    assert time.monotonic() - start < 1 and not inf._thread.is_alive()


def test_node_informer_sees_label_changes(kube):
    kube.add("nodes", k8s.gpu_node())
    kube.add("nodes", {"metadata": {"name": "gpu-node-2", "labels": {}}})
    inf = node_informer(kube.client(), NODE, settings=FAST, faults=FaultCounter()).start()
    try:
        assert inf.synced.wait(5)
        assert [o["metadata"]["name"] for o in inf.items()] == [NODE]
        node = k8s.gpu_node({"karpenter.sh/capacity-type": "spot"})
        node["metadata"]["uid"] = inf.items()[0]["metadata"]["uid"]
        kube.update("nodes", node)
        kube.wait_for(lambda: inf.get("", NODE)["metadata"]["labels"]["karpenter.sh/capacity-type"] == "spot")
    finally:
        inf.stop()


def test_label_selector_is_passed_and_honoured(kube):
    kube.add("pods", pod("a", labels={"team": "x"}))
    kube.add("pods", pod("b", labels={"team": "y"}))
    kube.add("pods", pod("c", labels={}))
    inf = Informer("pods", kube.client(), "/api/v1/pods", slim_pod,
                   field_selector=f"spec.nodeName={NODE}", label_selector="team in (x, z)", settings=FAST, faults=FaultCounter()).start()
    try:
        assert inf.synced.wait(5)
        kube.add("pods", pod("d", labels={"team": "z"}))
        kube.wait_for(lambda: names(inf) == {"a", "d"})
    finally:
        inf.stop()


def test_status_only_updates_do_not_bump_the_version(kube, informer):
    kube.add("pods", pod("a"))
    inf = informer()
    version = inf.version
    obj = dict(kube.objects["pods"][(pod("a")["metadata"]["namespace"], "a")])
    obj["status"] = dict(obj["status"], podIP="10.0.0.9")
    kube.update("pods", obj)
    kube.wait_for(lambda: inf.resource_version == str(kube.rv))
    assert inf.version == version


def test_apply_handles_every_event_type():
    inf = Informer("pods", None, "/api/v1/pods", slim_pod, faults=FaultCounter())
    obj = k8s.pytorchjob_worker()
    assert inf.handle_line(json.dumps({"type": "ADDED", "object": obj}))
    assert not inf.handle_line(json.dumps({"type": "MODIFIED", "object": obj}))
    assert inf.get("research", "llama-ft-worker-0")["metadata"]["ownerReferences"][0]["kind"] == "PyTorchJob"
    assert not inf.handle_line(json.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}}))
    assert inf.resource_version == "99"
    assert inf.handle_line(json.dumps({"type": "DELETED", "object": obj}))
    assert not inf.handle_line(json.dumps({"type": "DELETED", "object": obj}))
    assert inf.items() == [] and inf.by_name == {}


def test_fake_server_selectors():
    match = label_matcher("team=x,env!=prod,tier in (a, b),!legacy,gpu")
    assert match({"team": "x", "env": "dev", "tier": "a", "gpu": "1"})
    assert not match({"team": "x", "env": "prod", "tier": "a", "gpu": "1"})
    assert not match({"team": "x", "tier": "c", "gpu": "1"})
    assert not match({"team": "x", "tier": "a", "gpu": "1", "legacy": ""})
    assert label_matcher("tier notin (a)")({"tier": "b"})
    fields = field_matcher("spec.nodeName=n1,metadata.namespace!=kube-system")
    assert fields({"spec": {"nodeName": "n1"}, "metadata": {"namespace": "x"}})
    assert not fields({"spec": {"nodeName": "n1"}, "metadata": {"namespace": "kube-system"}})
