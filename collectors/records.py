"""Trace-format v1 records as frozen dataclasses, and their JSON forms.

These are the records every collector emits and every consumer reads: the NVML
collector writes ``devices`` and ``sample``, the Kubernetes collectors ``node`` and
``pods``, and replay reads all of them. ``docs/trace-format.md`` is the contract;
``from_json`` enforces it field by field and raises :class:`InputError` naming the
field and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from collectors.errors import InputError, describe

FORMAT = "gpuledger-trace"
VERSION = 1  # what a trace without serving records says it is, so such traces stay v1 files
SERVING_VERSION = 1.1  # 1.1 added the `serving` record; a trace that holds one says 1.1
VERSIONS = (1, 1.1)  # what the readers read
KINDS = ("meta", "node", "devices", "pods", "sample", "serving")
COUNT_MAX = 1e15  # requests or tokens in one serving record: far above any server's interval
TS_MAX = 253370764800.0  # 9999-01-01T00:00:00Z: times are before it (ISO dates and the report's months stay 4-digit)
INTERVAL_MAX = 366 * 86400.0  # a sample covers at most a year
# How much older than the records before it in its file a record may be and still be
# accounted (docs/trace-format.md, "Order"): the recorder writes in time order; importers
# and hand-made traces may be a little out of it. Replay holds about this much in memory.
LATENESS_S = 300.0
BYTES_MAX = 1e18  # device memory: an exabyte is no GPU's, and the ledger's readers refuse more


@dataclass(frozen=True)
class Meta:
    """First line of every trace file: format, version and the default sample length."""

    interval_s: float
    source: str = ""
    created: str = ""
    format: str = FORMAT
    version: float = VERSION


@dataclass(frozen=True)
class NodeRecord:
    """A node's labels, used for pricing; a later record for the node replaces it."""

    ts: float
    node: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Device:
    """One GPU or MIG slice. A slice has a ``parent_uuid`` and a ``mig_profile``."""

    uuid: str
    model: str
    memory_total_bytes: float | None = None
    index: int | None = None
    parent_uuid: str | None = None
    mig_profile: str | None = None


@dataclass(frozen=True)
class DevicesRecord:
    """A node's GPU inventory; a later record for the node replaces it."""

    ts: float
    node: str
    devices: tuple[Device, ...]


@dataclass(frozen=True)
class Owner:
    """The top controller of a pod (a Deployment, not its ReplicaSet)."""

    kind: str
    name: str


@dataclass(frozen=True)
class Container:
    name: str
    devices: tuple[str, ...]


