"""What each node looked like over time: its devices, their holders and their prices.

A node's ``node``, ``devices`` and ``pods`` records change it only at their own times,
so its state is piecewise constant. Each stretch is an *epoch*; every device of every
epoch is a *slot* carrying everything attribution needs: how many physical-GPU seconds
one observed second is worth (``weight``), the physical GPU's price per second, and
the pods that hold it. Building this once lets attribution of millions of samples be
a handful of array look-ups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from agent.accounting.classify import team_of, workload_class_of, workload_of
from agent.config import Config
from collectors.errors import InputError
from collectors.mig import model_compute_slices, profile_compute_slices
from collectors.nodelabels import pricing_labels
from collectors.pricing.energy import NO_ENERGY_SECTION, EnergyRates, energy_terms
from collectors.pricing.ratecard import DEFAULT_SOURCE, RATE_CARD_SOURCE, Pricer
from collectors.records import DevicesRecord, NodeRecord, Pod, PodsRecord
from collectors.samples import Interners

StateRecord = NodeRecord | DevicesRecord | PodsRecord
POD_KEY = 1 << 31  # pod-uid codes are int32: epoch * POD_KEY + code is one int64 key
Where = tuple[int, int]  # (file index, line) of a record, for errors and tie-breaking


@dataclass(frozen=True)
class PodInfo:
    """One version of a pod (its labels can change), classified."""

    uid: str
    namespace: str
    name: str
    team: str
    workload_class: str
    workload_kind: str
    workload_name: str
    # What makes two records of a pod the same version (uid, names, labels, owner): two
    # versions that classify alike are still two ledger rows, in replay and in the agent.
    version: tuple = field(default=(), repr=False)


@dataclass(frozen=True)
class SlotInfo:
    """A device as it was during one epoch: what the ledger says about it."""

    node: str
    uuid: str
    model: str
    memory_total_bytes: float | None
    parent_uuid: str | None
    mig_profile: str | None
    gpu_hourly_price: float  # of the physical GPU
    price_source: str
    instance_type: str | None
    region: str | None
    zone: str | None
    capacity_type: str | None


@dataclass
class Timeline:
    """Epochs of every node and the slots of every epoch, in arrays for look-ups."""

    epoch_starts: dict[int, np.ndarray]  # node code -> sorted epoch start times
    epoch_base: dict[int, int]  # node code -> global id of its first epoch
    epoch_has_devices: np.ndarray  # bool per global epoch
    slot_keys: np.ndarray  # sorted int64 keys epoch * n_uuids + uuid code
    slot_of_key: np.ndarray  # slot index for each key
    n_uuids: int
    weight: np.ndarray  # physical-GPU seconds per observed second, per slot
    price_per_s: np.ndarray  # price of one physical-GPU second, per slot
    n_holders: np.ndarray
    holder: np.ndarray  # the only holder's pod index, or -1
    holder_offsets: np.ndarray  # slot s is held by holder_pods[holder_offsets[s]:holder_offsets[s+1]]
    holder_pods: np.ndarray
    device_id: np.ndarray  # dense id of (node, uuid), per slot
    slots: list[SlotInfo]
    pods: list[PodInfo]
    pod_uid_code: np.ndarray  # pod index -> interned uid (to match processes)
    currency: str
    device_names: list[tuple[str, str]] = field(default_factory=list)  # device id -> (node, uuid)
    # where a serving record of a pod lands (docs/unit-economics.md, "The ledger"): for each
    # key epoch * POD_KEY + pod-uid code (sorted), the pod's index and the slot of its first device
    pod_slot_keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pod_slot_holder: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pod_slot_slot: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    # energy (docs/energy.md): the share of a sample's board energy that stays on its own
    # slot (1; a MIG parent's uninstantiated remainder; 0 for a slice, whose energy comes
    # from its parent's sample), the slices of a MIG parent's slot
    # (child_slots[child_offsets[s]:child_offsets[s+1]]), and per slot the PUE, the row of
    # ``tariffs`` (a kWh price per UTC hour, NaN: none), grams CO2e per kWh (NaN: unknown),
    # and whether energy cost is added to cost
    energy_weight: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    child_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    child_slots: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pue: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    tariff: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    tariffs: np.ndarray = field(default_factory=lambda: np.full((1, 24), np.nan))
    g_per_kwh: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    energy_to_cost: np.ndarray = field(default_factory=lambda: np.empty(0, bool))

    def epoch_of(self, node_code: int, ts: float) -> int:
        """The node's epoch in effect at ``ts`` (-1: none yet)."""
        starts = self.epoch_starts.get(node_code)
        if starts is None:
            return -1
        pos = int(np.searchsorted(starts, ts, side="right")) - 1
        return self.epoch_base[node_code] + pos if pos >= 0 else -1


