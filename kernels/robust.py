"""Kernels of the Byzantine-robust aggregation rules.

Coordinate-wise rules (median, trimmed mean, Bulyan's second step) sort each
coordinate's K values with one sorting network applied to a block of coordinates at
a time: the comparator ``(a, b)`` becomes ``row_a, row_b = min, max`` over the
block, a branch-free loop that vectorizes across coordinates. A quickselect per
coordinate would branch unpredictably on every comparison and read U with a
stride of P; ``np.median(U, axis=0)`` pays both.

Distance-based rules (Krum, Multi-Krum, Bulyan's selection) need all pairwise
squared distances, and an attacker chooses the data they are computed from. They are
summed from the differences themselves, ``sum_j (u_j - v_j)^2``, in float64: every
term is non-negative and carries a relative error of a few ulps, so each distance is
accurate to about ``P * 2**-53`` relative whatever the magnitudes. A Gram matrix
(``|u|^2 + |v|^2 - 2 u.v``) is faster but cancels: centred on the clients' mean, one
update at 1e4 among honest ones of size 0.01 left the honest distances to float32
rounding noise and let Krum pick an attacker. The sums run over fixed coordinate
chunks, each chunk's partial matrix kept apart and the partials summed in chunk order,
so the result does not depend on the number of threads.

The API removes clients with NaN or Inf before calling these kernels: comparisons
with NaN have no order, so the kernels assume finite input.
"""

import numpy as np
from numba import prange

from ._intrinsics import fmax, fmin
from ._jit import jit

SORT_BLOCK = 128       # coordinates sorted together (K x 128 float32: 32 KiB, in L1, for K = 64)
SORT_TASK = 8          # sort blocks per parallel task (amortizes the buffer allocation)
DIST_BLOCK = 256       # coordinates per distance update (K x 256 float64: 200 KiB at K=100, in L2)
DIST_CHUNK = 65536     # coordinates per partial distance matrix: fixed, so the merge order is fixed


@jit(inline="always")
def _load_sorted(U, lo, B, pairs, buf):
    """Copy ``U[:, lo:lo+B]`` into ``buf`` and sort each column with the network ``pairs``."""
    K = U.shape[0]
    for i in range(K):
        seg = U[i, lo:lo + B]  # a view: see pairwise_sqdist on computed indices
        for j in range(B):
            buf[i, j] = seg[j]
    for c in range(pairs.shape[0]):
        a = pairs[c, 0]
        b = pairs[c, 1]
        for j in range(B):
            x = buf[a, j]
            y = buf[b, j]
            buf[a, j] = fmin(x, y)
            buf[b, j] = fmax(x, y)


@jit(fastmath=False)
def _divide(s, n):
    """``s / n`` correctly rounded, as ``np.mean`` divides: under the kernels' fastmath
    (``arcp``) LLVM may turn a division by a loop constant into a multiplication by its
    rounded reciprocal, one ulp off. A division per output value costs nothing beside
    the sorting network."""
    return s / n


@jit(parallel=True)
def rank_mean(U, pairs, r_lo, r_hi, out):
    """``out[j]`` = mean of the sorted values of column j with ranks ``r_lo:r_hi``.

    The median is ranks ``[(K-1)//2, K//2 + 1)``, the trimmed mean ``[t, K - t)``.
    ``pairs`` must sort (at least) those ranks. The sum is float64, in rank order.
    """
    K, P = U.shape
    nblocks = (P + SORT_BLOCK - 1) // SORT_BLOCK
    ntasks = (nblocks + SORT_TASK - 1) // SORT_TASK
    cnt = np.float64(r_hi - r_lo)
    for t in prange(ntasks):
        buf = np.empty((K, SORT_BLOCK), U.dtype)
        acc = np.empty(SORT_BLOCK, np.float64)
        for blk in range(t * SORT_TASK, min(nblocks, (t + 1) * SORT_TASK)):
            lo = blk * SORT_BLOCK
            B = min(P, lo + SORT_BLOCK) - lo
            _load_sorted(U, lo, B, pairs, buf)
            for j in range(B):
                acc[j] = buf[r_lo, j]
            for r in range(r_lo + 1, r_hi):
                for j in range(B):
                    acc[j] += buf[r, j]
            for j in range(B):
                out[lo + j] = _divide(acc[j], cnt)


