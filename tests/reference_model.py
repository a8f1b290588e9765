"""A second, deliberately simple implementation of the cost model, for tests.

It walks the records one at a time with dicts and loops, sharing no code with
``agent.accounting.attribution`` except the record parser, so agreement between the two is
evidence that the vectorised path computes what ``docs/cost-model.md`` says.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from collectors.tracefile import iter_records
from collectors.records import DevicesRecord, Meta, NodeRecord, PodsRecord, Sample

SLICES = {"A30": 4, "A100": 7, "H100": 7, "H200": 7}


def slices_of(model: str) -> int:
    for name, g in SLICES.items():
        if name in model:
            return g
    raise ValueError(model)


def reference(paths: list[Path], price_of) -> dict:
    """Per-pod-uid and total figures. ``price_of(labels, model, physical_gpus)`` -> hourly."""
    records = []
    for path in paths:
        meta = None
        for line, record in iter_records(path):
            if isinstance(record, Meta):
                meta = record
            else:
                records.append((record.ts, record, meta.interval_s))
    states = defaultdict(list)
    samples = []
    for ts, record, default in records:
        if isinstance(record, Sample):
            samples.append((record, default))
        else:
            states[record.node].append(record)

    def latest(node, kind, ts):
        found = None
        for r in sorted(states[node], key=lambda r: r.ts):
            if isinstance(r, kind) and r.ts <= ts:
                found = r
        return found

    out = defaultdict(lambda: defaultdict(float))
    for s, default in samples:
        dt = s.interval_s if s.interval_s is not None else default
        devices = latest(s.node, DevicesRecord, s.ts)
        node = latest(s.node, NodeRecord, s.ts)
        pods = latest(s.node, PodsRecord, s.ts)
        by_uuid = {d.uuid: d for d in devices.devices}
        d = by_uuid[s.uuid]
        physical = len([x for x in devices.devices if x.parent_uuid is None])
        children = [x for x in devices.devices if x.parent_uuid == d.uuid]
        if d.parent_uuid:
            parent = by_uuid[d.parent_uuid]
            g = int(re.search(r"(\d+)g\.", d.mig_profile).group(1))
            weight = g / slices_of(parent.model)
            gpu = parent
        elif children:
            used_slices = sum(int(re.search(r"(\d+)g\.", c.mig_profile).group(1)) for c in children)
            weight = (slices_of(d.model) - used_slices) / slices_of(d.model)
            gpu = d
        else:
            weight, gpu = 1.0, d
        hourly = price_of(node.labels if node else {}, gpu.model, physical)
        seconds = dt * weight
        cost = seconds * hourly / 3600
        out["total"]["capacity"] += seconds
        out["total"]["capacity_cost"] += cost
        holders = [] if children else [p for p in (pods.pods if pods else ()) if s.uuid in p.devices]
        if not holders:
            out["unallocated"]["seconds"] += seconds
            out["unallocated"]["cost"] += cost
            continue
        u = []
        for p in holders:
            u.append(sum(x.util or 0 for x in (s.processes or ()) if x.pod_uid == p.uid))
        shares = [x / sum(u) for x in u] if len(holders) > 1 and sum(u) > 0 else [1 / len(holders)] * len(holders)
        for p, share in zip(holders, shares):
            fig = out[p.uid]
            fig["allocated"] += seconds * share
            fig["cost"] += cost * share
            if s.util is None:
                fig["unknown"] += seconds * share
            else:
                fig["used"] += seconds * share * s.util / 100
    return out
