"""The Helm chart (helm/gpuledger): lint, render, schema-validate, and read what it renders.

Real tools: a pinned helm (tests/helmtool.py) lints and renders the chart for each
documented combination of values; kubernetes-validate checks every built-in object
strictly against the Kubernetes OpenAPI schemas (1.27, the chart's kubeVersion floor,
and 1.31); the Prometheus Operator's objects, which kubernetes-validate has no schema
for, are checked against the JSON schemas below (the fields of the CRDs that the chart
uses, spelled as in monitoring.coreos.com/v1), and their rules by promtool in
tests/chart/test_alert_rules.py. The rendered config and rate card are read by gpuledger itself.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from collectors.pricing.sources import SOURCES as PRICE_SOURCES
from tests import helmtool
from tests.helmtool import (
    CHART, HELM_VERSION, REPO, documented_values, leaf_keys, pinned_helm, render, run_helm, values_args,
    values_table,
)

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm 3.17.2, pinned by checksum (tests/helmtool.py)."""
    return pinned_helm()


K8S_VERSIONS = ("1.27.0", "1.31.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

EXAMPLE_RATES = yaml.safe_load((REPO / "examples" / "rates.yaml").read_text())
EXAMPLE_CONFIG = yaml.safe_load((REPO / "examples" / "config.yaml").read_text())

#: Every documented combination of options (docs/helm.md), by name.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "dry-run": {"dryRun": {"enabled": True}},
    "dry-run-own-trace": {"dryRun": {"enabled": True, "existingConfigMap": "my-trace", "traceKey": "t.jsonl.gz",
                                     "speed": 1}},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "prometheus-rule": {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                           "budgets": {"ml-research": 50000, "inference": 20000}}},
    "prometheus-rule-dry-run": {"dryRun": {"enabled": True},
                                "prometheusRule": {"enabled": True, "budgets": {"ml-research": 50000}}},
    "dashboards": {"dashboards": {"enabled": True, "namespace": "monitoring",
                                  "annotations": {"grafana_folder": "GPU"}}},
    "report-pvc": {"report": {"enabled": True, "prometheusUrl": "http://prometheus-operated.monitoring:9090",
                              "existingClaim": "gpuledger-reports", "timeZone": "Europe/Berlin"},
                   "rateCard": EXAMPLE_RATES},
    "report-emptydir": {"report": {"enabled": True, "prometheusUrl": "http://prometheus:9090"}},
    "gather": {"gather": {"enabled": True, "existingClaim": "fleet-ledger"},
               "ledger": {"keepDays": 21, "token": {"secretName": "ledger-token", "key": "bearer"}}},
    "gather-s3": {"gather": {"enabled": True, "out": "s3://fleet-ledger/gpuledger", "s3Endpoint": "http://minio:9000",
                             "serviceAccountAnnotations": {
                                 "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/ledger"}}},
    "report-ledger": {"report": {"enabled": True}, "gather": {"enabled": True, "existingClaim": "fleet-ledger",
                                                               "out": "/dataset/fleet"}},
    "report-ledger-s3": {"report": {"enabled": True},
                         "gather": {"enabled": True, "out": "s3://fleet-ledger/gpuledger", "s3Endpoint": "http://minio:9000",
                                    "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}]}},
    "report-prometheus-beside-gather": {"report": {"enabled": True, "source": "prometheus",
                                                   "prometheusUrl": "http://prometheus:9090"},
                                        "gather": {"enabled": True, "existingClaim": "fleet-ledger"}},
    "gather-every": {"gather": {"enabled": True, "every": "15m", "existingClaim": "fleet-ledger"},
                     "ledger": {"token": {"secretName": "ledger-token"}}},
    "gather-dry-run": {"dryRun": {"enabled": True}, "gather": {"enabled": True},
                       "ledger": {"token": {"secretName": "ledger-token"}}},
    "processes-on": {"agent": {"processes": True}},
    "priority-class": {"agent": {"priorityClassName": "gpu-agents", "runtimeClassName": "nvidia"}},
    "no-priority-class": {"agent": {"priorityClassName": ""}},
    "kubernetes-on": {"agent": {"kubernetes": "on"}},
    "cloud-pricing": {"pricing": {**{s.name: True for s in PRICE_SOURCES}, "refresh": "30m"},
                      "serviceAccount": {"annotations": {
                          "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/gpuledger-pricing",
                          "iam.gke.io/gcp-service-account": "gpuledger@proj.iam.gserviceaccount.com"}}},
    "config-and-rates": {"config": EXAMPLE_CONFIG, "rateCard": EXAMPLE_RATES},
    "kubernetes-off": {"agent": {"kubernetes": "off"}},
    "privileged-gke": {"agent": {"privileged": True,
                                 "extraVolumes": [{"name": "nvidia", "hostPath": {"path": "/home/kubernetes/bin/nvidia"}}],
                                 "extraVolumeMounts": [{"name": "nvidia", "mountPath": "/usr/local/nvidia",
                                                        "readOnly": True}],
                                 "extraEnv": [{"name": "LD_LIBRARY_PATH", "value": "/usr/local/nvidia/lib64"}]}},
    "no-rbac-own-sa": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"}},
    "everything": {"serviceMonitor": {"enabled": True}, "dashboards": {"enabled": True},
                   "prometheusRule": {"enabled": True, "budgets": {"ml-research": 50000}},
                   "report": {"enabled": True, "prometheusUrl": "http://prometheus:9090", "existingClaim": "r"},
                   "agent": {"processes": True, "priorityClassName": "system-node-critical",
                             "podAnnotations": {"example.com/owner": "platform", "example.com/tier": "infra"},
                             "podLabels": {"example.com/team": "platform"},
                             "extraArgs": ["--report-out=/var/lib/gpuledger/reports"]},
                   "pricing": {"aws": True}, "config": EXAMPLE_CONFIG, "rateCard": EXAMPLE_RATES,
                   "image": {"digest": "sha256:" + "ab" * 32}},
}

# --- the Prometheus Operator objects: the CRD fields the chart uses ---------------

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"type": "object", "required": ["name", "namespace"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
    "namespace": {"type": "string"}, "labels": _STR_MAP, "annotations": _STR_MAP}}
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
            "metadata": _META,
            "spec": {"type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False, "properties": {
                                "sourceLabels": {"type": "array",
                                                 "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                                "targetLabel": {"type": "string"}, "action": {"type": "string"},
                                "regex": {"type": "string"}, "replacement": {"type": "string"}}}}}}}}}}},
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
            "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False, "properties": {
                "groups": {"type": "array", "items": {
                    "type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "rules": {"type": "array", "items": {
                            "type": "object", "required": ["expr"], "additionalProperties": False,
                            "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                            "properties": {
                                "record": {"type": "string"}, "alert": {"type": "string"},
                                "expr": {"type": ["string", "integer"]},
                                "for": {"type": "string", "pattern": _DURATION},
                                "labels": _STR_MAP, "annotations": _STR_MAP}}}}}}}}}},
}


