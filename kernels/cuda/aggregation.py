"""Weighted means of client updates and the checks around them, on the GPU.

:func:`weighted_mean` gives each thread coordinates ``j, j + grid, ...``; a warp's 32
threads read 32 consecutive floats of a client's row, so every row streams through in
full 128-byte lines. Each coordinate is summed over the clients in order, four at a
time in the CPU kernel's fixed grouping ``(w0 u0 + w1 u1) + (w2 u2 + w3 u3)``, in float64:
the result equals the CPU's up to how each compiler contracts products into FMAs.
"""

import math

from numba import cuda

from ._jit import kernel


@kernel
def weighted_mean(U, w, inv_total, out, nbad):
    """``out[j] = inv_total * sum_k w[k] U[k, j]``; ``nbad[thread]`` counts non-finite outputs."""
    K = U.shape[0]
    P = U.shape[1]
    cnt = 0
    for j in range(cuda.grid(1), P, cuda.gridsize(1)):
        acc = 0.0
        k = 0
        while k + 4 <= K:
            acc += (w[k] * U[k, j] + w[k + 1] * U[k + 1, j]) + \
                   (w[k + 2] * U[k + 2, j] + w[k + 3] * U[k + 3, j])
            k += 4
        while k < K:
            acc += w[k] * U[k, j]
            k += 1
        v = acc * inv_total
        out[j] = v
        if not math.isfinite(v):
            cnt += 1
    nbad[cuda.grid(1)] = cnt


@kernel
def rows_nonfinite(U, flags):
    """``flags[k] = 1`` when row k holds a NaN or Inf (``flags`` starts at 0); grid (x, y):
    blocks stride over the columns in x and over the rows in y."""
    for k in range(cuda.blockIdx.y, U.shape[0], cuda.gridDim.y):
        row = U[k]
        for j in range(cuda.grid(1), U.shape[1], cuda.gridDim.x * cuda.blockDim.x):
            if not math.isfinite(row[j]):
                flags[k] = 1


@kernel
def take_rows(U, rows, out):
    """``out[i] = U[rows[i]]``; grid (x, y) as in :func:`rows_nonfinite`."""
    for i in range(cuda.blockIdx.y, rows.shape[0], cuda.gridDim.y):
        src = U[rows[i]]
        dst = out[i]
        for j in range(cuda.grid(1), U.shape[1], cuda.gridDim.x * cuda.blockDim.x):
            dst[j] = src[j]


@kernel
def summary(a, lo, hi, nonfinite):
    """Per thread: the smallest and largest finite value and the count of NaN/Inf of ``a``
    (1-D). Threads that see no finite value leave ``lo > hi``."""
    t = cuda.grid(1)
    lo[t] = math.inf
    hi[t] = -math.inf
    cnt = 0
    for j in range(t, a.shape[0], cuda.gridsize(1)):
        v = a[j]
        if math.isfinite(v):
            lo[t] = min(lo[t], v)
            hi[t] = max(hi[t], v)
        else:
            cnt += 1
    nonfinite[t] = cnt
