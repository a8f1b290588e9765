"""Realistic Kubernetes objects, in full, as the API server returns them.

Labels, ownerReferences and the shape of spec and status follow what the operators set:
Kubeflow's training operator, KServe (raw deployment mode), KubeRay (RayJob and
RayService), the Kubeflow notebook controller, a plain Deployment and a bare pod.
"""

from __future__ import annotations

import copy
from typing import Any

NODE = "gpu-node-1"
CREATED = "2026-11-20T09:58:12Z"


def _ref(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def _pod(
    namespace: str, name: str, uid: str, labels: dict[str, str], owners: list[dict[str, Any]],
    container: str, image: str, gpu_resource: str = "nvidia.com/gpu", gpus: int = 1,
    annotations: dict[str, str] | None = None, generate_name: str | None = None, phase: str = "Running",
) -> dict[str, Any]:
    """A whole pod object: metadata, spec and status as a 1.31 API server serves them."""
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace, "uid": uid, "resourceVersion": "48213377",
        "creationTimestamp": CREATED, "labels": labels, "annotations": annotations or {},
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                           "apiVersion": "v1", "time": CREATED, "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:metadata": {"f:labels": {}}}}],
    }
    if generate_name:
        meta["generateName"] = generate_name
    if owners:
        meta["ownerReferences"] = owners
    limits = {"cpu": "8", "memory": "64Gi", gpu_resource: str(gpus)}
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": meta,
        "spec": {
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "containers": [{
                "name": container, "image": image,
                "resources": {"limits": limits, "requests": dict(limits)},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": True,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Never" if phase != "Running" else "Always",
            "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "nodeName": NODE,
            "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": "2026-11-20T09:58:40Z"}],
            "hostIP": "10.0.12.34", "hostIPs": [{"ip": "10.0.12.34"}],
            "podIP": "10.0.13.7", "podIPs": [{"ip": "10.0.13.7"}], "startTime": CREATED,
            "containerStatuses": [{"name": container, "ready": True, "restartCount": 0,
                                   "image": image, "imageID": image + "@sha256:" + "ab" * 32,
                                   "containerID": "containerd://" + "cd" * 32, "started": True,
                                   "state": {"running": {"startedAt": "2026-11-20T09:58:39Z"}}}],
            "qosClass": "Guaranteed",
        },
    }


def pytorchjob_worker() -> dict[str, Any]:
    return _pod(
        "research", "llama-ft-worker-0", "8d3f6a7e-1c2b-4e5f-9a0b-1c2d3e4f5a6b",
        {"team": "ml-research", "training.kubeflow.org/job-name": "llama-ft",
         "training.kubeflow.org/job-role": "master", "training.kubeflow.org/operator-name": "pytorchjob-controller",
         "training.kubeflow.org/replica-index": "0", "training.kubeflow.org/replica-type": "worker"},
        [_ref("kubeflow.org/v1", "PyTorchJob", "llama-ft", "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b")],
        "pytorch", "ghcr.io/example/llama-ft:2.4", gpus=2,
        annotations={"sidecar.istio.io/inject": "false"},
    )


def kserve_predictor() -> dict[str, Any]:
    return _pod(
        "serving", "llama-chat-predictor-6b8f7d9c4f-x2v9k", "2a9c4e1f-5b6d-4c7e-8f90-a1b2c3d4e5f6",
        {"app": "isvc.llama-chat-predictor", "component": "predictor", "pod-template-hash": "6b8f7d9c4f",
         "serving.kserve.io/inferenceservice": "llama-chat", "gpuledger.io/team": "assistants"},
        [_ref("apps/v1", "ReplicaSet", "llama-chat-predictor-6b8f7d9c4f", "7e8f9a0b-1c2d-4e3f-8a5b-6c7d8e9f0a1b")],
        "kserve-container", "kserve/huggingfaceserver:v0.14.0",
        annotations={"serving.kserve.io/deploymentMode": "RawDeployment"},
        generate_name="llama-chat-predictor-6b8f7d9c4f-",
    )