# --- helpers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered(helm, tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """Every case rendered once: name -> objects."""
    tmp = tmp_path_factory.mktemp("values")
    return {name: render(helm, values, tmp) for name, values in CASES.items()}


def kinds(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for obj in objs:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def one(objs: list[dict], kind: str) -> dict:
    found = kinds(objs).get(kind, [])
    assert len(found) == 1, f"expected one {kind}, got {len(found)}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_spec(objs: list[dict]) -> dict:
    ks = kinds(objs)
    workloads = ks.get("DaemonSet", []) + ks.get("Deployment", [])
    assert len(workloads) == 1, "exactly one agent workload (DaemonSet, or Deployment in dry-run)"
    return workloads[0]["spec"]["template"]["spec"]


def agent_container(objs: list[dict]) -> dict:
    (container,) = pod_spec(objs)["containers"]
    return container


def flags(args: list[str]) -> dict[str, str | bool]:
    """``--flag=value`` / ``--flag`` arguments as a dict."""
    out: dict[str, str | bool] = {}
    for arg in args:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            out[name] = value if eq else True
    return out


def gpuledger(*args: str) -> subprocess.CompletedProcess:
    """Run the gpuledger CLI of this checkout."""
    return subprocess.run([sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


# --- lint, render, validate -------------------------------------------------------

def test_helm_is_the_pinned_version(helm):
    out = run_helm(helm, "version", "--short").stdout
    assert out.startswith(HELM_VERSION + "+"), out


def test_a_tampered_helm_download_is_refused(tmp_path):
    """A tarball that is not the pinned one is refused before anything is unpacked."""
    tarball = tmp_path / Path(helmtool.tarball_url()).name
    tarball.write_bytes(b"\0" * helmtool.TARBALL_SIZE)
    with pytest.raises(helmtool.HelmFetchError, match="checksum mismatch"):
        helmtool.helm_binary(tmp_path)
    assert not (tmp_path / f"helm-{HELM_VERSION}").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_strict(helm, tmp_path, case):
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values_args(CASES[case], tmp_path), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith(("[WARNING]", "[ERROR]"))]
    assert not problems, problems


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_validate(rendered, case):
    objs = rendered[case]
    assert objs, "nothing rendered"
    names = set()
    for obj in objs:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        assert key not in names, f"{key} rendered twice"
        names.add(key)
        if obj["kind"] in CRD_KINDS:
            jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]], cls=jsonschema.Draft7Validator)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: "
                            f"{err.message} at {'.'.join(map(str, err.absolute_path))}")


