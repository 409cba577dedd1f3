"""Inference on a compact model: weights stored sparse (CSR by input unit), as int8 with a
scale per input unit, or as IEEE half floats, read in that form (never expanded).

One layer is ``out = act(A @ W + b)`` for the rows of ``A``. ``W`` (nin, nout) is given as
``indptr`` (nin + 1), ``indices`` (the output units of the stored entries, int32) and the
stored values in one of three arrays, picked by ``kind``: ``f32`` (float32), ``i8`` (int8,
times ``scales[i]`` for input unit i) or ``f16`` (the uint16 bits of IEEE half floats). An
empty ``indptr`` means every entry is stored, row-major. The unused value arrays are
empty, so every format runs one compiled kernel.

Row r's outputs start from the bias and add ``A[r, i] * W[i, :]`` input unit by input unit
(skipping zero inputs: a ReLU layer's zeros cost nothing), in float32.
"""

import math

import numpy as np
from numba import prange

from ._jit import jit
from ._model import _activate
from .gradients import ROW_WORK_MIN_SIZE, ROWS_PER_TASK

KIND_F32, KIND_I8, KIND_F16 = 0, 1, 2


@jit(inline="always")
def half_to_float(h):
    """The float32 value of the IEEE half float whose bits are ``h`` (0..65535)."""
    s = (h >> 15) & 1
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = np.float32(m) * np.float32(2.0 ** -24)
    elif e == 31:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = np.float32(1.0 + m / 1024.0) * np.float32(2.0 ** (e - 15))
    return -v if s else v


@jit(inline="always")
def _stored(kind, f32, i8, f16, e, scale):
    if kind == KIND_I8:
        return np.float32(i8[e]) * scale
    if kind == KIND_F16:
        return half_to_float(np.int32(f16[e]))
    return f32[e]


@jit(parallel=True, min_size=ROW_WORK_MIN_SIZE)
def compact_layer(A, indptr, indices, kind, f32, i8, f16, scales, bias, act, hidden, out):
    """``out = act(A @ W + b)`` (``act`` only when ``hidden``), ``W`` in its compact form;
    returns the first row whose outputs are not finite, or -1."""
    n = A.shape[0]
    nin = A.shape[1]
    nout = out.shape[1]
    dense = indptr.shape[0] == 0
    has_b = bias.shape[0] > 0
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    bad = np.empty(n_tasks, np.int64)
    for t in prange(n_tasks):
        first_bad = -1
        for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):
            z = out[r]
            for j in range(nout):
                z[j] = bias[j] if has_b else 0.0
            for i in range(nin):
                x = A[r, i]
                if x == 0:
                    continue
                s = scales[i] if kind == KIND_I8 else np.float32(1.0)
                if dense:
                    base = i * nout
                    for j in range(nout):
                        z[j] += x * _stored(kind, f32, i8, f16, base + j, s)
                else:
                    for e in range(indptr[i], indptr[i + 1]):
                        z[indices[e]] += x * _stored(kind, f32, i8, f16, e, s)
            ok = True
            for j in range(nout):
                if hidden:
                    z[j] = _activate(z[j], act)
                ok = ok and math.isfinite(z[j])
            if not ok and first_bad < 0:
                first_bad = r
        bad[t] = first_bad
    for t in range(n_tasks):
        if bad[t] >= 0:
            return bad[t]
    return -1