def build_timeline(
    states: Iterable[tuple[Where, StateRecord]],
    interners: Interners,
    pricer: Pricer,
    config: Config,
    where: Callable[[Where], tuple[str, int]] = lambda w: ("", w[1]),
) -> Timeline:
    """Epochs and slots from state records; raises InputError for a devices record
    whose MIG slices cannot be weighed."""
    by_node: dict[int, list[tuple[float, Where, StateRecord]]] = {}
    for order, record in states:
        by_node.setdefault(interners.nodes.code(record.node), []).append((record.ts, order, record))
    builder = _Builder(interners, pricer, config, where)
    for node_code in sorted(by_node):
        builder.add_node(node_code, sorted(by_node[node_code], key=lambda e: (e[0], e[1])))
    return builder.finish()


class _Builder:
    def __init__(self, interners: Interners, pricer: Pricer, config: Config, where) -> None:
        self.interners = interners
        self.pricer = pricer
        self.config = config
        self.where = where
        self.epoch_starts: dict[int, np.ndarray] = {}
        self.epoch_base: dict[int, int] = {}
        self.has_devices: list[bool] = []
        self.keys: list[tuple[int, int]] = []  # (epoch, uuid code) per slot
        self.weight: list[float] = []
        self.price: list[float] = []
        self.holders: list[tuple[int, ...]] = []
        self.device_id: list[int] = []
        self.slots: list[SlotInfo] = []
        self.pod_index: dict[tuple, int] = {}
        self.pods: list[PodInfo] = []
        self.device_ids: dict[tuple[str, str], int] = {}
        self.pod_slots: dict[int, tuple[int, int]] = {}
        self._prices: dict[tuple, tuple[float, str]] = {}
        self.energy: EnergyRates = energy_rates_of(pricer)
        self.energy_weight: list[float] = []
        self.children: list[list[int]] = []
        self.pue: list[float] = []
        self.tariff: list[int] = []
        self.tariff_rows: dict[tuple[float, ...], int] = {}
        self.g_per_kwh: list[float] = []
        self.energy_to_cost: list[bool] = []

    def add_node(self, node_code: int, events: list[tuple[float, Where, StateRecord]]) -> None:
        labels: Mapping[str, str] = {}
        devices: tuple[DevicesRecord, Where] | None = None
        pods: tuple[Pod, ...] = ()
        starts: list[float] = []
        self.epoch_base[node_code] = len(self.has_devices)
        i = 0
        while i < len(events):
            ts = events[i][0]
            while i < len(events) and events[i][0] == ts:
                _, order, record = events[i]
                if isinstance(record, NodeRecord):
                    labels = record.labels
                elif isinstance(record, DevicesRecord):
                    devices = (record, order)
                else:
                    pods = record.pods
                i += 1
            epoch = len(self.has_devices)
            starts.append(ts)
            self.has_devices.append(devices is not None)
            if devices is not None:
                self._add_epoch(epoch, devices[0], devices[1], labels, pods)
        self.epoch_starts[node_code] = np.array(starts, np.float64)

    def _add_epoch(self, epoch: int, record: DevicesRecord, order: Where, labels, pods) -> None:
        weights = device_weights(record, self.where(order))
        holders: dict[str, list[int]] = {}
        first_device: dict[str, tuple[int, str]] = {}
        present = {d.uuid for d in record.devices}
        for pod in pods:
            index = self._pod(pod)
            for uuid in pod.devices:
                holders.setdefault(uuid, []).append(index)
            listed = [u for u in pod.devices if u in present]
            if listed:
                first_device.setdefault(pod.uid, (index, listed[0]))
        slot_of: dict[str, int] = {}
        by_uuid = {d.uuid: d for d in record.devices}
        physical = sum(1 for d in record.devices if d.parent_uuid is None)
        parents = {d.parent_uuid for d in record.devices if d.parent_uuid}
        price_labels = pricing_labels(labels)
        terms = energy_terms(self.energy, labels, price_labels.region)
        tariff = self.tariff_rows.setdefault(terms.kwh_by_hour, len(self.tariff_rows))
        first_slot = len(self.slots)
        for device in record.devices:
            gpu = by_uuid[device.parent_uuid] if device.parent_uuid else device
            hourly, source = self._price(labels, gpu.model, physical)
            slot_of[device.uuid] = len(self.slots)
            self.energy_weight.append(0.0 if device.parent_uuid else weights[device.uuid])
            self.children.append([])
            self.pue.append(terms.pue)
            self.tariff.append(tariff)
            self.g_per_kwh.append(terms.g_per_kwh)
            self.energy_to_cost.append(self.energy.add_to_cost and source in (RATE_CARD_SOURCE, DEFAULT_SOURCE))
            self.keys.append((epoch, self.interners.uuids.code(device.uuid)))
            self.weight.append(weights[device.uuid])
            self.price.append(hourly / 3600.0)
            self.holders.append(() if device.uuid in parents else tuple(holders.get(device.uuid, ())))
            self.device_id.append(self.device_ids.setdefault((record.node, device.uuid), len(self.device_ids)))
            self.slots.append(SlotInfo(
                node=record.node, uuid=device.uuid, model=device.model,
                memory_total_bytes=device.memory_total_bytes, parent_uuid=device.parent_uuid,
                mig_profile=device.mig_profile, gpu_hourly_price=hourly, price_source=source,
                instance_type=price_labels.instance_type, region=price_labels.region,
                zone=price_labels.zone, capacity_type=price_labels.capacity_type,
            ))
        for device in record.devices:
            if device.parent_uuid:
                self.children[slot_of[device.parent_uuid]].append(slot_of[device.uuid])
        assert len(self.children) == first_slot + len(record.devices)
        for uid, (index, uuid) in first_device.items():
            self.pod_slots[epoch * POD_KEY + self.interners.pods.code(uid)] = (index, slot_of[uuid])

    def _price(self, labels: Mapping[str, str], model: str, physical: int) -> tuple[float, str]:
        key = (tuple(sorted(labels.items())), model, physical)
        found = self._prices.get(key)
        if found is None:
            price = self.pricer(labels, model, physical)
            found = self._prices[key] = (price.hourly, price.source)
        return found

    def _pod(self, pod: Pod) -> int:
        key = (pod.uid, pod.namespace, pod.name, tuple(sorted(pod.labels.items())), pod.owner)
        index = self.pod_index.get(key)
        if index is None:
            workload = workload_of(pod)
            index = self.pod_index[key] = len(self.pods)
            self.pods.append(PodInfo(
                uid=pod.uid, namespace=pod.namespace, name=pod.name,
                team=team_of(pod, self.config), workload_class=workload_class_of(pod, self.config),
                workload_kind=workload.kind, workload_name=workload.name, version=key,
            ))
        return index

    def finish(self) -> Timeline:
        n_uuids = max(len(self.interners.uuids), 1)
        keys = np.array([e * n_uuids + u for e, u in self.keys], np.int64)
        order = np.argsort(keys, kind="stable")
        n_holders = np.array([len(h) for h in self.holders], np.int64)
        return Timeline(
            epoch_starts=self.epoch_starts,
            epoch_base=self.epoch_base,
            epoch_has_devices=np.array(self.has_devices, bool),
            slot_keys=keys[order],
            slot_of_key=order.astype(np.int64),
            n_uuids=n_uuids,
            weight=np.array(self.weight, np.float64),
            price_per_s=np.array(self.price, np.float64),
            n_holders=n_holders,
            holder=np.array([h[0] if len(h) == 1 else -1 for h in self.holders], np.int64),
            holder_offsets=np.concatenate(([0], np.cumsum(n_holders))).astype(np.int64),
            holder_pods=np.array([p for h in self.holders for p in h], np.int64),
            device_id=np.array(self.device_id, np.int64),
            slots=self.slots,
            pods=self.pods,
            pod_uid_code=np.array([self.interners.pods.code(p.uid) for p in self.pods], np.int64),
            currency=self.pricer.currency,
            device_names=list(self.device_ids),
            pod_slot_keys=np.array(sorted(self.pod_slots), np.int64),
            pod_slot_holder=np.array([self.pod_slots[k][0] for k in sorted(self.pod_slots)], np.int64),
            pod_slot_slot=np.array([self.pod_slots[k][1] for k in sorted(self.pod_slots)], np.int64),
            energy_weight=np.array(self.energy_weight, np.float64),
            child_offsets=np.concatenate(([0], np.cumsum([len(c) for c in self.children]))).astype(np.int64),
            child_slots=np.array([c for cs in self.children for c in cs], np.int64),
            pue=np.array(self.pue, np.float64),
            tariff=np.array(self.tariff, np.int64),
            tariffs=np.array(list(self.tariff_rows) or [(np.nan,) * 24], np.float64).reshape(-1, 24),
            g_per_kwh=np.array(self.g_per_kwh, np.float64),
            energy_to_cost=np.array(self.energy_to_cost, bool),
        )


