"""Grouping ten million rows by categorical columns without building Python objects.

pandas ``groupby`` on categoricals is correct but slow and memory-hungry at this size;
here the columns' integer codes are combined into one key per row (mixed radix), and
the key is compressed to dense group ids with a counting pass when the key space is
small, or a hash table (``pandas.factorize``) when it is not: linear in the rows, where
a sort (``numpy.unique``) took seconds. Group keys are decoded back to the category
values only once per group.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

DENSE_LIMIT = 1 << 25  # key spaces up to this size are compressed by counting, not sorting


def column_codes(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes + 1 with 0 for missing, category values with None first) of a column."""
    if not isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype("category")
    codes = series.cat.codes.to_numpy()
    values = np.empty(len(series.cat.categories) + 1, dtype=object)
    values[0] = None
    values[1:] = series.cat.categories.to_numpy(dtype=object)
    return codes.astype(np.int32 if len(values) < (1 << 31) else np.int64) + 1, values


def dense_ids(key: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray]:
    """(group id per row, the key of each group, ascending) for non-negative int keys below ``space``."""
    if space <= DENSE_LIMIT:
        present = np.bincount(key, minlength=space) > 0
        uniq = np.flatnonzero(present)
        remap = (np.cumsum(present) - 1).astype(_id_type(len(uniq)))
        return remap[key], uniq
    codes, found = pd.factorize(key, sort=False)  # hashing: one pass, however sparse the space
    found = np.asarray(found, dtype=np.int64)
    order = np.argsort(found, kind="stable")  # ascending keys, as the counting pass gives them
    rank = np.empty(len(order), _id_type(len(order)))
    rank[order] = np.arange(len(order))
    return rank[codes], found[order]


def _id_type(n_groups: int) -> type:
    """The narrowest integer type for group ids: half the memory of int64 for ten million rows."""
    return np.int32 if n_groups < (1 << 31) else np.int64


def group_ids(
    rows: pd.DataFrame, columns: Sequence[str], mask: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Dense group ids for the (masked) rows by ``columns`` (categorical) and ``extra`` int arrays.

    Returns the id of each selected row and a DataFrame with one row per group holding
    the decoded column values (None for missing) and the extra keys.
    """
    parts: list[tuple[str, int, np.ndarray]] = []  # name, radix, values (or [offset] for extra keys)
    key = None
    space = 1

    def push(name: str, codes: np.ndarray, size: int, values: np.ndarray) -> None:
        nonlocal key, space
        if space * size >= (1 << 62):
            raise OverflowError("too many groups to key")
        if key is None:
            key = codes.astype(np.int64)
        else:  # in place: one key array, however many columns
            key *= size
            key += codes
        space *= size
        parts.append((name, size, values))

    for c in columns:  # one column's codes at a time: the key grows, nothing else is kept
        codes, values = column_codes(rows[c])
        push(c, codes if mask is None or mask.all() else codes[mask], len(values), values)
    for name, arr in (extra or {}).items():
        arr = np.asarray(arr)
        lo = int(arr.min()) if len(arr) else 0
        push(name, arr - lo if lo else arr, (int(arr.max()) - lo + 1) if len(arr) else 1, np.array([lo]))
    if key is None:
        key = np.zeros(0 if mask is None else int(mask.sum()), np.int64)
    ids, uniq = dense_ids(key, space)
    del key
    out = {}
    rest = uniq
    for name, size, values in reversed(parts):
        rest, code = np.divmod(rest, size)
        out[name] = values[code] if values.dtype == object else code + values[0]
    keys = pd.DataFrame({name: pd.Series(out[name], dtype=object) for name, *_ in parts})
    return ids, keys


def sums(ids: np.ndarray, n_groups: int, **values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group sums of each array."""
    return {k: np.bincount(ids, weights=v, minlength=n_groups) for k, v in values.items()}


def group_max(ids: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group maximum ignoring NaN (NaN where a group has no value); no copy of the rows."""
    out = np.full(n_groups, np.nan)
    np.fmax.at(out, ids, values)  # fmax: NaN loses to any number, so NaN only where all are NaN
    return out