@dataclass(frozen=True)
class Pod:
    """A pod that holds GPUs; device ids are GPU or MIG UUIDs."""

    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    owner: Owner | None = None
    containers: tuple[Container, ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device the pod's containers hold, each once, in first-seen order."""
        return tuple(dict.fromkeys(d for c in self.containers for d in c.devices))


@dataclass(frozen=True)
class PodsRecord:
    """A full snapshot of the GPU pods on a node, valid from ``ts`` to the next one."""

    ts: float
    node: str
    pods: tuple[Pod, ...]


@dataclass(frozen=True)
class Process:
    """One process's use of a device during a sample's interval."""

    pid: int
    pod_uid: str | None = None
    util: float | None = None
    mem_used_bytes: float | None = None


@dataclass(frozen=True)
class Sample:
    """One device's reading for the ``interval_s`` seconds that end at ``ts``.

    ``util`` is None where the device does not report utilisation (MIG slices).
    ``interval_s`` is None when the file's ``meta.interval_s`` applies.
    """

    ts: float
    node: str
    uuid: str
    util: float | None
    mem_used_bytes: float | None = None
    power_w: float | None = None
    interval_s: float | None = None
    processes: tuple[Process, ...] | None = None


@dataclass(frozen=True)
class ServingRecord:
    """What a pod's model server counted in the ``interval_s`` seconds that end at ``ts``
    (trace format 1.1). A count the server does not keep is None, never 0."""

    ts: float
    node: str
    pod_uid: str
    interval_s: float | None = None
    requests: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None
    errors: float | None = None


SERVING_COUNTS = ("requests", "input_tokens", "output_tokens", "errors")

Record = Meta | NodeRecord | DevicesRecord | PodsRecord | Sample | ServingRecord


# --------------------------------------------------------------------------- checks


def _get(obj: Mapping[str, Any], key: str, path: str, required: bool) -> Any:
    if key not in obj or obj[key] is None:
        if required:
            raise InputError("is required", field=path + key)
        return None
    return obj[key]


def _str(obj: Mapping[str, Any], key: str, path: str = "", required: bool = True) -> str | None:
    value = _get(obj, key, path, required)
    if value is None:
        return None
    if not isinstance(value, str) or (required and not value):
        raise InputError(f"expected a non-empty string, got {describe(value)}", field=path + key)
    if not value.isascii():
        _unicode(value, path + key)
    return value


def _unicode(value: str, field: str) -> None:
    """InputError for a string that is not Unicode text: a lone surrogate escape such as
    ``\\ud800`` decodes in JSON but cannot be written as UTF-8 (Parquet, file names)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(f"expected Unicode text, got a lone surrogate {value[err.start]!r} at character "
                         f"{err.start}", field=field) from None


def _num(
    obj: Mapping[str, Any],
    key: str,
    path: str = "",
    required: bool = True,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
) -> float | None:
    value = _get(obj, key, path, required)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise InputError(f"expected a number, got an integer of {len(str(value))} digits", field=path + key) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"expected a number, got {describe(value)}", field=path + key)
    if positive and value <= 0:
        raise InputError(f"expected a number above 0, got {describe(value)}", field=path + key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
        raise InputError(f"expected a number {bounds}, got {describe(value)}", field=path + key)
    return float(value)


def _time(obj: Mapping[str, Any], key: str = "ts") -> float:
    value = _num(obj, key)
    if not 0 <= value < TS_MAX:  # type: ignore[operator]
        raise InputError(f"expected Unix seconds from 0 to before year 9999 ({TS_MAX:.0f}), got {describe(value)}",
                         field=key)
    return value  # type: ignore[return-value]


def _bytes(obj: Mapping[str, Any], key: str, path: str = "") -> float | None:
    value = _num(obj, key, path, required=False, low=0)
    if value is not None and value > BYTES_MAX:
        raise InputError(f"expected at most {BYTES_MAX:g} bytes, got {describe(value)}", field=path + key)
    return value


def _interval(obj: Mapping[str, Any], required: bool) -> float | None:
    value = _num(obj, "interval_s", required=required, positive=True)
    if value is not None and value > INTERVAL_MAX:
        raise InputError(f"expected seconds above 0 and at most {INTERVAL_MAX:.0f} (366 days), got {describe(value)}",
                         field="interval_s")
    return value


def _int(obj: Mapping[str, Any], key: str, path: str = "", required: bool = True) -> int | None:
    value = _get(obj, key, path, required)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"expected a whole number, got {describe(value)}", field=path + key)
    return value


def _labels(obj: Mapping[str, Any], key: str, path: str = "") -> dict[str, str]:
    value = _get(obj, key, path, False)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InputError(
            f"expected an object of string values, got {describe(value)}", field=path + key
        )
    for k, v in value.items():
        if not (k.isascii() and v.isascii()):
            _unicode(k, path + key)
            _unicode(v, f"{path}{key}.{k}")
    return dict(value)


def _list(obj: Mapping[str, Any], key: str, path: str = "", required: bool = True) -> list | None:
    value = _get(obj, key, path, required)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError(f"expected a list, got {describe(value)}", field=path + key)
    return value


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"expected an object, got {describe(value)}", field=path)
    return value


# --------------------------------------------------------------------------- from JSON


def meta_from_json(obj: Mapping[str, Any]) -> Meta:
    fmt = _str(obj, "format")
    if fmt != FORMAT:
        raise InputError(f"expected {FORMAT!r}, got {describe(fmt)}", field="format")
    version = _get(obj, "version", "", True)
    if isinstance(version, bool) or version not in VERSIONS:
        raise InputError(
            f"expected 1 or 1.1 (this gpuledger reads trace format v1 and v1.1), got {describe(version)}",
            field="version",
        )
    return Meta(
        version=version,
        interval_s=_interval(obj, required=True),  # type: ignore[arg-type]
        source=_str(obj, "source", required=False) or "",
        created=_str(obj, "created", required=False) or "",
    )


def node_from_json(obj: Mapping[str, Any]) -> NodeRecord:
    return NodeRecord(
        ts=_time(obj),  # type: ignore[arg-type]
        node=_str(obj, "node"),  # type: ignore[arg-type]
        labels=_labels(obj, "labels"),
    )


def device_from_json(obj: Any, path: str) -> Device:
    obj = _obj(obj, path.rstrip("."))
    parent = _str(obj, "parent_uuid", path, required=False)
    profile = _str(obj, "mig_profile", path, required=False)
    if parent is not None and profile is None:
        raise InputError("is required on a MIG device (one with parent_uuid)", field=path + "mig_profile")
    return Device(
        uuid=_str(obj, "uuid", path),  # type: ignore[arg-type]
        model=_str(obj, "model", path),  # type: ignore[arg-type]
        memory_total_bytes=_bytes(obj, "memory_total_bytes", path),
        index=_int(obj, "index", path, required=False),
        parent_uuid=parent,
        mig_profile=profile,
    )


def devices_from_json(obj: Mapping[str, Any]) -> DevicesRecord:
    items = _list(obj, "devices")
    devices = tuple(device_from_json(d, f"devices[{i}].") for i, d in enumerate(items or ()))
    seen: set[str] = set()
    for i, device in enumerate(devices):
        if device.uuid in seen:
            raise InputError(f"duplicate device {device.uuid!r}", field=f"devices[{i}].uuid")
        seen.add(device.uuid)
    for i, device in enumerate(devices):
        if device.parent_uuid is not None and device.parent_uuid not in seen:
            raise InputError(
                f"names {device.parent_uuid!r}, which is not a device in this record",
                field=f"devices[{i}].parent_uuid",
            )
    return DevicesRecord(ts=_time(obj), node=_str(obj, "node"), devices=devices)  # type: ignore[arg-type]


def pod_from_json(obj: Any, path: str) -> Pod:
    obj = _obj(obj, path.rstrip("."))
    owner = None
    if obj.get("owner") is not None:
        owner_obj = _obj(obj["owner"], path + "owner")
        owner = Owner(
            kind=_str(owner_obj, "kind", path + "owner."),  # type: ignore[arg-type]
            name=_str(owner_obj, "name", path + "owner."),  # type: ignore[arg-type]
        )
    containers = []
    for i, c in enumerate(_list(obj, "containers", path, required=False) or ()):
        cpath = f"{path}containers[{i}]."
        c = _obj(c, cpath.rstrip("."))
        devices = _list(c, "devices", cpath, required=False) or []
        for j, d in enumerate(devices):
            if not isinstance(d, str) or not d:
                raise InputError(f"expected a device id string, got {describe(d)}", field=f"{cpath}devices[{j}]")
            if not d.isascii():
                _unicode(d, f"{cpath}devices[{j}]")
        containers.append(Container(name=_str(c, "name", cpath, required=False) or "", devices=tuple(devices)))
    return Pod(
        uid=_str(obj, "uid", path),  # type: ignore[arg-type]
        namespace=_str(obj, "namespace", path),  # type: ignore[arg-type]
        name=_str(obj, "name", path),  # type: ignore[arg-type]
        labels=_labels(obj, "labels", path),
        owner=owner,
        containers=tuple(containers),
    )


def pods_from_json(obj: Mapping[str, Any]) -> PodsRecord:
    items = _list(obj, "pods")
    pods = tuple(pod_from_json(p, f"pods[{i}].") for i, p in enumerate(items or ()))
    return PodsRecord(ts=_time(obj), node=_str(obj, "node"), pods=pods)  # type: ignore[arg-type]


def process_from_json(obj: Any, path: str) -> Process:
    obj = _obj(obj, path.rstrip("."))
    return Process(
        pid=_int(obj, "pid", path),  # type: ignore[arg-type]
        pod_uid=_str(obj, "pod_uid", path, required=False),
        util=_num(obj, "util", path, required=False, low=0, high=100),
        mem_used_bytes=_bytes(obj, "mem_used_bytes", path),
    )


def sample_from_json(obj: Mapping[str, Any]) -> Sample:
    procs = _list(obj, "processes", required=False)
    return Sample(
        ts=_time(obj),  # type: ignore[arg-type]
        node=_str(obj, "node"),  # type: ignore[arg-type]
        uuid=_str(obj, "uuid"),  # type: ignore[arg-type]
        util=_num(obj, "util", required=False, low=0, high=100),
        mem_used_bytes=_bytes(obj, "mem_used_bytes"),
        power_w=_num(obj, "power_w", required=False, low=0),
        interval_s=_interval(obj, required=False),
        processes=None
        if procs is None
        else tuple(process_from_json(p, f"processes[{i}].") for i, p in enumerate(procs)),
    )


def serving_from_json(obj: Mapping[str, Any]) -> ServingRecord:
    counts = {name: _num(obj, name, required=False, low=0, high=COUNT_MAX) for name in SERVING_COUNTS}
    return ServingRecord(
        ts=_time(obj),  # type: ignore[arg-type]
        node=_str(obj, "node"),  # type: ignore[arg-type]
        pod_uid=_str(obj, "pod_uid"),  # type: ignore[arg-type]
        interval_s=_interval(obj, required=False),
        **counts,
    )


_PARSERS = {
    "meta": meta_from_json,
    "node": node_from_json,
    "devices": devices_from_json,
    "pods": pods_from_json,
    "sample": sample_from_json,
    "serving": serving_from_json,
}


def from_json(obj: Any) -> Record:
    """Check one decoded JSON line against trace format v1.1 and build its record."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {describe(obj)}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _PARSERS:
        raise InputError(f"expected one of {', '.join(KINDS)}, got {describe(kind)}", field="kind")
    return _PARSERS[kind](obj)


# --------------------------------------------------------------------------- to JSON


def _drop_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None}