@jit(parallel=True)
def closest_to_median_mean(U, pairs, beta, out):
    """Bulyan's coordinate step: ``out[j]`` = mean of the ``beta`` values of column j
    closest to its median (El Mhamdi et al. 2018).

    In a sorted column those values form a window around the middle; it grows one
    value at a time towards the closer side, the lower one on a tie.
    """
    K, P = U.shape
    nblocks = (P + SORT_BLOCK - 1) // SORT_BLOCK
    ntasks = (nblocks + SORT_TASK - 1) // SORT_TASK
    half = K // 2
    for t in prange(ntasks):
        buf = np.empty((K, SORT_BLOCK), U.dtype)
        for blk in range(t * SORT_TASK, min(nblocks, (t + 1) * SORT_TASK)):
            lo = blk * SORT_BLOCK
            B = min(P, lo + SORT_BLOCK) - lo
            _load_sorted(U, lo, B, pairs, buf)
            for j in range(B):
                if K % 2 == 1:
                    med = np.float64(buf[half, j])
                else:
                    med = 0.5 * (np.float64(buf[half - 1, j]) + np.float64(buf[half, j]))
                i = half - 1
                k = half
                s = 0.0
                for _ in range(beta):
                    if i >= 0 and (k >= K or med - buf[i, j] <= buf[k, j] - med):
                        s += buf[i, j]
                        i -= 1
                    else:
                        s += buf[k, j]
                        k += 1
                out[lo + j] = _divide(s, np.float64(beta))


@jit(parallel=True)
def pairwise_sqdist(U, D):
    """``D[i, k] = |U[i] - U[k]|^2`` in float64 for the K rows of U.

    Each block of ``DIST_BLOCK`` coordinates is converted to float64 once, then the
    squared differences are summed in 2 x 4 register tiles (8 pairs sharing 6 loads: a
    subtraction and a multiply-add per pair and coordinate). Float64 throughout: the
    difference of two float32 values is rounded at most once in float64 (it is exact when
    their exponents lie within 29 of each other), its square once more, and the terms are
    non-negative, so the sum is accurate to about ``P * 2**-53`` relative; a float32
    update's squares never overflow, a float64 update's only beyond |u| ~ 1e154 (the
    caller checks). Only tiles on or
    above the diagonal are computed (rows are padded to a multiple of 4 with zeros).
    """
    K, P = U.shape
    Kp = (K + 3) // 4 * 4
    nchunks = (P + DIST_CHUNK - 1) // DIST_CHUNK
    part = np.zeros((nchunks, Kp, Kp), np.float64)
    for c in prange(nchunks):
        buf = np.zeros((Kp, DIST_BLOCK), np.float64)
        c_hi = min(P, (c + 1) * DIST_CHUNK)
        for lo in range(c * DIST_CHUNK, c_hi, DIST_BLOCK):
            B = min(c_hi, lo + DIST_BLOCK) - lo
            # Row segments are taken as views: indexing U[i, lo + j] directly makes Numba
            # test each computed index for negative wraparound, which stops vectorization.
            for i in range(K):
                seg = U[i, lo:lo + B]
                dst = buf[i]
                for j in range(B):
                    dst[j] = seg[j]
                for j in range(B, DIST_BLOCK):  # a short last block: zero the tail
                    dst[j] = 0.0
            for i in range(0, Kp, 2):
                for k in range(i - i % 4, Kp, 4):
                    s00 = 0.0
                    s01 = 0.0
                    s02 = 0.0
                    s03 = 0.0
                    s10 = 0.0
                    s11 = 0.0
                    s12 = 0.0
                    s13 = 0.0
                    for j in range(DIST_BLOCK):
                        a0 = buf[i, j]
                        a1 = buf[i + 1, j]
                        b0 = buf[k, j]
                        b1 = buf[k + 1, j]
                        b2 = buf[k + 2, j]
                        b3 = buf[k + 3, j]
                        d00 = a0 - b0
                        d01 = a0 - b1
                        d02 = a0 - b2
                        d03 = a0 - b3
                        d10 = a1 - b0
                        d11 = a1 - b1
                        d12 = a1 - b2
                        d13 = a1 - b3
                        s00 += d00 * d00
                        s01 += d01 * d01
                        s02 += d02 * d02
                        s03 += d03 * d03
                        s10 += d10 * d10
                        s11 += d11 * d11
                        s12 += d12 * d12
                        s13 += d13 * d13
                    part[c, i, k] += s00
                    part[c, i, k + 1] += s01
                    part[c, i, k + 2] += s02
                    part[c, i, k + 3] += s03
                    part[c, i + 1, k] += s10
                    part[c, i + 1, k + 1] += s11
                    part[c, i + 1, k + 2] += s12
                    part[c, i + 1, k + 3] += s13
    for i in range(K):
        D[i, i] = 0.0
        for k in range(i + 1, K):
            d = 0.0
            for c in range(nchunks):
                d += part[c, i, k]
            D[i, k] = d
            D[k, i] = d


@jit(parallel=True)
def row_sqdist(U, z, out):
    """``out[k] = |U[k] - z|^2`` in float64 (z = zeros gives the squared norms)."""
    K, P = U.shape
    for k in prange(K):
        s = 0.0
        for j in range(P):
            d = np.float64(U[k, j]) - z[j]
            s += d * d
        out[k] = s
