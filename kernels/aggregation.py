"""Weighted means of client updates: a (K, P) stack at once, or one update at a time.

Coordinates are split into fixed blocks processed under ``prange``; inside a block
the clients are visited in order, so every coordinate is summed in the same order
whatever the thread count. Sums are float64: a float32 sum of K updates loses
about log2(K) bits, and reading float32 while accumulating in float64 costs
nothing in a loop bound by memory bandwidth.
"""

import math

import numpy as np
from numba import carray, prange

from ._intrinsics import address_as_pointer
from ._jit import jit

BLOCK = 4096
MEAN_BLOCK = 16384


@jit
def _fold_rows(U, w, lo, hi, acc):
    """``acc[j - lo] += sum_k w[k] * U[k, j]`` for j in [lo, hi), clients in order.

    Four clients are folded into the accumulator per pass, which quarters the
    accumulator traffic; the grouping ``(w0 u0 + w1 u1) + (w2 u2 + w3 u3)`` is fixed, so
    the sum depends neither on the thread count nor on how the blocks were scheduled.
    """
    K = U.shape[0]
    m = hi - lo
    k = 0
    while k + 4 <= K:
        r0 = U[k, lo:hi]
        r1 = U[k + 1, lo:hi]
        r2 = U[k + 2, lo:hi]
        r3 = U[k + 3, lo:hi]
        w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
        for j in range(m):
            acc[j] += (w0 * r0[j] + w1 * r1[j]) + (w2 * r2[j] + w3 * r3[j])
        k += 4
    while k < K:
        r0 = U[k, lo:hi]
        w0 = w[k]
        for j in range(m):
            acc[j] += w0 * r0[j]
        k += 1


@jit
def _store_mean(acc, inv_total, out):
    """``out = acc * inv_total`` in out's dtype; returns how many results are not finite."""
    cnt = 0
    for j in range(acc.shape[0]):
        v = acc[j] * inv_total
        out[j] = v
        if not math.isfinite(v):
            cnt += 1
    return cnt


@jit(parallel=True)
def weighted_mean(U, w, inv_total, out):
    """``out[j] = inv_total * sum_k w[k] * U[k, j]``; returns the count of non-finite outputs.

    Blocks of ``MEAN_BLOCK`` coordinates keep the float64 accumulator in L2 while each
    client's segment (64 KiB of float32) streams from memory in one long run
    (``_fold_rows``).

    A NaN or Inf in any update reaches its coordinate's sum (0 * Inf is NaN too), so
    counting non-finite outputs detects bad inputs without a second pass over U.
    """
    P = U.shape[1]
    nb = (P + MEAN_BLOCK - 1) // MEAN_BLOCK
    nbad = 0
    for b in prange(nb):
        lo = b * MEAN_BLOCK
        hi = min(P, lo + MEAN_BLOCK)
        acc = np.zeros(hi - lo, np.float64)
        _fold_rows(U, w, lo, hi, acc)
        nbad += _store_mean(acc, inv_total, out[lo:hi])
    return nbad


@jit(parallel=True)
def accumulate_rows(acc, U, w):
    """``acc[j] += sum_k w[k] * U[k, j]`` into a float64 ``acc`` (a streaming mean's sum).

    The same fixed order as ``weighted_mean``: a block of clients adds the same bits
    whichever process or thread count runs it.
    """
    P = U.shape[1]
    nb = (P + MEAN_BLOCK - 1) // MEAN_BLOCK
    for b in prange(nb):
        lo = b * MEAN_BLOCK
        hi = min(P, lo + MEAN_BLOCK)
        _fold_rows(U, w, lo, hi, acc[lo:hi])


@jit(parallel=True)
def count_nonfinite(a):
    """Number of NaN/Inf values in a 1-D array (parallel, one read)."""
    n = a.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    nbad = 0
    for b in prange(nb):
        cnt = 0
        for j in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            if not math.isfinite(a[j]):
                cnt += 1
        nbad += cnt
    return nbad


@jit(parallel=True)
def rows_nonfinite(U, out):
    """``out[k]`` = True where row k of U holds a NaN or Inf.

    Counting ``abs(x) < inf`` over a block is a branch-free loop that vectorizes
    (an early ``break`` on the first bad value would not); a row stops at the first
    block with a non-finite value.
    """
    K, P = U.shape
    for k in prange(K):
        flag = False
        for lo in range(0, P, BLOCK):
            hi = min(P, lo + BLOCK)
            cnt = 0
            for j in range(lo, hi):
                cnt += abs(U[k, j]) < np.inf
            if cnt != hi - lo:
                flag = True
                break
        out[k] = flag


@jit(parallel=True)
def axpy(acc, w, u):
    """``acc += w * u`` with float64 ``acc``: one streaming-mean step."""
    n = acc.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    for b in prange(nb):
        for j in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            acc[j] += w * u[j]