def to_json(record: Record) -> dict[str, Any]:
    """The JSON object of a record, with absent optional fields left out."""
    if isinstance(record, Meta):
        return _drop_none(
            {"kind": "meta", "format": record.format, "version": record.version,
             "interval_s": record.interval_s, "source": record.source or None,
             "created": record.created or None}
        )
    if isinstance(record, NodeRecord):
        return {"kind": "node", "ts": record.ts, "node": record.node, "labels": dict(record.labels)}
    if isinstance(record, DevicesRecord):
        return {
            "kind": "devices", "ts": record.ts, "node": record.node,
            "devices": [
                _drop_none({"uuid": d.uuid, "index": d.index, "parent_uuid": d.parent_uuid,
                            "mig_profile": d.mig_profile, "model": d.model,
                            "memory_total_bytes": _whole(d.memory_total_bytes)})
                for d in record.devices
            ],
        }
    if isinstance(record, PodsRecord):
        return {
            "kind": "pods", "ts": record.ts, "node": record.node,
            "pods": [
                _drop_none({
                    "uid": p.uid, "namespace": p.namespace, "name": p.name,
                    "labels": dict(p.labels),
                    "owner": {"kind": p.owner.kind, "name": p.owner.name} if p.owner else None,
                    "containers": [{"name": c.name, "devices": list(c.devices)} for c in p.containers],
                })
                for p in record.pods
            ],
        }
    if isinstance(record, Sample):
        return _drop_none({
            "kind": "sample", "ts": record.ts, "node": record.node, "uuid": record.uuid,
            "interval_s": record.interval_s, "util": record.util,
            "mem_used_bytes": _whole(record.mem_used_bytes), "power_w": record.power_w,
            "processes": None if record.processes is None else [
                _drop_none({"pid": p.pid, "pod_uid": p.pod_uid, "util": p.util,
                            "mem_used_bytes": _whole(p.mem_used_bytes)})
                for p in record.processes
            ],
        }) | ({"util": None} if record.util is None else {})
    if isinstance(record, ServingRecord):
        return _drop_none({
            "kind": "serving", "ts": record.ts, "node": record.node, "pod_uid": record.pod_uid,
            "interval_s": record.interval_s, **{n: _whole(getattr(record, n)) for n in SERVING_COUNTS},
        })
    raise TypeError(f"not a trace record: {record!r}")


def _whole(value: float | None) -> int | float | None:
    """Byte counts are written as integers when they are whole."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value
