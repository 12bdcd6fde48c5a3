# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Feature dicts to columns in C: what :func:`eddy.models.kernels.columns.columns_of` runs.

Two passes over the rows with ``PyDict_Next``: the first names the numeric columns in
order of first appearance, the second fills the matrix, the presence mask and, where a
row's keys are not in column order, the row's own order. The semantics are those of
``eddy.models.kernels.columns.columns_reference`` (the pure-Python version the tests compare
with): numbers and booleans are numeric (``float(value)``), strings are text, anything
else is converted with ``float()`` as Python would (and raises as it would).
"""

from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_Check

import numpy as np


cdef inline double _number(object value) except? -1.0:
    if PyFloat_Check(value):
        return PyFloat_AS_DOUBLE(value)
    if value is True:
        return 1.0
    if value is False:
        return 0.0
    return float(value)  # ints (exactly as Python rounds them), and whatever else


def build(list rows):
    """``(names, values, present, order, text)`` of ``rows`` (dicts, or lists/tuples of
    numbers as dense rows named 0, 1, …); ``order`` is ``None`` when every row's numeric
    keys come in column order, ``text`` when no row has a text feature."""
    cdef list dicts = [r if isinstance(r, dict) else dict(enumerate(r)) for r in rows]
    cdef dict index = {}
    cdef Py_ssize_t n = len(dicts), i, pos, col, last, width
    cdef PyObject *key
    cdef PyObject *value
    cdef dict row, found
    cdef bint any_text = False, ordered = True
    # Pass 1: the numeric columns, in order of first appearance.
    for i in range(n):
        row = dicts[i]
        pos = 0
        while PyDict_Next(row, &pos, &key, &value):
            if PyUnicode_Check(<object>value):
                any_text = True
            elif PyDict_GetItem(index, <object>key) == NULL:
                index[<object>key] = len(index)
    m = len(index)
    values_array = np.zeros((n, m), dtype=np.float64)
    present_array = np.zeros((n, m), dtype=np.bool_)
    order_array = np.full((n, m), -1, dtype=np.int32)
    cdef double[:, ::1] values = values_array
    cdef unsigned char[:, ::1] present = present_array.view(np.uint8)
    cdef int[:, ::1] order = order_array
    text = [None] * n if any_text else None
    # Pass 2: the cells, and each row's text in its own order.
    for i in range(n):
        row = dicts[i]
        last = -1
        width = 0
        found = None
        pos = 0
        while PyDict_Next(row, &pos, &key, &value):
            if PyUnicode_Check(<object>value):
                if found is None:
                    found = {}
                found[<object>key] = <object>value
                continue
            col = <Py_ssize_t>(<object>PyDict_GetItem(index, <object>key))
            values[i, col] = _number(<object>value)
            present[i, col] = 1
            order[i, width] = <int>col
            width += 1
            if col <= last:
                ordered = False
            last = col
        if found is not None:
            text[i] = found
    return tuple(index), values_array, present_array, None if ordered else order_array, text
