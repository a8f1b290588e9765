"""PID -> Kubernetes pod UID, read from ``/proc/<pid>/cgroup``.

NVML names the processes on a GPU by host PID; the cost model needs the pod. The
kubelet puts every container in a cgroup whose path carries the pod UID, in one of a
few spellings depending on the cgroup version and driver and the runtime:

* cgroupfs driver (v1 or v2): ``/kubepods/burstable/pod8d3f0c1e-…/<container id>``
* systemd driver: ``/kubepods.slice/kubepods-burstable.slice/``
  ``kubepods-burstable-pod8d3f0c1e_…_….slice/cri-containerd-<id>.scope`` (the UID's
  dashes become underscores; ``crio-<id>.scope`` for CRI-O, ``docker-<id>.scope`` for
  Docker), optionally below ``kubelet.slice/kubelet-kubepods.slice`` or a nested
  container's own cgroup.
* Guaranteed pods have no QoS level: ``/kubepods/pod<uid>/…``, ``kubepods-pod<uid>.slice``.
* Static (mirror) pods have a UID that is a 32-character hash, not a dashed UUID.

The agent must run with ``hostPID: true`` (or a host ``/proc`` mounted) so NVML's PIDs
are the PIDs under ``proc_root``.
"""

from __future__ import annotations

import os
import re

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
# `pod<uid>` as a whole path segment, or as the last dash-separated part of a
# systemd slice name (`kubepods-burstable-pod<uid>.slice`).
_POD = re.compile(rf"(?:^|[/-])pod({_UID})(?:\.slice)?(?=/|$)", re.IGNORECASE)


class ProcessGone(Exception):
    """The process exited (or was never visible here) before its cgroup was read."""


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID in the text of a ``/proc/<pid>/cgroup`` file, or None for a non-pod process.

    Every line is ``hierarchy-id:controllers:path``; under cgroup v1 all hierarchies of
    a container name the same pod, under v2 there is one ``0::`` line.
    """
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        match = _POD.search(path)
        if match:
            return match.group(1).replace("_", "-").lower()
    return None


class PodResolver:
    """Maps PIDs to pod UIDs, reading each PID's cgroup once while the PID is in use.

    ``forget_except(pids)`` drops PIDs no longer seen, so a PID reused by a new process
    after a gap is read afresh.
    """

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._cache: dict[int, str | None] = {}

    def pod_uid(self, pid: int) -> str | None:
        """The pod UID of ``pid``, None when it is not in a pod.

        Raises :class:`ProcessGone` when the process no longer exists and
        :class:`PermissionError` when its cgroup cannot be read.
        """
        try:
            return self._cache[pid]
        except KeyError:
            pass
        path = os.path.join(self.proc_root, str(pid), "cgroup")
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            raise ProcessGone(pid) from None
        uid = pod_uid_from_cgroup(text)
        self._cache[pid] = uid
        return uid

    def forget_except(self, pids: set[int]) -> None:
        """Drop cached PIDs that are not in ``pids`` (those seen in the latest poll)."""
        if len(self._cache) != len(pids) or any(p not in pids for p in self._cache):
            self._cache = {p: u for p, u in self._cache.items() if p in pids}
