"""Per-group quantiles in one sort, for ten million rows and thousands of groups.

``DataFrame.groupby().quantile()`` is exact but slow when there are many groups; this
puts the rows in group order once (a radix sort of the group ids), sorts each group's
values, and interpolates linearly between order statistics, which is what pandas and
numpy call the 'linear' method, so the figures are the same. The sorted values are kept
too (:class:`Sorted`), so a recommender can ask how many of a group's values lie above a
threshold without sorting again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Sorted:
    """Values sorted within each group: group ``g`` holds ``values[starts[g]:starts[g] + counts[g]]``."""

    values: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    def of(self, group: int) -> np.ndarray:
        """The sorted values of one group (a view, no copy)."""
        s = int(self.starts[group])
        return self.values[s:s + int(self.counts[group])]

    def quantiles(self, qs: Sequence[float]) -> np.ndarray:
        """Array (n_groups, len(qs)); NaN for a group with no value."""
        out = np.full((len(self.counts), len(qs)), np.nan)
        has = self.counts > 0
        for j, q in enumerate(qs):
            pos = (self.counts[has] - 1) * q
            lo = np.floor(pos).astype(np.int64)
            hi = np.minimum(lo + 1, self.counts[has] - 1)
            frac = pos - lo
            base = self.starts[has]
            v = self.values
            a, b = v[base + lo].astype(np.float64), v[base + hi].astype(np.float64)
            out[has, j] = a + (b - a) * frac
        return out


def group_sorted(groups: np.ndarray, values: np.ndarray, n_groups: int, order: np.ndarray | None = None) -> Sorted:
    """The non-NaN ``values`` sorted within each of ``n_groups`` groups.

    The rows are put in group order first (``order``, from :func:`group_order`; pass it
    when several columns are sorted by the same groups), then each group's slice is
    sorted on its own: n log(n / groups) work instead of one sort of every row.
    """
    groups = np.asarray(groups)
    values = np.asarray(values)
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if order is None:
        order = group_order(groups, n_groups)
    v = values[order]  # a copy: sorted in place below
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    for g in np.flatnonzero(counts > 1):
        s = starts[g]
        v[s:s + counts[g]].sort()  # NaN sorts last
    valid = np.bincount(groups, weights=~np.isnan(values), minlength=n_groups).astype(np.int64)
    return Sorted(v, starts, valid)


def group_order(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Row indices in group order (stable): a radix sort when the ids fit 16 bits."""
    dtype = np.int16 if n_groups <= np.iinfo(np.int16).max else np.int32 if n_groups <= np.iinfo(np.int32).max else np.int64
    return np.argsort(np.asarray(groups).astype(dtype, copy=False), kind="stable")


def group_quantiles(groups: np.ndarray, values: np.ndarray, qs: Sequence[float], n_groups: int) -> np.ndarray:
    """Array (n_groups, len(qs)) of quantiles of ``values`` per group; NaN values are skipped.

    A group with no (non-NaN) value gets NaN.
    """
    return group_sorted(groups, values, n_groups).quantiles(qs)


@dataclass(frozen=True)
class Counted:
    """A distribution as its distinct values (ascending) and how often each occurs.

    A workload's minute peaks are a few dozen distinct values (NVML reports whole percent)
    repeated over ten thousand minutes, so the query engine hands them over counted, and
    this answers what the strategies ask of the sorted minutes (how many, a quantile with
    numpy's linear interpolation, how many lie above a level, the largest, the mean)
    exactly as the expanded array would.
    """

    values: np.ndarray  # float64, ascending, distinct
    counts: np.ndarray  # int64, > 0

    @staticmethod
    def of(values: np.ndarray, counts: np.ndarray) -> "Counted":
        """From (value, count) pairs in any order (equal values are merged)."""
        values = np.asarray(values, np.float64)
        counts = np.asarray(counts, np.int64)
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        if len(values) > 1 and (np.diff(values) == 0).any():
            values, where = np.unique(values, return_inverse=True)
            counts = np.bincount(where, weights=counts).astype(np.int64)
        return Counted(values, counts)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def _at(self, rank: np.ndarray) -> np.ndarray:
        """The value at each 0-based rank of the expanded sorted array."""
        return self.values[np.searchsorted(np.cumsum(self.counts), rank, side="right")]

    def quantile(self, q: float) -> float:
        """numpy's default (linear) quantile of the expanded values; NaN when empty."""
        n = len(self)
        if n == 0:
            return float("nan")
        pos = (n - 1) * q
        lo = int(np.floor(pos))
        a, b = self._at(np.array([lo, min(lo + 1, n - 1)]))
        return float(a + (b - a) * (pos - lo))

    def above(self, level: float) -> int:
        """How many values exceed ``level``."""
        return int(self.counts[np.searchsorted(self.values, level, side="right"):].sum())

    def max(self) -> float:
        return float(self.values[-1]) if len(self.values) else float("nan")

    def mean(self) -> float:
        n = len(self)
        return float(np.dot(self.values, self.counts) / n) if n else float("nan")
