"""Compression of updates: top-k selection with error feedback, and sparse accumulation.

Top-k finds the k largest ``|c|`` by radix selection instead of a partition: the
magnitude's IEEE bits, read as an unsigned integer, sort like the magnitude itself,
so one counting pass over the top 16 bits finds the bucket that holds the k-th
largest value; only that bucket's values are then sorted. Every pass streams the
vector in order (a partition swaps at random), and the counts are integers, so the
result does not depend on how the passes are split across threads. Ties at the
threshold are taken in index order.
"""

import numpy as np
from numba import prange

from ._intrinsics import float_bits
from ._jit import jit

CHUNKS = 16        # fixed parallel chunks: each keeps its own histogram
BITS = 16          # radix of the first (and only) counting pass
NBINS = 1 << BITS   # buckets of |c|: the sign bit is dropped, then the next BITS bits


@jit(inline="always")
def take_range(r, lo, hi, thr, ties, o, tcount, idx, val):
    """Write the chosen coordinates of ``r[lo:hi]`` from output slot ``o`` on, in index order,
    and zero them in ``r``: every ``|r_j| > thr``, and ties (``|r_j| == thr``) while fewer than
    ``ties`` have been taken before them (``tcount`` counts those of earlier ranges)."""
    for j in range(lo, hi):
        a = abs(r[j])
        take = a > thr
        if a == thr:
            take = tcount < ties
            tcount += 1
        if take:
            idx[o] = j
            val[o] = r[j]
            r[j] = 0
            o += 1


@jit(parallel=True)
def topk_error_feedback(u, r, k, idx, val):
    """``c = u + r``; write the k largest ``|c|`` to ``idx`` (ascending) and ``val``, and
    leave ``r = c`` with those k entries zeroed (the residual kept for next round).

    ``r`` is updated in place. Returns the number of non-finite entries of c (the caller checks that
    before trusting anything).
    """
    P = u.shape[0]
    csize = (P + CHUNKS - 1) // CHUNKS
    hist = np.zeros((CHUNKS, NBINS), np.int32)
    bad = np.zeros(CHUNKS, np.int64)
    # |c| as bits: clear the sign, keep the next BITS bits (the mask leaves a
    # non-negative integer, so the shift is exact)
    width = r.itemsize * 8
    shift = width - 1 - BITS
    mask = (1 << (width - 1)) - 1
    for t in prange(CHUNKS):
        for j in range(t * csize, min(P, (t + 1) * csize)):
            c = u[j] + r[j]
            r[j] = c
            if not abs(c) < np.inf:  # NaN fails the comparison too
                bad[t] += 1
            hist[t, (float_bits(c) & mask) >> shift] += 1
    nbad = bad.sum()
    if nbad:
        return nbad
    total = hist.sum(axis=0)
    # the bucket holding the k-th largest magnitude, and how many lie above it
    above = 0
    tb = NBINS - 1
    while above + total[tb] < k:
        above += total[tb]
        tb -= 1
    need = k - above
    # each chunk copies its candidates (bucket tb) to its own slice: the counts are known
    cstart = np.zeros(CHUNKS + 1, np.int64)
    for t in range(CHUNKS):
        cstart[t + 1] = cstart[t] + hist[t, tb]
    cand = np.empty(cstart[CHUNKS], r.dtype)
    for t in prange(CHUNKS):
        n = cstart[t]
        for j in range(t * csize, min(P, (t + 1) * csize)):
            if (float_bits(r[j]) & mask) >> shift == tb:
                cand[n] = abs(r[j])
                n += 1
    srt = np.sort(cand)
    thr = srt[srt.shape[0] - need]
    # strictly above thr are taken; of those equal to thr, the first in index order
    gt = np.zeros(CHUNKS, np.int64)
    eq = np.zeros(CHUNKS, np.int64)
    for t in range(CHUNKS):
        g = 0
        for b in range(tb + 1, NBINS):
            g += hist[t, b]
        for i in range(cstart[t], cstart[t + 1]):
            if cand[i] > thr:
                g += 1
            elif cand[i] == thr:
                eq[t] += 1
        gt[t] = g
    ties = k - gt.sum()
    start = np.zeros(CHUNKS, np.int64)
    tie_start = np.zeros(CHUNKS, np.int64)
    for t in range(1, CHUNKS):
        tie_start[t] = tie_start[t - 1] + eq[t - 1]
    for t in range(1, CHUNKS):
        take_prev = min(eq[t - 1], max(0, ties - tie_start[t - 1]))
        start[t] = start[t - 1] + gt[t - 1] + take_prev
    for t in prange(CHUNKS):
        take_range(r, t * csize, min(P, (t + 1) * csize), thr, ties, start[t], tie_start[t],
                   idx, val)
    return 0


@jit(parallel=True)
def sparse_axpy(acc, w, idx, val):
    """``acc[idx] += w * val`` (indices distinct, so the order of the adds is irrelevant)."""
    for i in prange(idx.shape[0]):
        acc[idx[i]] += w * val[i]
