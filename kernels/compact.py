"""Inference on a compact model: weights stored sparse (CSR by input unit), as int8 with a
scale per input unit, or as IEEE half floats, read in that form (never expanded).

One layer is ``out = act(A @ W + b)`` for the rows of ``A``. ``W`` (nin, nout) is given as
``indptr`` (nin + 1), ``indices`` (the output units of the stored entries, int32) and the
stored values in one of three arrays, picked by ``kind``: ``f32`` (float32), ``i8`` (int8,
times ``scales[i]`` for input unit i) or ``f16`` (the uint16 bits of IEEE half floats). An
empty ``indptr`` means every entry is stored, row-major. The unused value arrays are
empty, so every format runs one compiled kernel.

Sums run in float32, input unit by input unit, from the bias.
"""

import math

import numpy as np
from numba import prange

from ._jit import jit
from ._model import _activate
from .gradients import ROW_WORK_MIN_SIZE, ROWS_PER_TASK

KIND_F32, KIND_I8, KIND_F16 = 0, 1, 2


def half_table():
    """The float32 value of every IEEE half float, indexed by its 16 bits (256 KiB): a half
    weight decodes with one table read."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16) \
        .astype(np.float32)


@jit(inline="always")
def _stored(kind, f32, i8, f16, table, e, scale):
    if kind == KIND_I8:
        return np.float32(i8[e]) * scale
    if kind == KIND_F16:
        return table[f16[e]]
    return f32[e]


@jit(parallel=True, min_size=ROW_WORK_MIN_SIZE)
def compact_layer(A, indptr, indices, kind, f32, i8, f16, table, scales, bias, act, hidden,
                  out):
    """``out = act(A @ W + b)`` (``act`` only when ``hidden``), ``W`` in its compact form;
    returns the first row whose outputs are not finite, or -1.

    A task takes ``ROWS_PER_TASK`` rows at once, transposed: for each stored weight
    ``W[i, j]`` one contiguous loop adds ``W[i, j] * A[rows, i]`` to output unit j of all
    the task's rows. That loop vectorizes whatever the sparsity pattern (a row at a time,
    a sparse layer would scatter one product per weight), and a weight is decoded once
    per task, not once per row.
    """
    n = A.shape[0]
    nin = A.shape[1]
    nout = out.shape[1]
    dense = indptr.shape[0] == 0
    has_b = bias.shape[0] > 0
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    bad = np.empty(n_tasks, np.int64)
    for t in prange(n_tasks):
        r0 = t * ROWS_PER_TASK
        m = min(n, r0 + ROWS_PER_TASK) - r0
        AT = np.empty((nin, m), np.float32)
        for r in range(m):
            for i in range(nin):
                AT[i, r] = A[r0 + r, i]
        ZT = np.empty((nout, m), np.float32)
        for j in range(nout):
            b = bias[j] if has_b else np.float32(0.0)
            for r in range(m):
                ZT[j, r] = b
        for i in range(nin):
            a = AT[i]
            s = scales[i] if kind == KIND_I8 else np.float32(1.0)
            if dense:
                for j in range(nout):
                    w = _stored(kind, f32, i8, f16, table, i * nout + j, s)
                    z = ZT[j]
                    for r in range(m):
                        z[r] += w * a[r]
            else:
                for e in range(indptr[i], indptr[i + 1]):
                    w = _stored(kind, f32, i8, f16, table, e, s)
                    z = ZT[indices[e]]
                    for r in range(m):
                        z[r] += w * a[r]
        first_bad = -1
        for r in range(m):
            ok = True
            for j in range(nout):
                v = ZT[j, r]
                if hidden:
                    v = _activate(v, act)
                out[r0 + r, j] = v
                ok = ok and math.isfinite(v)
            if not ok and first_bad < 0:
                first_bad = r0 + r
        bad[t] = first_bad
    for t in range(n_tasks):
        if bad[t] >= 0:
            return bad[t]
    return -1
