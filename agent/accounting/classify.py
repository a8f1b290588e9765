"""Team, workload class and workload of a pod: pure functions of the pod and the config.

The rules are in ``docs/classification.md``; the defaults are in :mod:`agent.config`.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import CLASSES, Config
from collectors.records import Pod


@dataclass(frozen=True)
class Workload:
    """A workload is its top owner (namespace, kind, name), or the pod itself when bare."""

    namespace: str
    kind: str
    name: str


def team_of(pod: Pod, config: Config) -> str:
    """The first team label present, else the namespace's mapped team, else the namespace."""
    for label in config.team_labels:
        value = pod.labels.get(label)
        if value:
            return value
    return config.namespace_teams.get(pod.namespace, pod.namespace)


def workload_class_of(pod: Pod, config: Config) -> str:
    """training, inference, interactive or other; the first rule that matches wins."""
    explicit = pod.labels.get(config.workload_class_label)
    if explicit in CLASSES:
        return explicit  # type: ignore[return-value]
    for rule in config.label_rules:
        value = pod.labels.get(rule.label)
        if value is not None and (rule.value is None or value == rule.value):
            return rule.workload_class
    if pod.owner is not None:
        return config.owner_kind_classes.get(pod.owner.kind, "other")
    return "other"


def workload_of(pod: Pod) -> Workload:
    if pod.owner is None:
        return Workload(pod.namespace, "Pod", pod.name)
    return Workload(pod.namespace, pod.owner.kind, pod.owner.name)