def test_crd_schemas_reject_a_typo(rendered):
    """The hand-written CRD schemas are strict enough to catch a misspelt field."""
    monitor = json.loads(json.dumps(one(rendered["service-monitor"], "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    with pytest.raises(jsonschema.ValidationError, match="honourLabels"):
        jsonschema.validate(monitor, CRD_SCHEMAS["ServiceMonitor"], cls=jsonschema.Draft7Validator)
    rule = json.loads(json.dumps(one(rendered["prometheus-rule"], "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, CRD_SCHEMAS["PrometheusRule"], cls=jsonschema.Draft7Validator)


# --- the agent's pod --------------------------------------------------------------

def test_default_daemonset_runs_on_gpu_nodes_only(rendered):
    objs = rendered["defaults"]
    assert "Deployment" not in kinds(objs)
    spec = pod_spec(objs)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    exprs = [t["matchExpressions"] for t in terms]
    assert [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}] in exprs
    assert [{"key": "feature.node.kubernetes.io/pci-10de.present", "operator": "In", "values": ["true"]}] in exprs
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in spec["tolerations"]
    assert "runtimeClassName" not in spec and spec["priorityClassName"] == "system-node-critical"
    assert "hostPID" not in spec and "hostNetwork" not in spec


def test_default_daemonset_security_and_probes(rendered):
    spec = pod_spec(rendered["defaults"])
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # root, for the kubelet's root-owned 0755 socket; every capability dropped
    assert spec["securityContext"]["runAsUser"] == 0 and spec["securityContext"]["runAsNonRoot"] is False
    container = agent_container(rendered["defaults"])
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc
    assert container["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi"}}


def test_default_daemonset_mounts_and_env(rendered):
    objs = rendered["defaults"]
    spec, container = pod_spec(objs), agent_container(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    pod_resources = mounts["/var/lib/kubelet/pod-resources"]
    assert pod_resources["readOnly"] is True
    # kubernetes: auto: a node without the kubelet's directory still runs the agent
    assert volumes[pod_resources["name"]]["hostPath"] == {"path": "/var/lib/kubelet/pod-resources",
                                                          "type": "DirectoryOrCreate"}
    data = mounts["/var/lib/gpuledger"]
    assert not data.get("readOnly"), "the ledger is written"
    assert volumes[data["name"]]["hostPath"] == {"path": "/var/lib/gpuledger", "type": "DirectoryOrCreate"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    assert spec["automountServiceAccountToken"] is True


def test_default_agent_args(rendered):
    args = agent_container(rendered["defaults"])["args"]
    assert args[0] == "agent"
    assert flags(args) == {
        "--listen": "0.0.0.0:9400", "--node": "$(NODE_NAME)", "--interval": "1s",
        "--ledger-dir": "/var/lib/gpuledger/ledger", "--kubernetes": "auto",
        "--kubelet-socket": "/var/lib/kubelet/pod-resources/kubelet.sock", "--processes": "off",
        "--price-cache": "/var/lib/gpuledger/price-cache", "--price-refresh": "1h", "--log-level": "info",
        "--serving": "auto", "--serving-interval": "15s", "--ledger-keep-days": "35", "--account-every": "10s",
    }


def test_processes_on_sets_host_pid(rendered):
    spec = pod_spec(rendered["processes-on"])
    assert spec["hostPID"] is True
    assert flags(agent_container(rendered["processes-on"])["args"])["--processes"] == "on"
    assert "hostPID" not in pod_spec(rendered["defaults"])


def test_priority_and_runtime_class(rendered):
    spec = pod_spec(rendered["priority-class"])
    assert spec["priorityClassName"] == "gpu-agents"
    assert spec["runtimeClassName"] == "nvidia"
    assert "ResourceQuota" not in kinds(rendered["priority-class"]), "a class of your own needs no quota"


def test_the_agent_is_node_critical_by_default_with_the_quota_that_admits_it(rendered):
    """Evicted last, scheduled on a full node; GKE admits the system-* classes outside
    kube-system only with a ResourceQuota scoped to them, which the chart renders."""
    objs = rendered["defaults"]
    assert pod_spec(objs)["priorityClassName"] == "system-node-critical"
    quota = one(objs, "ResourceQuota")
    assert quota["metadata"]["namespace"] == "gpuledger"
    assert quota["spec"]["scopeSelector"] == {"matchExpressions": [
        {"operator": "In", "scopeName": "PriorityClass", "values": ["system-node-critical"]}]}
    assert int(quota["spec"]["hard"]["pods"]) >= 1000
    opted_out = rendered["no-priority-class"]
    assert "priorityClassName" not in pod_spec(opted_out) and "ResourceQuota" not in kinds(opted_out)
    assert "ResourceQuota" not in kinds(rendered["dry-run"])


def test_kubernetes_on_insists_on_the_kubelet_directory(rendered):
    spec = pod_spec(rendered["kubernetes-on"])
    (volume,) = [v for v in spec["volumes"] if v["name"] == "pod-resources"]
    assert volume["hostPath"] == {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}


def test_cloud_pricing_flags_and_service_account(rendered):
    objs = rendered["cloud-pricing"]
    f = flags(agent_container(objs)["args"])
    assert all(f[s.flag] is True for s in PRICE_SOURCES) and f["--price-refresh"] == "30m"
    sa = one(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == CASES["cloud-pricing"]["serviceAccount"]["annotations"]
    assert pod_spec(objs)["serviceAccountName"] == sa["metadata"]["name"]
    assert {s.flag for s in PRICE_SOURCES}.isdisjoint(flags(agent_container(rendered["defaults"])["args"]))
    # the agent's args name the sources in the registry's order, as `gpuledger agent --help` does
    args = agent_container(objs)["args"]
    assert [a for a in args if a in {s.flag for s in PRICE_SOURCES}] == [s.flag for s in PRICE_SOURCES]


def test_the_charts_price_sources_are_the_registrys():
    """pricing.<name> in values.yaml, the schema and the template for exactly the sources
    of collectors/pricing/sources.py: a source added there and not here fails."""
    names = [s.name for s in PRICE_SOURCES]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["pricing"]
    assert [k for k in values if k != "refresh"] == names
    assert all(values[n] is False for n in names), "every cloud price source is off by default"
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["pricing"]["properties"]
    assert [k for k in schema if k != "refresh"] == names
    assert all(schema[n] == {"type": "boolean"} for n in names)
    template = (CHART / "templates" / "_helpers.tpl").read_text()
    switched = re.findall(r"\{\{-? if \.Values\.pricing\.(\w+) \}\}\s*- --(\w+)", template)
    assert switched == [(n, n) for n in names]
    documented = {key for key, _ in documented_values()}
    assert {f"pricing.{n}" for n in names} <= documented


def test_kubernetes_off_mounts_no_kubelet_dir(rendered):
    objs = rendered["kubernetes-off"]
    container = agent_container(objs)
    assert flags(container["args"])["--kubernetes"] == "off"
    assert "--kubelet-socket" not in flags(container["args"])
    assert all("pod-resources" not in m["mountPath"] for m in container["volumeMounts"])


def test_privileged_drops_the_limits_it_contradicts(rendered):
    objs = rendered["privileged-gke"]
    sc = agent_container(objs)["securityContext"]
    assert sc == {"privileged": True, "readOnlyRootFilesystem": True}
    container = agent_container(objs)
    assert {"name": "LD_LIBRARY_PATH", "value": "/usr/local/nvidia/lib64"} in container["env"]
    assert {"name": "nvidia", "mountPath": "/usr/local/nvidia", "readOnly": True} in container["volumeMounts"]


def test_existing_service_account_without_rbac(rendered):
    objs = rendered["no-rbac-own-sa"]
    assert not {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"} & set(kinds(objs))
    assert pod_spec(objs)["serviceAccountName"] == "existing"


def test_pod_annotations_labels_and_extra_args(rendered):
    ds = one(rendered["everything"], "DaemonSet")
    meta = ds["spec"]["template"]["metadata"]
    assert meta["annotations"]["example.com/owner"] == "platform" and meta["annotations"]["example.com/tier"] == "infra"
    assert meta["annotations"]["prometheus.io/scrape"] == "true" and "checksum/config" in meta["annotations"]
    assert meta["labels"]["example.com/team"] == "platform"
    assert ds["spec"]["selector"]["matchLabels"].items() <= meta["labels"].items()
    assert agent_container(rendered["everything"])["args"][-1] == "--report-out=/var/lib/gpuledger/reports"


def test_image_digest_wins_over_tag(rendered):
    assert agent_container(rendered["everything"])["image"] == "ghcr.io/gpuledger/gpuledger@sha256:" + "ab" * 32
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert agent_container(rendered["defaults"])["image"] == f"ghcr.io/gpuledger/gpuledger:{chart['appVersion']}"


# --- dry-run ----------------------------------------------------------------------

def test_dry_run_is_one_plain_pod_with_the_trace(rendered):
    objs = rendered["dry-run"]
    ks = kinds(objs)
    assert "DaemonSet" not in ks and ks["Deployment"][0]["spec"]["replicas"] == 1
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(ks), "dry-run reads no Kubernetes API"
    spec, container = pod_spec(objs), agent_container(objs)
    for field in ("affinity", "tolerations", "runtimeClassName", "hostPID", "priorityClassName", "nodeSelector"):
        assert field not in spec, field
    assert all("hostPath" not in v for v in spec["volumes"])
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 65532
    env = {e["name"] for e in container["env"]}
    assert not env & {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
    f = flags(container["args"])
    assert f["--dry-run"] is True and f["--trace"] == "/trace/demo-trace.jsonl.gz" and f["--speed"] == "60"
    for live_only in ("--kubernetes", "--kubelet-socket", "--processes", "--node", "--aws", "--gcp"):
        assert live_only not in f
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/trace")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    trace_cm = one(objs, "ConfigMap")
    assert volume["configMap"]["name"] == trace_cm["metadata"]["name"]
    data = base64.b64decode(trace_cm["binaryData"]["demo-trace.jsonl.gz"])
    assert data == (CHART / "files" / "demo-trace.jsonl.gz").read_bytes()


def test_dry_run_with_own_trace_configmap(rendered):
    objs = rendered["dry-run-own-trace"]
    assert "ConfigMap" not in kinds(objs)
    spec, container = pod_spec(objs), agent_container(objs)
    assert {"name": "trace", "configMap": {"name": "my-trace"}} in spec["volumes"]
    f = flags(container["args"])
    assert f["--trace"] == "/trace/t.jsonl.gz" and f["--speed"] == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def run_pod_command(objs: list[dict], tmp_path: Path, until: str, timeout_s: float = 60.0,
                    metrics_with: str = "") -> tuple[str, int]:
    """Run the agent container's command line of a rendered pod, with its mounts mapped to
    local directories, until ``until`` (a path) answers 200 and /metrics holds
    ``metrics_with`` (the agent serves before its first cycle ends); return /metrics and
    the status of /readyz. Then stop it with SIGTERM, as the kubelet does, and expect exit 0."""
    container = agent_container(objs)
    port = free_port()
    mapping = {"/trace/": str(CHART / "files") + "/", "/var/lib/gpuledger/": f"{tmp_path}/data/",
               "/var/lib/kubelet/pod-resources/": f"{tmp_path}/pod-resources/",
               "/etc/gpuledger/": f"{tmp_path}/etc/"}
    (tmp_path / "etc").mkdir()
    for cm in kinds(objs).get("ConfigMap", []):
        for key, text in (cm.get("data") or {}).items():
            (tmp_path / "etc" / key).write_text(text)
    args = []
    for arg in container["args"]:
        for inside, outside in mapping.items():
            arg = arg.replace(inside, outside)
        arg = arg.replace(f"0.0.0.0:{container['ports'][0]['containerPort']}", f"127.0.0.1:{port}")
        args.append(arg.replace("$(NODE_NAME)", "test-node"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e}, NODE_NAME="test-node")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())",
                             *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = http_get(f"http://127.0.0.1:{port}{until}")
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(0.3)
        assert status == 200, f"{until} never answered 200 (last {status}); agent exited {proc.poll()}"
        status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        while metrics_with not in metrics and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        ready, _ = http_get(f"http://127.0.0.1:{port}/readyz")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "SIGTERM should end the agent cleanly"
        return metrics, ready
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=10)[0]
        print(output)


def test_dry_run_pod_command_runs_the_agent(helm, tmp_path):
    """The dry-run pod's exact command line (mounts mapped to local paths) runs the real
    agent on the bundled trace, with the chart's config and rate card, and serves per-team cost."""
    objs = render(helm, {"dryRun": {"enabled": True, "speed": 3600}, "config": EXAMPLE_CONFIG,
                         "rateCard": EXAMPLE_RATES}, tmp_path / "values")
    metrics, _ = run_pod_command(objs, tmp_path, "/readyz")
    assert 'gpuledger_build_info{mode="dry-run"' in metrics
    assert re.search(r'^gpuledger_gpu_cost_total\{.*team="ml-research".*\} [0-9.e+]+$', metrics, re.M), metrics[:2000]
    # p4d.24xlarge at 21.96/h for 8 GPUs: the rendered rate card's price, not the snapshot's
    assert re.search(r'^gpuledger_gpu_hourly_price\{.*instance_type="p4d.24xlarge".*source="rate-card".*\} 2.745$',
                     metrics, re.M), "the rate card is used"
    assert list((tmp_path / "data" / "ledger").rglob("*.jsonl.gz")), "the ledger is written under the data volume"


def test_live_pod_command_starts_the_agent(helm, tmp_path):
    """The live DaemonSet's command line, every option on, starts the agent (no GPU here:
    alive on /healthz, not ready, NVML's absence counted)."""
    objs = render(helm, CASES["everything"], tmp_path / "values")
    metrics, ready = run_pod_command(objs, tmp_path, "/healthz",
                                     metrics_with='gpuledger_collector_errors_total{collector="nvml"')
    assert 'gpuledger_build_info{mode="live"' in metrics
    assert ready == 503, "not ready without NVML"
    assert 'gpuledger_collector_errors_total{collector="nvml"' in metrics


def test_bundled_trace_is_a_trace_gpuledger_replays(tmp_path):
    """The demo trace is small enough for a ConfigMap and replays to per-team costs."""
    trace = CHART / "files" / "demo-trace.jsonl.gz"
    assert trace.stat().st_size < 256 * 1024, "a ConfigMap holds at most 1 MiB, and the release keeps it twice"
    first = json.loads(gzip.decompress(trace.read_bytes()).split(b"\n", 1)[0])
    assert first["kind"] == "meta" and first["version"] == 1
    proc = gpuledger("replay", str(trace), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    text = json.dumps(summary)
    for team in ("ml-research", "recsys", "search", "genai", "platform"):
        assert f'"{team}"' in text, team


def test_release_fits_in_a_helm_release_secret(rendered):
    """Helm keeps a release (chart files, values, manifest) gzipped and base64'd in one Secret (< 1 MiB)."""
    files = {str(p.relative_to(CHART)): base64.b64encode(p.read_bytes()).decode()
             for p in CHART.rglob("*") if p.is_file()}
    manifest = "\n---\n".join(yaml.safe_dump(o) for o in rendered["dry-run"] + rendered["everything"])
    blob = base64.b64encode(gzip.compress(json.dumps({"chart": files, "manifest": manifest}).encode()))
    assert len(blob) < 768 * 1024, len(blob)


# --- Service, ServiceMonitor, RBAC ------------------------------------------------

@pytest.mark.parametrize("case", ["defaults", "dry-run"])
def test_service_selects_the_agent_pods(rendered, case):
    objs = rendered[case]
    service = one(objs, "Service")
    workload = [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")][0]
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9400, "targetPort": "metrics", "protocol": "TCP"}]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9400"


def test_service_monitor(rendered):
    objs = rendered["service-monitor"]
    monitor, service = one(objs, "ServiceMonitor"), one(objs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["gpuledger"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["honorLabels"] is True, "the metrics' namespace/pod labels are the workload's"
    assert "ServiceMonitor" not in kinds(rendered["defaults"])


def test_cluster_role_is_read_only_and_least_privilege(rendered):
    objs = rendered["defaults"]
    role, binding = one(objs, "ClusterRole"), one(objs, "ClusterRoleBinding")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    assert rules == {
        (("",), ("pods", "nodes")): ["get", "list", "watch"],
        (("apps",), ("replicasets", "statefulsets")): ["get"],
        (("batch",), ("jobs",)): ["get"],
        (("ray.io",), ("rayclusters",)): ["get"],
    }
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = one(objs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "gpuledger"}]


def test_owner_lookups_match_the_code():
    """rbac.ownerLookups grants GET on exactly the kinds collectors/owners.py looks up."""
    from collectors.owners import DEFAULT_LOOKUP_KINDS, KNOWN_KINDS
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    granted = {(rule["apiGroup"], res) for rule in values["rbac"]["ownerLookups"] for res in rule["resources"]}
    needed = {(KNOWN_KINDS[k][0].split("/")[0], KNOWN_KINDS[k][1]) for k in DEFAULT_LOOKUP_KINDS}
    assert granted == needed


# --- config, rate card, report, dashboards -----------------------------------------

def test_config_and_rate_card_configmap_is_read_by_gpuledger(rendered, tmp_path):
    objs = rendered["config-and-rates"]
    cm = one(objs, "ConfigMap")
    assert yaml.safe_load(cm["data"]["rates.yaml"]) == EXAMPLE_RATES
    assert yaml.safe_load(cm["data"]["config.yaml"]) == EXAMPLE_CONFIG
    (tmp_path / "config.yaml").write_text(cm["data"]["config.yaml"])
    (tmp_path / "rates.yaml").write_text(cm["data"]["rates.yaml"])
    proc = gpuledger("config", str(tmp_path / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    proc = gpuledger("prices", "show", "--node-labels", "node.kubernetes.io/instance-type=p4d.24xlarge",
                     "--rates", str(tmp_path / "rates.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "price: 2.745 USD per GPU-hour" in proc.stdout  # 21.96 / 8 GPUs, from the rendered card
    container, spec = agent_container(objs), pod_spec(objs)
    f = flags(container["args"])
    assert f["--config"] == "/etc/gpuledger/config.yaml" and f["--rates"] == "/etc/gpuledger/rates.yaml"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/gpuledger")
    assert {"name": mount["name"], "configMap": {"name": cm["metadata"]["name"]}} in spec["volumes"]
    assert "--config" not in flags(agent_container(rendered["defaults"])["args"])
    assert "ConfigMap" not in kinds(rendered["defaults"])


def test_config_change_rolls_the_agents(helm, tmp_path):
    def checksum(values):
        objs = render(helm, values, tmp_path)
        ds = one(objs, "DaemonSet")
        return ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    a = checksum({"config": {"namespace_teams": {"research": "ml-research"}}})
    b = checksum({"config": {"namespace_teams": {"research": "search"}}})
    assert a != b


def test_report_cronjob_with_claim(rendered):
    objs = rendered["report-pvc"]
    cron = one(objs, "CronJob")
    assert cron["spec"]["schedule"] == "0 6 * * 1" and cron["spec"]["timeZone"] == "Europe/Berlin"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "report"
    assert flags(container["args"]) == {"--prometheus": "http://prometheus-operated.monitoring:9090", "--since": "7d",
                                        "--rates": "/etc/gpuledger/rates.yaml"}
    reports = next(m for m in container["volumeMounts"] if m["mountPath"] == "/reports")
    volume = next(v for v in pod["volumes"] if v["name"] == reports["name"])
    assert volume == {"name": reports["name"], "persistentVolumeClaim": {"claimName": "gpuledger-reports"}}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}, "a runaway report is capped"


def test_report_enabled_without_a_url_says_so(helm, tmp_path):
    """The chart's own message, not a schema error about string lengths."""
    proc = run_helm(helm, "template", "gpuledger", str(CHART), *values_args({"report": {"enabled": True}}, tmp_path),
                    check=False)
    assert proc.returncode != 0
    assert "report.prometheusUrl is required when the report reads Prometheus" in proc.stderr, proc.stderr
    assert "schema" not in proc.stderr, proc.stderr
    lint = run_helm(helm, "lint", str(CHART), *values_args({"report": {"enabled": True}}, tmp_path), check=False)
    assert "report.prometheusUrl is required when the report reads Prometheus" in lint.stdout + lint.stderr
    assert "schema" not in lint.stdout + lint.stderr


@pytest.mark.parametrize("case", ["everything", "dry-run"])
def test_rendered_comments_read_whole(helm, tmp_path, case):
    """No comment in a rendered manifest breaks a command across lines, so none starts
    mid-command: every inline `code` span opens and closes on its line."""
    out = run_helm(helm, "template", "gpuledger", str(CHART), *values_args(CASES[case], tmp_path)).stdout
    comments = [line.strip() for line in out.splitlines() if line.strip().startswith("#")
                and not line.strip().startswith("# Source:")]
    assert comments
    for line in comments:
        assert line.count("`") % 2 == 0 and not line.startswith("# --"), line


def test_report_command_writes_a_dated_directory(rendered, tmp_path):
    """The CronJob's shell wrapper, run by a real /bin/sh, calls gpuledger with the
    chart's arguments and --out=/reports/<UTC date>, whatever characters the arguments hold."""
    cron = one(rendered["report-pvc"], "CronJob")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    fake = tmp_path / "gpuledger"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    args = container["args"] + ["--anomaly-min-cost=5 $(echo injected)"]
    days = {time.strftime("%Y-%m-%d", time.gmtime())}
    proc = subprocess.run([*container["command"], *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    days.add(time.strftime("%Y-%m-%d", time.gmtime()))  # in case the run straddled midnight
    assert proc.returncode == 0, proc.stderr
    *passed, out = proc.stdout.splitlines()
    assert passed == args
    assert out in {f"--out=/reports/{day}" for day in days}, out


def test_report_cronjob_without_claim_uses_emptydir(rendered):
    cron = one(rendered["report-emptydir"], "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["spec"]["timeZone"] == "UTC"
    assert {"name": "reports", "emptyDir": {}} in pod["volumes"]
    assert "--rates" not in flags(pod["containers"][0]["args"])


def _report_pod(objs: list[dict]) -> dict:
    cron = next(o for o in objs if o["kind"] == "CronJob" and o["metadata"]["name"].endswith("-report"))
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_with_the_gatherer_on_the_report_reads_its_dataset_from_the_claim_read_only(rendered):
    pod = _report_pod(rendered["report-ledger"])
    (container,) = pod["containers"]
    assert flags(container["args"]) == {"--ledger": "/dataset/fleet", "--since": "7d"}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dataset")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": "fleet-ledger", "readOnly": True}
    gather = _gather_pod(rendered["report-ledger"])
    assert next(v for v in gather["volumes"] if v["name"] == "dataset")["persistentVolumeClaim"]["claimName"] == \
        "fleet-ledger", "the report reads the claim the gatherer writes"
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod


def test_with_an_s3_dataset_the_report_has_the_gatherers_identity_endpoint_and_environment(rendered):
    objs = rendered["report-ledger-s3"]
    pod = _report_pod(objs)
    (container,) = pod["containers"]
    assert flags(container["args"]) == {"--ledger": "s3://fleet-ledger/gpuledger", "--s3-endpoint": "http://minio:9000",
                                        "--since": "7d"}
    assert container["env"] == [{"name": "AWS_REGION", "value": "eu-west-1"}]
    assert not [m for m in container["volumeMounts"] if m["mountPath"] == "/dataset"]
    assert pod["serviceAccountName"] == _gather_pod(objs)["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is False, "no Kubernetes API token: the report makes no API call"


def test_the_report_can_still_read_prometheus_beside_a_gatherer(rendered):
    (container,) = _report_pod(rendered["report-prometheus-beside-gather"])["containers"]
    assert flags(container["args"]) == {"--prometheus": "http://prometheus:9090", "--since": "7d"}


@pytest.mark.parametrize("values, says", [
    ({"report": {"enabled": True}, "gather": {"enabled": True}}, "set gather.existingClaim or an s3:// gather.out"),
    ({"report": {"enabled": True, "source": "ledger"}}, "set gather.enabled=true, or report.source=prometheus"),
])
def test_a_report_that_could_not_read_the_dataset_is_refused_by_name(helm, tmp_path, values, says):
    proc = run_helm(helm, "template", "gpuledger", str(CHART), *values_args(values, tmp_path), check=False)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr


def test_dashboard_configmap(rendered):
    cm = one(rendered["dashboards"], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "GPU"}
    dashboard = json.loads(cm["data"]["gpuledger.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "gpuledger.json").read_text())
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("by team", "idle cost", "unallocated cost", "utilisation", "energy", "carbon"):
        assert topic in titles, topic


def test_prometheus_rule_budgets_and_dry_run(rendered):
    rule = one(rendered["prometheus-rule"], "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    budget = [a for a in alerts if a["alert"] == "GpuledgerTeamBudgetForecast"]
    assert len(budget) == 2 * 2  # two teams x two thresholds
    assert {"GpuledgerAgentDown", "GpuledgerAgentAbsent", "GpuledgerAgentStale"} <= {a["alert"] for a in alerts}
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dry = one(rendered["prometheus-rule-dry-run"], "PrometheusRule")
    dry_alerts = {r.get("alert") for g in dry["spec"]["groups"] for r in g["rules"]}
    assert "GpuledgerAgentStale" not in dry_alerts, "trace time is not wall time in dry-run"
    assert "GpuledgerAgentDown" in dry_alerts


# --- values.schema.json -----------------------------------------------------------

BAD_VALUES = [
    ({"agent": {"kubernetes": "maybe"}}, "agent.kubernetes"),
    ({"agent": {"interval": "often"}}, "agent.interval"),
    ({"agent": {"accountEvery": "soon"}}, "agent.accountEvery"),
    ({"agent": {"runAsUser": -1}}, "agent.runAsUser"),
    ({"agnet": {"processes": True}}, "agnet"),
    ({"metrics": {"port": 70000}}, "metrics.port"),
    ({"prometheusRule": {"budgets": {"ml-research": -5}}}, "prometheusRule.budgets.ml-research"),
    ({"prometheusRule": {"burnRateWindow": "six hours"}}, "prometheusRule.burnRateWindow"),
    ({"report": {"schedule": "every monday"}}, "report.schedule"),
    ({"dryRun": {"speed": 0}}, "dryRun.speed"),
    ({"image": {"digest": "latest"}}, "image.digest"),
    ({"rateCard": {"gpus": {"NVIDIA L4": 0.8}}}, "rateCard"),
]


@pytest.mark.parametrize("values,field", BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_schema_rejects_bad_values(helm, tmp_path, values, field):
    for command in (["lint", "--strict", str(CHART)], ["template", "gpuledger", str(CHART)]):
        proc = run_helm(helm, *command, *values_args(values, tmp_path), check=False)
        assert proc.returncode != 0, f"helm {command[0]} accepted {values}"
        out = proc.stdout + proc.stderr
        assert "don't meet the specifications of the schema" in out and field in out, out


# --- NOTES.txt --------------------------------------------------------------------

def render_notes(helm, values, tmp_path) -> str:
    """NOTES.txt rendered by helm: `helm template` leaves it out, so render a copy of the
    chart where it is wrapped in a named template."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_test.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes-test.yaml").write_text('notes: {{ include "test.notes" . | toJson }}\n')
    out = run_helm(helm, "template", "gpuledger", str(chart), "-n", "gpuledger",
                   "--show-only", "templates/notes-test.yaml", *values_args(values, tmp_path)).stdout
    return yaml.safe_load(out)["notes"]


def test_notes_say_when_the_image_is_the_unpublished_default(helm, tmp_path):
    default = render_notes(helm, {}, tmp_path / "a")
    assert "IMAGE: ghcr.io/gpuledger/gpuledger:" in default and "--set image.repository=" in default
    own = render_notes(helm, {"image": {"repository": "registry.example.com/gpuledger", "tag": "0.1.0"}},
                       tmp_path / "b")
    assert "IMAGE:" not in own


def _commands(text: str, program: str) -> list[str]:
    """Shell commands starting with ``program`` in the sh blocks of a Markdown text,
    continuation lines joined."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [line.strip() for line in joined.splitlines() if line.strip().startswith(program)]
    return out


@pytest.mark.parametrize("doc", ["docs/helm.md", "helm/gpuledger/README.md"])
def test_every_documented_install_names_the_image_the_user_built(doc):
    """No registry publishes the image: every `helm install` sets image.repository and
    image.tag, to the name a `docker build -t` of the same block gave it."""
    text = (REPO / doc).read_text()
    installs = _commands(text, "helm install")
    assert installs
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        built = set(re.findall(r"docker build -t (\S+) \.", joined))
        for command in (line for line in joined.splitlines() if line.strip().startswith("helm install")):
            repo = re.search(r"--set image\.repository=(\S+)", command)
            tag = re.search(r"--set image\.tag=(\S+)", command)
            assert repo and tag, command
            assert f"{repo[1]}:{tag[1]}" in built, (command, built)


def test_notes(helm, tmp_path):
    live = render_notes(helm, CASES["everything"], tmp_path / "a")
    assert "rollout status daemonset/gpuledger" in live
    assert "sum by (team) (rate(gpuledger_gpu_cost_total[1h])) * 3600" in live
    assert "create job --from=cronjob/gpuledger-report" in live
    assert "budgets for ml-research" in live
    dry = render_notes(helm, CASES["dry-run"], tmp_path / "b")
    assert "DRY-RUN" in dry and "deployment/gpuledger" in dry and "daemonset" not in dry
    assert "honor_labels: true" in dry


# --- docs/helm.md and values.yaml agree -------------------------------------------

def test_every_value_is_documented_in_values_yaml():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = {key for key, _ in documented_values()}
    for leaf in leaf_keys(values):
        parts = leaf.split(".")
        assert any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)), \
            f"{leaf} has no '# --' description in values.yaml"


def test_docs_hold_the_values_table():
    docs = (REPO / "docs" / "helm.md").read_text()
    assert values_table() in docs, "docs/helm.md is out of date: paste `python -m tests.helmtool values-table`"


def test_schema_knows_every_value():
    """values.schema.json describes every documented value (and forbids others)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    for key, _ in documented_values():
        node = schema
        for part in key.split("."):
            assert node.get("additionalProperties") is False or "properties" in node, key
            node = node["properties"][part]


# --- the flags the chart passes exist in the CLI ------------------------------------

@pytest.mark.parametrize("command,case,container_of", [
    ("agent", "everything", lambda objs: agent_container(objs)),
    ("agent", "dry-run", lambda objs: agent_container(objs)),
    ("report", "report-pvc",
     lambda objs: one(objs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]),
    ("gather", "gather",
     lambda objs: one(objs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]),
    ("gather", "gather-every", lambda objs: _gather_deployment(objs)["spec"]["template"]["spec"]["containers"][0]),
])
def test_rendered_flags_exist_in_the_cli(rendered, command, case, container_of):
    args = container_of(rendered[case])["args"]
    assert args[0] == command
    helptext = gpuledger(command, "--help")
    assert helptext.returncode == 0, helptext.stderr
    known = set(re.findall(r"--[a-z][a-z0-9-]*", helptext.stdout))
    missing = [f for f in flags(args) if f not in known]
    assert not missing, f"gpuledger {command} has no {missing}"


def _gather_pod(objs: list[dict]) -> dict:
    cron = next(o for o in objs if o["kind"] == "CronJob" and o["metadata"]["name"].endswith("-gather"))
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("case", ["gather", "gather-dry-run"])
def test_gather_finds_this_releases_agents_with_a_role_that_only_lists_pods(rendered, case):
    objs = rendered[case]
    pod = _gather_pod(objs)
    (container,) = pod["containers"]
    args = flags(container["args"])
    assert container["args"][0] == "gather" and args["--kubernetes"] is True
    assert args["--namespace"] == "gpuledger" and args["--port"] == "9400"
    selector = dict(kv.split("=") for kv in args["--selector"].split(","))
    agent_labels = [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")][0]["spec"]["template"]["metadata"][
        "labels"]
    assert selector.items() <= agent_labels.items()
    role = one(objs, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    binding = one(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"] == role["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_gather_writes_into_the_claim_and_both_sides_mount_the_token(rendered):
    objs = rendered["gather"]
    pod = _gather_pod(objs)
    (container,) = pod["containers"]
    args = flags(container["args"])
    assert args["--out"] == "/dataset" and args["--token-file"] == "/etc/gpuledger-ledger-token/bearer"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dataset"]["persistentVolumeClaim"]["claimName"] == "fleet-ledger"
    assert volumes["ledger-token"]["secret"]["secretName"] == "ledger-token"
    agent = agent_container(objs)
    agent_args = flags(agent["args"])
    assert agent_args["--ledger-token-file"] == "/etc/gpuledger-ledger-token/bearer"
    assert agent_args["--ledger-keep-days"] == "21"
    assert {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}["ledger-token"] == "/etc/gpuledger-ledger-token"
    assert {v["name"]: v for v in pod_spec(objs)["volumes"]}["ledger-token"]["secret"]["secretName"] == "ledger-token"


def test_gather_to_s3_and_off_by_default(rendered):
    pod = _gather_pod(rendered["gather-s3"])
    args = flags(pod["containers"][0]["args"])
    assert args["--out"] == "s3://fleet-ledger/gpuledger" and args["--s3-endpoint"] == "http://minio:9000"
    assert "--token-file" not in args
    accounts = [o for o in rendered["gather-s3"] if o["kind"] == "ServiceAccount"
                and o["metadata"]["name"].endswith("-gather")]
    assert accounts[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/ledger")
    defaults = rendered["defaults"]
    assert not [o for o in defaults if o["metadata"]["name"].endswith("-gather")]
    assert "--ledger-token-file" not in flags(agent_container(defaults)["args"])
    assert flags(agent_container(defaults)["args"])["--ledger-keep-days"] == "35"


def _gather_deployment(objs: list[dict]) -> dict:
    (deployment,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gather")]
    return deployment


def test_gather_every_is_one_looping_gatherer_with_metrics_instead_of_the_cronjob(rendered):
    objs = rendered["gather-every"]
    assert not [o for o in objs if o["kind"] == "CronJob" and o["metadata"]["name"].endswith("-gather")]
    deployment = _gather_deployment(objs)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()
    assert pod["restartPolicy"] == "Always"
    (container,) = pod["containers"]
    args = flags(container["args"])
    assert args["--every"] == "15m" and args["--listen"] == "0.0.0.0:9401" and args["--kubernetes"] is True
    assert args["--out"] == "/dataset" and args["--token-file"] == "/etc/gpuledger-ledger-token/token"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9401}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {v["name"]: v for v in pod["volumes"]}["dataset"]["persistentVolumeClaim"]["claimName"] == "fleet-ledger"
    # the agents are still found through the API server: the same Role, bound to the same account
    role = one(objs, "Role")
    assert one(objs, "RoleBinding")["subjects"][0]["name"] == pod["serviceAccountName"] == role["metadata"]["name"]
    # the CronJob's pod is the same but for the loop's flags, port and probes
    cron = _gather_pod(rendered["gather"])
    assert cron["restartPolicy"] == "Never" and "ports" not in cron["containers"][0]
    assert "--every" not in flags(cron["containers"][0]["args"])


def test_chart_refuses_kubernetes_older_than_1_27(helm):
    """CronJob.spec.timeZone is GA from 1.27: the chart says so in kubeVersion."""
    proc = run_helm(helm, "template", "gpuledger", str(CHART), "--kube-version", "1.26.9", check=False)
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr, proc.stderr
    run_helm(helm, "template", "gpuledger", str(CHART), "--kube-version", "1.27.0")


def test_chart_app_version_is_the_package_version():
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"]
