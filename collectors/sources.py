"""The one interface every live collector offers the recorder and the agent.

A live collector (NVML, kubelet pod-resources, the API server) is polled on a schedule
and returns the trace-format records it has for that moment. Keeping the interface this
small is what lets ``gpuledger record``, the agent and the tests combine collectors
freely, and lets a collector be swapped for a recorded trace.
"""

from __future__ import annotations

from typing import Protocol

from collectors.records import Record


class RecordSource(Protocol):
    """Something that, polled at ``now`` (Unix seconds), returns trace records.

    A source returns only what changed or what was sampled since the last poll:
    ``devices``/``node``/``pods`` records when the inventory or placement changed (or on
    the first poll), ``sample`` records for the interval that ended at ``now``. It must
    not raise for faults in the world (a driver error, an API server down): it counts
    them, logs each kind once, and returns what it could.
    """

    def poll(self, now: float) -> list[Record]: ...

    def close(self) -> None: ...
