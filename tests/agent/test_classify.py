"""Team and workload-class rules, one case per rule, defaults and configured."""

from __future__ import annotations

import pytest

from agent.accounting.classify import Workload, team_of, workload_class_of, workload_of
from agent.config import Config, LabelRule
from collectors.records import Owner, Pod

DEFAULT = Config()


def pod(labels=None, owner=None, ns="research"):
    return Pod(uid="u", namespace=ns, name="p-0", labels=labels or {},
               owner=Owner(*owner) if owner else None)


@pytest.mark.parametrize("labels, ns, config, team", [
    ({"gpuledger.io/team": "a", "team": "b"}, "ns", DEFAULT, "a"),
    ({"team": "b"}, "ns", DEFAULT, "b"),
    ({}, "research", Config(namespace_teams={"research": "ml"}), "ml"),
    ({}, "research", DEFAULT, "research"),
    ({"team": ""}, "research", DEFAULT, "research"),
    ({"owner-team": "x", "team": "b"}, "ns", Config(team_labels=("owner-team",)), "x"),
])
def test_team(labels, ns, config, team):
    assert team_of(pod(labels, ns=ns), config) == team


@pytest.mark.parametrize("labels, owner, cls", [
    ({"gpuledger.io/workload-class": "interactive", "training.kubeflow.org/job-name": "x"}, ("PyTorchJob", "x"), "interactive"),
    ({"gpuledger.io/workload-class": "bogus"}, ("Deployment", "x"), "inference"),
    ({"training.kubeflow.org/job-name": "j"}, ("Deployment", "d"), "training"),
    ({"jobset.sigs.k8s.io/jobset-name": "j"}, None, "training"),
    ({"volcano.sh/job-name": "j"}, None, "training"),
    ({"serving.kserve.io/inferenceservice": "s"}, ("ReplicaSet", "r"), "inference"),
    ({"leaderworkerset.sigs.k8s.io/name": "l"}, None, "inference"),
    ({"app.kubernetes.io/managed-by": "k8s-nim-operator"}, None, "inference"),
    ({"app.kubernetes.io/managed-by": "helm"}, None, "other"),
    ({"notebook-name": "nb"}, None, "interactive"),
    ({"component": "singleuser-server"}, None, "interactive"),
    ({"ray.io/originated-from-crd": "RayJob"}, ("RayCluster", "c"), "training"),
    ({"ray.io/originated-from-crd": "RayService"}, ("RayCluster", "c"), "inference"),
    ({"ray.io/originated-from-crd": "RayCluster"}, ("RayCluster", "c"), "other"),
    *[({}, (k, "x"), "training") for k in ("PyTorchJob", "TFJob", "MPIJob", "XGBoostJob", "PaddleJob", "JAXJob", "TrainJob", "JobSet", "RayJob", "Job", "CronJob")],
    *[({}, (k, "x"), "inference") for k in ("Deployment", "ReplicaSet", "StatefulSet", "InferenceService", "RayService", "LeaderWorkerSet", "NIMService")],
    ({}, ("Notebook", "x"), "interactive"),
    ({}, ("DaemonSet", "x"), "other"),
    ({}, None, "other"),
])
def test_workload_class_defaults(labels, owner, cls):
    assert workload_class_of(pod(labels, owner), DEFAULT) == cls


def test_workload_class_configured():
    config = Config(workload_class_label="class", label_rules=(LabelRule("app", "inference", "llm"),),
                    owner_kind_classes={"Job": "other"})
    assert workload_class_of(pod({"class": "training", "app": "llm"}), config) == "training"
    assert workload_class_of(pod({"app": "llm"}), config) == "inference"
    assert workload_class_of(pod({"training.kubeflow.org/job-name": "x"}, ("Job", "j")), config) == "other"


def test_workload_is_the_owner_or_the_bare_pod():
    assert workload_of(pod(owner=("Deployment", "api"))) == Workload("research", "Deployment", "api")
    assert workload_of(pod()) == Workload("research", "Pod", "p-0")
