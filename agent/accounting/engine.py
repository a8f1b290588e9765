"""The accounting engine: state records and column batches in, ledger row parts out.

Replay and the live agent both account through one :class:`Engine`. It keeps the node,
devices and pods records that can still matter and the :class:`~agent.accounting.timeline.Timeline`
they make, attributes batches of samples (:func:`~agent.accounting.attribution.attribute`) and places
serving counts on it, and returns ledger row parts (:class:`~agent.accounting.ledger.Rows`).

The timeline is rebuilt whenever a state record arrives, and old records are forgotten,
so its slot and pod indices change; row parts therefore name devices, device attributes
and pod versions by ids that stay fixed for the engine's life (:class:`Names`). That is
what lets a row's parts from different batches add up, and lets memory stay bounded:
nothing here grows with the number of samples.

What the engine does not decide is what to do with bad input: replay raises on the first
sample whose device no devices record lists (:meth:`Engine.attribute`), the agent drops and
counts such samples (:meth:`Engine.locate` first). When rows are complete, and where they
go, is the driver's business (:mod:`agent.replay`, :mod:`agent.metering`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, TypeVar

import numpy as np

from agent.accounting.attribution import Locate, attribute, locate_slots, place_serving
from agent.config import Config
from agent.accounting.ledger import Rows, SlotIds, allocation_rows, serving_rows
from agent.accounting.timeline import PodInfo, SlotInfo, StateRecord, Timeline, Where, build_timeline, device_weights
from collectors.pricing.ratecard import Pricer
from collectors.records import DevicesRecord
from collectors.samples import Interners, SampleColumns, ServingColumns

K = TypeVar("K", bound=Hashable)


class Registry(Generic[K]):
    """Values to ids in order of first sight; an id never changes or goes away."""

    def __init__(self) -> None:
        self.ids: dict[K, int] = {}
        self.values: list[K] = []

    def id(self, value: K) -> int:
        found = self.ids.get(value)
        if found is None:
            found = self.ids[value] = len(self.values)
            self.values.append(value)
        return found

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Names:
    """What the ids of :class:`~agent.accounting.ledger.Rows` stand for."""

    devices: Registry[tuple[str, str]] = field(default_factory=Registry)  # (node, uuid)
    slots: Registry[SlotInfo] = field(default_factory=Registry)
    pods: Registry[PodInfo] = field(default_factory=Registry)

    _ranks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def device_order(self) -> np.ndarray:
        """Each device id's rank by (node, uuid): the ledger's order, whatever the ids."""
        return self._ranked("devices", lambda d: d)

    def pod_order(self) -> np.ndarray:
        """Each pod-version id's rank by uid, then the version's names and labels."""
        return self._ranked("pods", lambda p: (p.uid, p.namespace, p.name, repr(p.version)))

    def _ranked(self, registry: str, key: Callable) -> np.ndarray:
        values = getattr(self, registry).values
        ranks = self._ranks.get(registry)
        if ranks is None or len(ranks) != len(values):  # ids only ever get added
            ranks = self._ranks[registry] = _ranks(values, key)
        return ranks


def _ranks(values: list, key: Callable) -> np.ndarray:
    order = sorted(range(len(values)), key=lambda i: key(values[i]))
    ranks = np.empty(len(values), np.int64)
    ranks[order] = np.arange(len(values))
    return ranks


class Engine:
    """Attribution with the state records that can still matter.

    ``where`` turns a state record's order (file index, line) into the (file, line) an
    error names.
    """

    def __init__(self, pricer: Pricer, config: Config, interners: Interners | None = None,
                 where: Callable[[Where], tuple[str, int]] = lambda w: ("", w[1])) -> None:
        self.pricer = pricer
        self.config = config
        self.interners = interners or Interners()
        self.names = Names()
        self.where = where
        self._states: dict[tuple[str, str], list[tuple[float, Where, StateRecord]]] = {}
        self._timeline: tuple[Timeline, SlotIds] | None = None
        self.prices: set[tuple] = set()  # (node, instance type, model, hourly, source) of every physical GPU priced

    # ------------------------------------------------------------------ state records

    def add_state(self, order: Where, record: StateRecord) -> None:
        """Remember a node, devices or pods record; the next attribution uses it. InputError
        at once for a devices record whose MIG slices cannot be weighed, used or not."""
        if isinstance(record, DevicesRecord):
            device_weights(record, self.where(order))
        history = self._states.setdefault((record.node, type(record).__name__), [])
        entry = (record.ts, order, record)
        history.append(entry)
        if len(history) > 1 and (history[-2][0], history[-2][1]) > (record.ts, order):
            history.sort(key=lambda e: (e[0], e[1]))
        self._timeline = None

    def forget_before(self, ts: float) -> None:
        """Keep, per node and kind, the records after ``ts`` and the one in effect at it:
        no sample at or after ``ts`` needs more."""
        for history in self._states.values():
            first_kept = 0
            for i, (t, _, _) in enumerate(history):
                if t <= ts:
                    first_kept = i
                else:
                    break
            if first_kept:
                del history[:first_kept]
                self._timeline = None

    def invalidate_prices(self) -> None:
        """Rebuild the timeline on the next attribution, so refreshed prices are used."""
        self._timeline = None

    @property
    def timeline(self) -> Timeline:
        return self._current()[0]

    def _current(self) -> tuple[Timeline, SlotIds]:
        if self._timeline is None:
            states = [(order, record) for history in self._states.values() for _, order, record in history]
            timeline = build_timeline(states, self.interners, self.pricer, self.config, self.where)
            self._timeline = (timeline, self._ids(timeline))
        return self._timeline

    def _ids(self, timeline: Timeline) -> SlotIds:
        names = self.names
        device = np.array([names.devices.id((s.node, s.uuid)) for s in timeline.slots], np.int64)
        slot = np.array([names.slots.id(s) for s in timeline.slots], np.int64)
        epoch_ts = np.empty(len(timeline.epoch_has_devices), np.float64)
        for node, base in timeline.epoch_base.items():
            starts = timeline.epoch_starts[node]
            epoch_ts[base:base + len(starts)] = starts
        since = np.empty(len(timeline.slots), np.float64)
        since[timeline.slot_of_key] = epoch_ts[timeline.slot_keys // timeline.n_uuids]
        pod = np.array([names.pods.id(p) for p in timeline.pods], np.int64)
        self.prices.update((s.node, s.instance_type or "", s.model, s.gpu_hourly_price, s.price_source)
                           for s in timeline.slots if s.parent_uuid is None)
        return SlotIds(device, slot, since, pod)

    # ------------------------------------------------------------------ attribution

    def locate(self, samples: SampleColumns) -> tuple[np.ndarray, np.ndarray]:
        """(slot, ok) per sample in the current timeline: ``ok`` False where no devices
        record in effect at the sample's ts lists its device."""
        return locate_slots(samples, self.timeline)

    def attribute(self, samples: SampleColumns, where: Locate | None = None) -> Rows:
        """Row parts of every sample, in the samples' order; InputError (naming
        ``where(i)``) for the first whose device no devices record lists."""
        timeline, ids = self._current()
        return allocation_rows(attribute(samples, timeline, where), ids)

    def place(self, serving: ServingColumns) -> tuple[Rows, np.ndarray]:
        """(row parts of the serving records that could be placed, which could): a record
        is placed when the pods record in effect at its ts lists its pod on a device."""
        timeline, ids = self._current()
        placed, ok = place_serving(serving, timeline)
        return serving_rows(placed, ids), ok


def minute_of(ts: float, interval: float) -> int:
    """The minute a sample counts in: the one holding its interval's midpoint."""
    return int(math.floor((ts - interval / 2) / 60.0) * 60)