def rayjob_worker() -> dict[str, Any]:
    cluster = "nightly-eval-raycluster-v5x6k"
    return _pod(
        "ray", f"{cluster}-gpu-group-worker-8ghzq", "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f",
        {"app.kubernetes.io/created-by": "kuberay-operator", "app.kubernetes.io/name": "kuberay",
         "ray.io/cluster": cluster, "ray.io/group": "gpu-group", "ray.io/identifier": f"{cluster}-worker",
         "ray.io/is-ray-node": "yes", "ray.io/node-type": "worker",
         "ray.io/originated-from-crd": "RayJob", "ray.io/originated-from-cr-name": "nightly-eval"},
        [_ref("ray.io/v1", "RayCluster", cluster, "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")],
        "ray-worker", "rayproject/ray:2.40.0-gpu", generate_name=f"{cluster}-gpu-group-worker-",
    )


def rayservice_worker() -> dict[str, Any]:
    """An older KubeRay's pod: no originated-from labels, so the RayCluster must be read."""
    cluster = "chat-serve-raycluster-k8q2w"
    return _pod(
        "ray", f"{cluster}-gpu-group-worker-tt5mn", "6d7e8f9a-0b1c-4d2e-9f3a-4b5c6d7e8f9a",
        {"app.kubernetes.io/created-by": "kuberay-operator", "app.kubernetes.io/name": "kuberay",
         "ray.io/cluster": cluster, "ray.io/group": "gpu-group", "ray.io/identifier": f"{cluster}-worker",
         "ray.io/is-ray-node": "yes", "ray.io/node-type": "worker", "ray.io/serve": "true",
         "team": "assistants"},
        [_ref("ray.io/v1", "RayCluster", cluster, "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e")],
        "ray-worker", "rayproject/ray:2.40.0-gpu", generate_name=f"{cluster}-gpu-group-worker-",
    )


def rayservice_cluster() -> dict[str, Any]:
    """The RayCluster a RayService made, as GET returns it (spec trimmed to its head)."""
    return {
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": {"name": "chat-serve-raycluster-k8q2w", "namespace": "ray",
                     "uid": "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e", "resourceVersion": "48100211",
                     "labels": {"ray.io/originated-from-crd": "RayService"},
                     "ownerReferences": [_ref("ray.io/v1", "RayService", "chat-serve", "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f")]},
        "spec": {"rayVersion": "2.40.0", "headGroupSpec": {"rayStartParams": {}}},
        "status": {"state": "ready"},
    }


def deployment_pod() -> dict[str, Any]:
    return _pod(
        "vision", "embedder-5f7c9d8b6-qz4lp", "3b4c5d6e-7f8a-4b9c-8d0e-1f2a3b4c5d6e",
        {"app": "embedder", "pod-template-hash": "5f7c9d8b6", "team": "vision"},
        [_ref("apps/v1", "ReplicaSet", "embedder-5f7c9d8b6", "4c5d6e7f-8a9b-4c0d-9e1f-2a3b4c5d6e7f")],
        "embedder", "ghcr.io/example/embedder:1.8", generate_name="embedder-5f7c9d8b6-",
    )


def notebook_pod() -> dict[str, Any]:
    return _pod(
        "kubeflow-alice", "alice-nb-0", "4d5e6f7a-8b9c-4d0e-8f1a-2b3c4d5e6f7a",
        {"app": "alice-nb", "controller-revision-hash": "alice-nb-7c9d5f8b6d", "notebook-name": "alice-nb",
         "statefulset": "alice-nb", "statefulset.kubernetes.io/pod-name": "alice-nb-0"},
        [_ref("apps/v1", "StatefulSet", "alice-nb", "5e6f7a8b-9c0d-4e1f-9a2b-3c4d5e6f7a8b")],
        "alice-nb", "kubeflownotebookswg/jupyter-pytorch-cuda-full:v1.9.0",
        gpu_resource="nvidia.com/mig-1g.10gb", generate_name="alice-nb-",
    )


