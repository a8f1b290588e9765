"""MIG arithmetic: how much of a physical GPU a MIG slice is.

A slice's share of its GPU is ``g / G``: ``g`` is the number before ``g.`` in the
profile name (``3g.20gb`` -> 3) and ``G`` the number of compute slices the parent
model has. A GPU instance split into compute instances shows up in NVML as one MIG
device per compute instance, named ``<c>c.<g>g.<mem>gb``: each holds ``c`` of the GPU
instance's ``g`` compute slices, so its ``g`` is ``c`` (``1c.3g.71gb`` -> 1,
``2c.3g.71gb`` -> 2), and the compute instances of one GPU instance add up to it.
The table below is NVIDIA's, from the MIG user guide's "Supported MIG profiles" section.
"""

from __future__ import annotations

import re

# Substrings of NVML product names -> compute slices of the whole GPU. Checked in
# order, so the more specific names come first.
_COMPUTE_SLICES: tuple[tuple[str, int], ...] = (
    ("A30", 4),
    ("A100", 7),
    ("A800", 7),
    ("H100", 7),
    ("H800", 7),
    ("H200", 7),
    ("H20", 7),
    ("GH200", 7),
    ("B200", 7),
    ("GB200", 7),
    ("B300", 7),
    ("RTX PRO 6000", 4),
)

_PROFILE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.\d+gb", re.IGNORECASE)


def model_compute_slices(model: str) -> int | None:
    """Compute slices of a MIG-capable model, or None for a model we do not know."""
    upper = model.upper()
    for needle, slices in _COMPUTE_SLICES:
        if needle in upper:
            return slices
    return None


def profile_compute_slices(profile: str) -> int | None:
    """Compute slices a MIG device holds: the ``c`` of ``<c>c.<g>g.<mem>gb``, else the
    ``g`` of ``<g>g.<mem>gb``; None when the name is neither."""
    match = _PROFILE.match(profile.strip())
    if not match:
        return None
    return int(match.group(1) or match.group(2))
