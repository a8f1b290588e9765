"""Serving counters: real vLLM, SGLang, TGI and Triton expositions served over HTTP, counter
resets, pod restarts, a dead and a slow endpoint."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from collectors.faults import FaultCounter
from collectors.serving import (
    Counters, CounterTracker, Endpoint, ExpositionError, ServingScraper, endpoints_of, http_get, read_counters,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "serving"


def exposition(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


@pytest.mark.parametrize("name, expected", [
    # sums over label sets, worked out from the files: vLLM's three finished reasons,
    # TGI's two failure reasons, Triton's two models
    ("vllm", Counters("vllm", 2950 + 48 + 2, 1.2843e6, 391220, None)),
    ("sglang", Counters("sglang", 21033, 8.128902e6, 7.557572e6, 7)),
    ("tgi", Counters("tgi", 1500, 402733, 118412, 9 + 3)),
    ("triton", Counters("triton", 8211 + 1789, None, None, 4 + 1)),
])
def test_each_server_is_recognised_and_summed(name, expected):
    assert read_counters(exposition(name)) == expected


def test_a_custom_mapping_and_unknown_bodies():
    text = "# TYPE my_answers_total counter\nmy_answers_total{route=\"a\"} 10\nmy_answers_total{route=\"b\"} 5\n"
    with pytest.raises(ExpositionError, match="no request counter"):
        read_counters(text)
    mine = {"mine": {"requests": ("my_answers_total",)}}
    assert read_counters(text, mine) == Counters("mine", 15.0)
    with pytest.raises(ExpositionError, match="not a Prometheus text exposition"):
        read_counters("<html>oops</html>\n{{{", mine)


def test_increments_resets_and_restarts():
    t = CounterTracker()
    assert t.update("pod-a", 100.0, Counters("vllm", 10, 100, 50)) is None  # the baseline
    inc = t.update("pod-a", 115.0, Counters("vllm", 25, 400, 90))
    assert (inc.interval_s, inc.requests, inc.input_tokens, inc.output_tokens, inc.reset) == (15.0, 15, 300, 40, False)
    # the server restarted inside the pod: its counters start again from 0
    inc = t.update("pod-a", 130.0, Counters("vllm", 4, 30, 8))
    assert (inc.requests, inc.input_tokens, inc.output_tokens, inc.reset) == (4, 30, 8, True)
    # a replacement pod has a new uid: a new series, whose first reading is its baseline
    assert t.update("pod-b", 130.0, Counters("vllm", 1000, 1, 1)) is None
    t.forget(["pod-b"])
    assert t.update("pod-a", 145.0, Counters("vllm", 9, 40, 10)) is None  # forgotten: a baseline again


class Server:
    """A local HTTP server answering /metrics with whatever body the test sets, optionally slowly."""

    def __init__(self) -> None:
        self.body = ""
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                time.sleep(outer.delay)
                data = outer.body.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.mark.slow
def test_scraper_reads_real_endpoints_and_survives_dead_and_slow_ones(server):
    server.body = exposition("vllm")
    slow = Server()
    slow.body, slow.delay = exposition("tgi"), 1.5
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    targets = [Endpoint("pod-vllm", "n1", f"http://127.0.0.1:{server.port}/metrics"),
               Endpoint("pod-slow", "n1", f"http://127.0.0.1:{slow.port}/metrics"),
               Endpoint("pod-dead", "n1", f"http://127.0.0.1:{dead_port}/metrics")]
    faults = FaultCounter()
    scraper = ServingScraper(lambda: targets, timeout_s=0.3, faults=faults)
    try:
        started = time.monotonic()
        assert scraper.scrape_once() == 0  # baselines only
        first = time.monotonic() - started
        server.body = exposition("vllm").replace("2950.0", "2970.0").replace("391220.0", "395220.0")
        assert scraper.scrape_once() == 1
        [(endpoint, inc)] = scraper.drain()
        assert endpoint.pod_uid == "pod-vllm" and (inc.requests, inc.output_tokens) == (20, 4000)
        # the slow endpoint cost its timeout, not its 1.5 s, and the rounds ran side by side
        assert first < 1.2
        counts = faults.counts()
        assert counts[("serving", "timeout")] == 2 and counts[("serving", "unreachable")] == 2
    finally:
        scraper.stop()
        slow.close()


@pytest.mark.slow
def test_http_get_refuses_errors(server):
    server.body = "x"
    with pytest.raises(OSError, match="HTTP 404"):
        http_get(f"http://127.0.0.1:{server.port}/nope", 1.0)


def test_endpoints_from_annotations_or_named_ports():
    pod = {"metadata": {"uid": "u1"}, "podIP": "10.1.2.3",
           "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"},
           "ports": [{"name": "http", "containerPort": 8000}]}
    assert endpoints_of(pod, "n1") == [Endpoint("u1", "n1", "http://10.1.2.3:8000/metrics")]
    pod["annotations"]["prometheus.io/path"] = "stats/prometheus"
    assert endpoints_of(pod, "n1")[0].url == "http://10.1.2.3:8000/stats/prometheus"
    bare = {"metadata": {"uid": "u2"}, "podIP": "fd00::7", "ports": [{"name": "metrics", "containerPort": 8002}]}
    assert endpoints_of(bare, "n1") == []  # no annotation and no configured port
    assert endpoints_of(bare, "n1", ports=["metrics"]) == [Endpoint("u2", "n1", "http://[fd00::7]:8002/metrics")]
    assert endpoints_of({"metadata": {"uid": "u3"}, "ports": []}, "n1", ports=[8000]) == []  # no IP yet
