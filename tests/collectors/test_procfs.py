"""PID -> pod UID from /proc/<pid>/cgroup, in every spelling kubelets and runtimes use."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.procfs import PodResolver, ProcessGone, pod_uid_from_cgroup

UID = "8d3f0c1e-5b2a-4c7d-9e1f-0a1b2c3d4e5f"
US = UID.replace("-", "_")
CID = "4f9a" * 16  # a 64-hex container id

CASES = {
    # cgroup v1, cgroupfs driver (Docker or containerd), one line per hierarchy
    "v1 cgroupfs burstable": (
        f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n"
        f"11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n"
        f"1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
    ),
    "v1 cgroupfs besteffort": f"5:devices:/kubepods/besteffort/pod{UID}/{CID}\n",
    "v1 cgroupfs guaranteed": f"4:pids:/kubepods/pod{UID}/{CID}\n",
    # cgroup v1, systemd driver
    "v1 systemd containerd": (
        "12:memory:/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{US}.slice/cri-containerd-{CID}.scope\n"
    ),
    "v1 systemd docker": (
        f"3:cpuset:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{US}.slice/docker-{CID}.scope\n"
    ),
    # cgroup v2 (unified): one `0::` line
    "v2 systemd containerd": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{US}.slice/cri-containerd-{CID}.scope\n"
    ),
    "v2 systemd cri-o": f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{US}.slice/crio-{CID}.scope\n",
    "v2 systemd guaranteed": f"0::/kubepods.slice/kubepods-pod{US}.slice/cri-containerd-{CID}.scope\n",
    "v2 cgroupfs": f"0::/kubepods/burstable/pod{UID}/{CID}\n",
    "v2 kubelet.slice (kind, k3s)": (
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{US}.slice/cri-containerd-{CID}.scope\n"
    ),
    "nested in a docker container": f"0::/docker/{CID}/kubepods/besteffort/pod{UID}/{CID}\n",
    "cri-o conmon scope sibling": f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{US}.slice/crio-conmon-{CID}.scope\n",
}


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_pod_uid_in_every_cgroup_spelling(text: str) -> None:
    assert pod_uid_from_cgroup(text) == UID


def test_static_pod_uid_is_a_hash() -> None:
    uid = "6a5c1e2e7d0f5b7d8b9c0d1e2f3a4b5c"
    assert pod_uid_from_cgroup(f"0::/kubepods/burstable/pod{uid}/{CID}\n") == uid
    assert pod_uid_from_cgroup(f"0::/kubepods.slice/kubepods-pod{uid}.slice/crio-{CID}.scope\n") == uid


def test_upper_case_is_normalised() -> None:
    assert pod_uid_from_cgroup(f"0::/kubepods/pod{UID.upper()}/{CID}\n") == UID


@pytest.mark.parametrize("text", [
    "0::/system.slice/nvidia-persistenced.service\n",
    "0::/user.slice/user-1000.slice/session-3.scope\n",
    "0::/\n",
    f"0::/docker/{CID}\n",
    "0::/kubepods.slice/kubepods-burstable.slice\n",  # the QoS slice itself, no pod
    "0::/system.slice/podman-1234.scope\n",  # "pod" not followed by a UID
    "",
])
def test_processes_outside_pods_have_none(text: str) -> None:
    assert pod_uid_from_cgroup(text) is None


def _proc(root: Path, pid: int, text: str) -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "cgroup").write_text(text)


def test_resolver_reads_a_proc_tree_and_caches(tmp_path: Path) -> None:
    _proc(tmp_path, 42, CASES["v2 systemd containerd"])
    _proc(tmp_path, 43, "0::/system.slice/sshd.service\n")
    resolver = PodResolver(str(tmp_path))
    assert resolver.pod_uid(42) == UID
    assert resolver.pod_uid(43) is None
    (tmp_path / "42" / "cgroup").unlink()
    (tmp_path / "42").rmdir()
    assert resolver.pod_uid(42) == UID  # cached while the PID is in use
    resolver.forget_except({43})
    with pytest.raises(ProcessGone):
        resolver.pod_uid(42)


def test_resolver_reports_a_missing_process(tmp_path: Path) -> None:
    with pytest.raises(ProcessGone):
        PodResolver(str(tmp_path)).pod_uid(999999)


def test_pid_reused_after_a_gap_is_read_afresh(tmp_path: Path) -> None:
    _proc(tmp_path, 7, CASES["v1 cgroupfs guaranteed"])
    resolver = PodResolver(str(tmp_path))
    assert resolver.pod_uid(7) == UID
    resolver.forget_except(set())
    other = "11111111-2222-3333-4444-555555555555"
    _proc(tmp_path, 7, f"0::/kubepods/pod{other}/{CID}\n")
    assert resolver.pod_uid(7) == other