@jit(parallel=True)
def scale_inplace(acc, f):
    """``acc *= f`` (a streaming mean's sum brought to a new weight scale)."""
    n = acc.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    for b in prange(nb):
        for j in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            acc[j] *= f


@jit(parallel=True)
def divide_into(acc, total, out):
    """``out = acc / total`` cast to out's dtype (a division: ``1 / total`` may overflow)."""
    n = acc.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    for b in prange(nb):
        for j in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            out[j] = acc[j] / total


@jit(parallel=True)
def shard_sums(U, w, shard, sums):
    """``sums[s, j] = sum_k w[k] * U[k, j]`` over the rows ``k`` of shard ``s``
    (``shard`` consecutive rows each), in the fixed order of ``_fold_rows``.

    One launch for all shards of a round; each (shard, coordinate block) pair is a task.
    A shard's sum is the same bits as ``accumulate_rows`` gives for that shard alone,
    which is what a Dask worker computes: the two paths agree exactly.
    """
    K, P = U.shape
    S = sums.shape[0]
    nb = (P + MEAN_BLOCK - 1) // MEAN_BLOCK
    for t in prange(S * nb):
        s = t // nb
        b = t - s * nb
        lo = b * MEAN_BLOCK
        hi = min(P, lo + MEAN_BLOCK)
        r0 = s * shard
        r1 = min(K, r0 + shard)
        acc = sums[s, lo:hi]
        for j in range(hi - lo):
            acc[j] = 0.0
        _fold_rows(U[r0:r1], w[r0:r1], lo, hi, acc)


@jit
def _span_at(addrs, k, seg, n, lo, m, like):
    """Values ``lo:lo + m`` of client k's array of segment ``seg`` (n values of ``like``'s
    float type), read in place. A slice, indexed from 0, as ``_fold_rows`` reads its rows:
    an offset inside the index (``r[lo + j]``) kept LLVM from vectorizing the loop
    (measured: 5x slower)."""
    return carray(address_as_pointer(addrs[k, seg], like), n)[lo:lo + m]


@jit(parallel=True)
def weighted_mean_at(addrs, seg_off, tasks, w, inv_total, out):
    """:func:`weighted_mean` of K clients whose arrays live in separate buffers.

    A model is L arrays (segments); ``addrs[k, s]`` is the address of client k's array s,
    ``seg_off[s]:seg_off[s + 1]`` its place in the flat ``out``. ``tasks[t] = (s, lo)``
    names a block ``[lo, min(lo + MEAN_BLOCK, n_s))`` of segment s: each block is summed
    over the clients in order, four at a time, in the grouping of ``_fold_rows`` (the
    same bits as ``weighted_mean`` on the stacked rows, on any number of threads).
    Returns the count of non-finite outputs (a NaN/Inf in any input reaches one).
    """
    K = addrs.shape[0]
    like = out[0]
    nbad = 0
    for t in prange(tasks.shape[0]):
        s = tasks[t, 0]
        lo = tasks[t, 1]
        n = seg_off[s + 1] - seg_off[s]
        m = min(n, lo + MEAN_BLOCK) - lo
        acc = np.zeros(m, np.float64)
        for q in range(K // 4):  # (a range: a literal k = 0 would compile _span_at twice)
            k = 4 * q
            r0 = _span_at(addrs, k, s, n, lo, m, like)
            r1 = _span_at(addrs, k + 1, s, n, lo, m, like)
            r2 = _span_at(addrs, k + 2, s, n, lo, m, like)
            r3 = _span_at(addrs, k + 3, s, n, lo, m, like)
            w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
            for j in range(m):
                acc[j] += (w0 * r0[j] + w1 * r1[j]) + (w2 * r2[j] + w3 * r3[j])
        for k in range(K - K % 4, K):
            r0 = _span_at(addrs, k, s, n, lo, m, like)
            w0 = w[k]
            for j in range(m):
                acc[j] += w0 * r0[j]
        base = seg_off[s] + lo
        nbad += _store_mean(acc, inv_total, out[base:base + m])
    return nbad


@jit(parallel=True)
def gather_at(addrs, seg_off, tasks, U):
    """``U[k, seg_off[s] + j]`` = element j of client k's array s: the (K, P) stack of
    arrays that live in separate buffers (for the rules that need every update at
    once), copied block by block in parallel (``tasks`` as in ``weighted_mean_at``)."""
    K = addrs.shape[0]
    like = U[0, 0]
    for t in prange(tasks.shape[0]):
        s = tasks[t, 0]
        lo = tasks[t, 1]
        n = seg_off[s + 1] - seg_off[s]
        m = min(n, lo + MEAN_BLOCK) - lo
        base = seg_off[s] + lo
        for k in range(K):
            r = _span_at(addrs, k, s, n, lo, m, like)
            for j in range(m):
                U[k, base + j] = r[j]