def notebook_statefulset() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "alice-nb", "namespace": "kubeflow-alice",
                     "uid": "5e6f7a8b-9c0d-4e1f-9a2b-3c4d5e6f7a8b", "resourceVersion": "48000001",
                     "ownerReferences": [_ref("kubeflow.org/v1", "Notebook", "alice-nb", "6f7a8b9c-0d1e-4f2a-8b3c-4d5e6f7a8b9c")]},
        "spec": {"replicas": 1, "serviceName": "", "selector": {"matchLabels": {"statefulset": "alice-nb"}}},
        "status": {"replicas": 1, "readyReplicas": 1},
    }


def bare_pod() -> dict[str, Any]:
    return _pod(
        "sandbox", "cuda-debug", "7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d", {"run": "cuda-debug"}, [],
        "cuda-debug", "nvidia/cuda:12.6.2-base-ubuntu24.04", gpu_resource="nvidia.com/gpu.shared",
    )


def cronjob_pod() -> dict[str, Any]:
    return _pod(
        "batch", "nightly-finetune-29412360-7xk2d", "8b9c0d1e-2f3a-4b4c-8d5e-6f7a8b9c0d1e",
        {"batch.kubernetes.io/controller-uid": "9c0d1e2f-3a4b-4c5d-9e6f-7a8b9c0d1e2f",
         "batch.kubernetes.io/job-name": "nightly-finetune-29412360", "job-name": "nightly-finetune-29412360",
         "team": "ml-research"},
        [_ref("batch/v1", "Job", "nightly-finetune-29412360", "9c0d1e2f-3a4b-4c5d-9e6f-7a8b9c0d1e2f")],
        "finetune", "ghcr.io/example/finetune:0.3", phase="Running",
        generate_name="nightly-finetune-29412360-",
    )


def gpu_node(labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An EKS p4d node run by Karpenter, with GPU feature discovery's labels."""
    base = {
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/instance-type": "p4d.24xlarge",
        "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": NODE,
        "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "p4d.24xlarge",
        "topology.kubernetes.io/region": "us-east-1", "topology.kubernetes.io/zone": "us-east-1a",
        "karpenter.sh/capacity-type": "on-demand", "karpenter.sh/nodepool": "gpu",
        "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
        "nvidia.com/gpu.count": "8", "nvidia.com/gpu.memory": "40960", "nvidia.com/gpu.replicas": "1",
        "nvidia.com/mig.capable": "true", "nvidia.com/mig.strategy": "mixed",
        "nvidia.com/gfd.timestamp": "1763632800",
    }
    base.update(labels or {})
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": NODE, "uid": "0d1e2f3a-4b5c-4d6e-8f7a-8b9c0d1e2f3a", "resourceVersion": "48213001",
                     "creationTimestamp": "2026-11-19T22:01:55Z", "labels": base,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"providerID": "aws:///us-east-1a/i-0abc123def4567890",
                 "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]},
        "status": {"capacity": {"cpu": "96", "memory": "1176Gi", "nvidia.com/gpu": "8", "pods": "110"},
                   "allocatable": {"cpu": "95690m", "memory": "1167Gi", "nvidia.com/gpu": "8", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "nodeInfo": {"kubeletVersion": "v1.31.2-eks-7f9249a", "containerRuntimeVersion": "containerd://1.7.23"}},
    }


def on_node(pod: dict[str, Any], node: str) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["spec"]["nodeName"] = node
    return pod


ALL_PODS = {
    "pytorchjob": pytorchjob_worker,
    "kserve": kserve_predictor,
    "rayjob": rayjob_worker,
    "rayservice": rayservice_worker,
    "deployment": deployment_pod,
    "notebook": notebook_pod,
    "bare": bare_pod,
    "cronjob": cronjob_pod,
}
