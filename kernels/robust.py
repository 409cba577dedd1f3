"""Kernels of the Byzantine-robust aggregation rules.

Coordinate-wise rules (median, trimmed mean, Bulyan's second step) sort each
coordinate's K values with one sorting network applied to a block of coordinates at
a time: the comparator ``(a, b)`` becomes ``row_a, row_b = min, max`` over the
block, a branch-free loop that vectorizes across coordinates. A quickselect per
coordinate would branch unpredictably on every comparison and read U with a
stride of P; ``np.median(U, axis=0)`` pays both.

Distance-based rules (Krum, Multi-Krum, Bulyan's selection) need all pairwise
squared distances. They come from a Gram matrix built over fixed coordinate
chunks, each chunk's partial matrix kept apart and the partials summed in chunk
order, so the result does not depend on the number of threads. Every block of
coordinates is centred (its per-coordinate mean over the clients is subtracted)
before the dot products: distances do not change, and the common component that
makes ``|u|^2 + |v|^2 - 2 u.v`` cancel catastrophically is gone.

The API removes clients with NaN or Inf before calling these kernels: comparisons
with NaN have no order, so the kernels assume finite input.
"""

import numpy as np
from numba import prange

from ._intrinsics import fmax, fmin
from ._jit import jit

SORT_BLOCK = 128       # coordinates sorted together (K x 128 float32: 32 KiB, in L1, for K = 64)
SORT_TASK = 8          # sort blocks per parallel task (amortizes the buffer allocation)
GRAM_BLOCK = 1024       # coordinates per Gram update (K x 256 float32 stays in L2)
GRAM_CHUNK = 65536     # coordinates per partial Gram matrix: fixed, so the merge order is fixed


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


@jit(parallel=True)
def rank_mean(U, pairs, r_lo, r_hi, out):
    """``out[j]`` = mean of the sorted values of column j with ranks ``r_lo:r_hi``.

    The median is ranks ``[(K-1)//2, K//2 + 1)``, the trimmed mean ``[t, K - t)``.
    ``pairs`` must sort (at least) those ranks. The sum is float64, in rank order.
    """
    K, P = U.shape
    nblocks = (P + SORT_BLOCK - 1) // SORT_BLOCK
    ntasks = (nblocks + SORT_TASK - 1) // SORT_TASK
    inv = 1.0 / (r_hi - r_lo)
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
                out[lo + j] = acc[j] * inv


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
                out[lo + j] = s / beta


@jit(parallel=True)
def pairwise_sqdist(U, D):
    """``D[i, k] = |U[i] - U[k]|^2`` in float64 for the K rows of U.

    Each block of ``GRAM_BLOCK`` coordinates is centred, then its Gram matrix is
    accumulated in 2 x 4 register tiles (8 float32 dot products sharing 6 loads: the
    loop is bound by multiply-adds, not loads); each block's dot products are float32
    sums of 256 terms, added to a float64 partial matrix per chunk. Only tiles on or
    above the diagonal are computed (rows are padded to a multiple of 4 with zeros).
    """
    K, P = U.shape
    Kp = (K + 3) // 4 * 4
    nchunks = (P + GRAM_CHUNK - 1) // GRAM_CHUNK
    part = np.zeros((nchunks, Kp, Kp), np.float64)
    for c in prange(nchunks):
        buf = np.zeros((Kp, GRAM_BLOCK), U.dtype)
        zero = np.zeros(1, U.dtype)  # a typed zero: a Python 0.0 would make the sums float64
        mean = np.empty(GRAM_BLOCK, U.dtype)
        mean[0] = 1.0 / K
        inv_k = mean[0]  # 1/K in U's dtype
        c_hi = min(P, (c + 1) * GRAM_CHUNK)
        for lo in range(c * GRAM_CHUNK, c_hi, GRAM_BLOCK):
            B = min(c_hi, lo + GRAM_BLOCK) - lo
            # Centre on the clients' mean of each coordinate. Any centre works (distances
            # are translation invariant); it only has to be near the data, so float32 will do.
            # Row segments are taken as views: indexing U[i, lo + j] directly makes Numba
            # test each computed index for negative wraparound, which stops vectorization.
            for j in range(B):
                mean[j] = 0.0
            for i in range(K):
                seg = U[i, lo:lo + B]
                for j in range(B):
                    mean[j] += seg[j]
            for j in range(B):
                mean[j] *= inv_k
            for i in range(K):
                seg = U[i, lo:lo + B]
                dst = buf[i]
                for j in range(B):
                    dst[j] = seg[j] - mean[j]
            for j in range(B, GRAM_BLOCK):  # a short last block: zero the tail
                for i in range(K):
                    buf[i, j] = 0.0
            for i in range(0, Kp, 2):
                for k in range(i - i % 4, Kp, 4):
                    s00 = zero[0]
                    s01 = s00
                    s02 = s00
                    s03 = s00
                    s10 = s00
                    s11 = s00
                    s12 = s00
                    s13 = s00
                    for j in range(GRAM_BLOCK):
                        a0 = buf[i, j]
                        a1 = buf[i + 1, j]
                        b0 = buf[k, j]
                        b1 = buf[k + 1, j]
                        b2 = buf[k + 2, j]
                        b3 = buf[k + 3, j]
                        s00 += a0 * b0
                        s01 += a0 * b1
                        s02 += a0 * b2
                        s03 += a0 * b3
                        s10 += a1 * b0
                        s11 += a1 * b1
                        s12 += a1 * b2
                        s13 += a1 * b3
                    part[c, i, k] += s00
                    part[c, i, k + 1] += s01
                    part[c, i, k + 2] += s02
                    part[c, i, k + 3] += s03
                    part[c, i + 1, k] += s10
                    part[c, i + 1, k + 1] += s11
                    part[c, i + 1, k + 2] += s12
                    part[c, i + 1, k + 3] += s13
    G = np.zeros((K, K), np.float64)
    for c in range(nchunks):
        for i in range(K):
            for k in range(i, K):
                G[i, k] += part[c, i, k]
    for i in range(K):
        D[i, i] = 0.0
        for k in range(i + 1, K):
            d = max(0.0, G[i, i] + G[k, k] - 2.0 * G[i, k])
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