def energy_rates_of(pricer: Pricer) -> EnergyRates:
    """The energy section of the rate card a pricer prices by (a rate card alone or the
    agent's chain); the defaults (no kWh price, PUE 1, the bundled carbon table) without one."""
    card = getattr(pricer, "card", None)
    return getattr(card, "energy", None) or NO_ENERGY_SECTION


def device_weights(record: DevicesRecord, where: tuple[str, int]) -> dict[str, float]:
    """Physical-GPU seconds per observed second for every device of the record; InputError
    (at ``where``, a file and line) for MIG slices that cannot be weighed."""
    weights = {d.uuid: 1.0 for d in record.devices}
    by_uuid = {d.uuid: d for d in record.devices}
    used: dict[str, int] = {}
    for i, device in enumerate(record.devices):
        if device.parent_uuid is None:
            continue
        parent = by_uuid[device.parent_uuid]
        total = model_compute_slices(parent.model)
        g = profile_compute_slices(device.mig_profile or "")
        file, line = where
        if total is None:
            raise InputError(
                f"cannot weigh MIG slices of {parent.model!r}: not a MIG-capable model gpuledger knows",
                file=file, line=line, field=f"devices[{i}].parent_uuid",
            )
        if g is None or g > total:
            raise InputError(
                f"expected a MIG profile such as '3g.20gb' with at most {total} compute slices, "
                f"got {device.mig_profile!r}", file=file, line=line, field=f"devices[{i}].mig_profile",
            )
        weights[device.uuid] = g / total
        used[parent.uuid] = used.get(parent.uuid, 0) + g
    for parent_uuid, g_sum in used.items():
        total = model_compute_slices(by_uuid[parent_uuid].model) or 0
        if g_sum > total:
            file, line = where
            raise InputError(
                f"the MIG slices of {parent_uuid} add up to {g_sum} compute slices; "
                f"{by_uuid[parent_uuid].model} has {total}", file=file, line=line, field="devices",
            )
        weights[parent_uuid] = (total - g_sum) / total
    return weights
