"""Features of many rows as columns: what the batch decoder gives and the compiled
learners take.

A batch of samples becomes one float64 matrix over the numeric features of the batch
(numbers, and booleans as 0.0/1.0), with a presence mask: River skips a key a row does
not have, so a learner that takes columns must skip an absent cell, never read it as
0. Text features, which only some models take (one-hot encoded, or natively by trees),
stay per row.

River sums over a row's keys in the row's own order, and floating-point addition is
not associative, so the order is part of the data: ``order`` gives it for the rows
whose keys do not come in column order (``None`` when every row's do, the usual case
of a producer that writes its features in a fixed order).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from eddy.models.kernels import _columns


@dataclass(frozen=True, slots=True, eq=False)
class FeatureColumns:
    """The features of ``n`` rows as columns.

    Attributes
    ----------
    names
        The numeric columns' feature names (text for JSON objects; ``0, 1, …`` for
        dense feature lists, as River numbers them), in order of first appearance in
        the batch, row by row.
    values
        float64, shape ``(n, len(names))``, C-contiguous; 0.0 where a row lacks the
        feature.
    present
        bool, shape ``(n, len(names))``: whether row ``i`` has feature ``j``.
    order
        ``None`` when every row's numeric keys come in column order. Otherwise int32,
        shape ``(n, len(names))``: row ``i``'s numeric features as column indices in
        the row's own key order, then ``-1``.
    text
        ``None`` when no row has a text feature. Otherwise one entry per row: ``None``
        or the row's text features (name -> category) in the row's key order.
    """

    names: tuple[Hashable, ...]
    values: npt.NDArray[np.float64]
    present: npt.NDArray[np.bool_]
    order: npt.NDArray[np.int32] | None = None
    text: Sequence[dict[Hashable, str] | None] | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def row_keys(self, i: int) -> list[Hashable]:
        """The numeric feature names of row ``i``, in the row's own order."""
        if self.order is None:
            return [self.names[j] for j in np.flatnonzero(self.present[i])]
        return [self.names[j] for j in self.order[i] if j >= 0]

    def row(self, i: int) -> dict[Hashable, float | str]:
        """Row ``i`` as River takes it: numbers in the row's order, then its text."""
        values = self.values[i]
        out: dict[Hashable, float | str] = {}
        if self.order is None:
            for j in np.flatnonzero(self.present[i]):
                out[self.names[j]] = float(values[j])
        else:
            for j in self.order[i]:
                if j < 0:
                    break
                out[self.names[j]] = float(values[j])
        if self.text is not None and self.text[i]:
            out.update(self.text[i])  # type: ignore[arg-type]
        return out


def columns_of(rows: Sequence[dict[Hashable, object] | Sequence[object]]) -> FeatureColumns:
    """Columns of decoded feature rows: dicts (numbers and booleans numeric, strings as
    text), or lists of numbers (dense rows, features named ``0, 1, …`` as River numbers
    them). Compiled (``eddy.models.kernels._columns``); :func:`columns_reference` is the
    same in Python.

    >>> c = columns_of([{"a": 1.0, "b": True}, {"b": 2, "c": "x", "a": 0.5}])
    >>> c.names, c.values.tolist(), c.present.tolist()
    (('a', 'b'), [[1.0, 1.0], [0.5, 2.0]], [[True, True], [True, True]])
    >>> c.order.tolist(), list(c.text)
    ([[0, 1], [1, 0]], [None, {'c': 'x'}])
    >>> c.row(1)
    {'b': 2.0, 'a': 0.5, 'c': 'x'}
    >>> columns_of([[1.0, 2.0]]).names
    (0, 1)
    """
    names, values, present, order, text = _columns.build(list(rows))
    return FeatureColumns(names, values, present, order, text)


def columns_reference(rows: Sequence[dict[Hashable, object] | Sequence[object]]) -> FeatureColumns:
    """:func:`columns_of` in plain Python: the reference the compiled builder is tested
    against; not the hot path."""
    rows = [row if isinstance(row, dict) else dict(enumerate(row)) for row in rows]
    index: dict[Hashable, int] = {}
    for row in rows:
        for key, value in row.items():
            if not isinstance(value, str) and key not in index:
                index[key] = len(index)
    n, k = len(rows), len(index)
    values = np.zeros((n, k), dtype=np.float64)
    present = np.zeros((n, k), dtype=np.bool_)
    order = np.full((n, k), -1, dtype=np.int32)
    text: list[dict[Hashable, str] | None] = [None] * n
    ordered = True
    any_text = False
    for i, row in enumerate(rows):
        m, last = 0, -1
        for key, value in row.items():
            if isinstance(value, str):
                if text[i] is None:
                    text[i] = {}
                text[i][key] = value  # type: ignore[index]
                any_text = True
                continue
            j = index[key]
            values[i, j] = float(value)  # type: ignore[arg-type]
            present[i, j] = True
            order[i, m] = j
            m += 1
            ordered = ordered and j > last
            last = j
    return FeatureColumns(
        tuple(index),
        values,
        present,
        None if ordered else order,
        text if any_text else None,
    )
