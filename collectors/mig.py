"""MIG arithmetic: how much of a physical GPU a MIG slice is.

A slice's share of its GPU is ``g / G``: ``g`` is the number before ``g.`` in the
profile name (``3g.20gb`` -> 3, ``1c.3g.20gb`` -> 3) and ``G`` the number of compute
slices the parent model has. The table below is NVIDIA's, from the MIG user guide's
"Supported MIG profiles" section.
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

_PROFILE = re.compile(r"(?:^|\.)(\d+)g\.\d+gb", re.IGNORECASE)


def model_compute_slices(model: str) -> int | None:
    """Compute slices of a MIG-capable model, or None for a model we do not know."""
    upper = model.upper()
    for needle, slices in _COMPUTE_SLICES:
        if needle in upper:
            return slices
    return None


def profile_compute_slices(profile: str) -> int | None:
    """The ``g`` of a MIG profile name, or None when the name has no ``<g>g.<mem>gb`` part."""
    match = _PROFILE.search(profile)
    return int(match.group(1)) if match else None
