"""The fake GPUs' figures agree with the real nvidia-smi captures they were taken from.

The NVML tests carry these figures as constants (tests/fakenvml/__init__.py) so they
run on a fresh clone; this test reads the captures in shared/data when they are there.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import shared_data
from tests.fakenvml import MIB, FakeGpu, h100, h100_mig, h200, h200_mig, l40s

CAPTURES = {
    "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt": h100,
    "linux-x86_64__nvidia-h100-mig__590.48.01.txt": h100_mig,
    "linux-x86_64__nvidia-h200__590.48.01.txt": h200,
    "linux-x86_64__nvidia-h200-mig__590.48.01.txt": h200_mig,
    "linux-x86_64__nvidia-l40s__595.80.txt": l40s,
}


def _capture(name: str) -> str:
    data = shared_data()
    if data is None:
        pytest.skip("shared/data (the real nvidia-smi captures) is not beside this checkout")
    return (data / "nvidia-smi-captures" / name).read_text()


def _section(text: str, title: str) -> str:
    """The body of the `# <title>` section of a capture."""
    start = text.index(f"# {title}\n")
    body = text[start:].split("\n", 1)[1]
    nxt = re.search(r"^#{80}\n# [a-z]+ :: ", body, re.MULTILINE)
    return body[: nxt.start()] if nxt else body


@pytest.mark.parametrize("name", CAPTURES)
def test_fake_gpu_matches_its_capture(name: str) -> None:
    text = _capture(name)
    gpu: FakeGpu = CAPTURES[name]()
    query = _section(text, "load :: query (-q)")
    assert re.search(r"Product Name\s+: (.+)", query).group(1).strip() == gpu.name
    fb = query[query.index("\n    FB Memory Usage"):]
    assert int(re.search(r"Total\s+: (\d+) MiB", fb).group(1)) * MIB == gpu.mem_total
    assert int(re.search(r"Used\s+: (\d+) MiB", fb).group(1)) * MIB == gpu.mem_used
    power = float(re.search(r"Instantaneous Power Draw\s+: ([\d.]+) W", query).group(1))
    assert power == gpu.power_w
    listing = _section(text, "capabilities :: list (-L)")
    profiles = re.findall(r"MIG (\S+)\s+Device", listing)
    assert [m.name.split(" MIG ")[1] for m in gpu.mig or ()] == profiles
    shared = [int(x) for x in re.findall(r"Shared FB Memory Usage\n\s+Total\s+: (\d+) MiB", query)]
    assert [m.mem_total // MIB for m in gpu.mig or ()] == shared
