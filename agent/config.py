"""Settings, declared once with their descriptions.

Each setting is a field of :class:`Config` declared with :mod:`recommenders.settingfields`
(its default and help text); the config file loader, ``gpuledger config --docs`` and
``docs/configuration.md`` are all made from these declarations, so a setting cannot be
documented in one place and read in another. Their values are structured (lists of rules,
mappings), so each has its own loader here that names the file, line and key of a mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from collectors.errors import describe
from collectors.yamlfile import LocatedYaml
from recommenders.settingfields import declared, default_of, markdown_table, setting

CLASSES = ("training", "inference", "interactive", "other")
AGENT_SECTION = "agent"


@dataclass(frozen=True)
class LabelRule:
    """A pod whose label ``label`` is present (and equals ``value``, when set) is ``workload_class``."""

    label: str
    workload_class: str
    value: str | None = None


DEFAULT_LABEL_RULES: tuple[LabelRule, ...] = (
    LabelRule("training.kubeflow.org/job-name", "training"),
    LabelRule("jobset.sigs.k8s.io/jobset-name", "training"),
    LabelRule("volcano.sh/job-name", "training"),
    LabelRule("serving.kserve.io/inferenceservice", "inference"),
    LabelRule("leaderworkerset.sigs.k8s.io/name", "inference"),
    LabelRule("app.kubernetes.io/managed-by", "inference", "k8s-nim-operator"),
    LabelRule("notebook-name", "interactive"),
    LabelRule("component", "interactive", "singleuser-server"),
    LabelRule("ray.io/originated-from-crd", "training", "RayJob"),
    LabelRule("ray.io/originated-from-crd", "inference", "RayService"),
)

DEFAULT_OWNER_CLASSES: Mapping[str, str] = {
    **{k: "training" for k in ("PyTorchJob", "TFJob", "MPIJob", "XGBoostJob", "PaddleJob",
                                "JAXJob", "TrainJob", "JobSet", "RayJob", "Job", "CronJob")},
    **{k: "inference" for k in ("Deployment", "ReplicaSet", "StatefulSet", "InferenceService",
                                 "RayService", "LeaderWorkerSet", "NIMService")},
    "Notebook": "interactive",
}


@dataclass(frozen=True)
class Config:
    """How pods map to teams and workload classes. Loaded from ``--config FILE`` (YAML)."""

    team_labels: tuple[str, ...] = setting(
        ("gpuledger.io/team", "team"),
        "Pod labels that name a pod's team, tried in order; the first present wins.",
    )
    namespace_teams: Mapping[str, str] = setting(
        {}, "Namespace -> team, for pods that carry none of the team labels. "
        "A namespace in neither is its own team.",
    )
    workload_class_label: str = setting(
        "gpuledger.io/workload-class",
        "A pod label that sets the workload class outright (training, inference, "
        "interactive or other); checked before every other rule.",
    )
    label_rules: tuple[LabelRule, ...] = setting(
        DEFAULT_LABEL_RULES,
        "Label rules for the workload class, tried in order: a list of "
        "{label, class, value?}; a rule matches when the label is present and, if value "
        "is given, equal to it.",
    )
    owner_kind_classes: Mapping[str, str] = setting(
        DEFAULT_OWNER_CLASSES,
        "Owner kind -> workload class, used when no label rule matched. Replaces the "
        "default table when given.",
    )


def load_config(path: str | Path | None) -> Config:
    """The defaults, overridden by the YAML file at ``path``; InputError on any mistake."""
    if path is None:
        return Config()
    doc = LocatedYaml(path)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise doc.error((), "expected a mapping of settings")
    known = {f.name for f in declared(Config)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == AGENT_SECTION:
            continue  # the agent's own settings: agent/agent_settings.py reads and checks them
        if key not in known:
            raise doc.error((key,), f"unknown setting; expected one of {', '.join(sorted(known))}")
        values[key] = _CHECKS[key](doc, (key,), value)
    return Config(**values)


def _strings(doc: LocatedYaml, key, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise doc.error(key, f"expected a list of label names, got {describe(value)}")
    return tuple(value)


def _string(doc: LocatedYaml, key, value) -> str:
    if not isinstance(value, str) or not value:
        raise doc.error(key, f"expected a label name, got {describe(value)}")
    return value


def _string_map(doc: LocatedYaml, key, value, classes: bool = False) -> dict[str, str]:
    if not isinstance(value, dict):
        raise doc.error(key, f"expected a mapping, got {describe(value)}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not v:
            raise doc.error(key + (k,), f"expected a string, got {describe(v)}")
        if classes and v not in CLASSES:
            raise doc.error(key + (k,), f"expected one of {', '.join(CLASSES)}, got {describe(v)}")
    return dict(value)


def _label_rules(doc: LocatedYaml, key, value) -> tuple[LabelRule, ...]:
    if not isinstance(value, list):
        raise doc.error(key, "expected a list of {label, class, value?} rules")
    rules = []
    for i, item in enumerate(value):
        where = key + (i,)
        if not isinstance(item, dict) or set(item) - {"label", "class", "value"}:
            raise doc.error(where, "expected a mapping with label, class and optionally value")
        label = _string(doc, where + ("label",), item.get("label"))
        cls = item.get("class")
        if cls not in CLASSES:
            raise doc.error(where + ("class",), f"expected one of {', '.join(CLASSES)}, got {describe(cls)}")
        val = item.get("value")
        if val is not None and not isinstance(val, str):
            raise doc.error(where + ("value",), f"expected a string, got {describe(val)}")
        rules.append(LabelRule(label, cls, val))
    return tuple(rules)


_CHECKS = {
    "team_labels": _strings,
    "namespace_teams": _string_map,
    "workload_class_label": _string,
    "label_rules": _label_rules,
    "owner_kind_classes": lambda doc, key, value: _string_map(doc, key, value, classes=True),
}


def settings_markdown() -> str:
    """The settings table for ``docs/configuration.md``, made from the declarations."""
    return markdown_table(Config, ("setting", "default", "what it does"),
                          cells={"default": lambda f: _render_default(default_of(f))})


def _render_default(value: Any) -> str:
    if isinstance(value, Mapping):
        if not value:
            return "none"
        groups: dict[str, list[str]] = {}
        for k, v in value.items():
            groups.setdefault(v, []).append(k)
        return "; ".join(f"{', '.join(ks)} → {v}" for v, ks in groups.items())
    if isinstance(value, tuple) and value and isinstance(value[0], LabelRule):
        return "; ".join(
            f"`{r.label}`{'=' + r.value if r.value else ''} → {r.workload_class}" for r in value
        )
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`"
