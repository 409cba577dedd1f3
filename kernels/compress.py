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
SAMPLE_MIN = 1 << 16   # from this size on, top-k first tries a sampled bracket
SAMPLE_BLOCKS = 256    # the sample: this many evenly spread blocks ...
SAMPLE_BLOCK = 128     # ... of this many consecutive coordinates
MARGIN = 4.5           # the bracket's half-width in binomial standard deviations
HIT_BLOCK = 32         # top-k's first pass tests blocks of this many coordinates at once


@jit(inline="always")
def chosen(a, thr, tcount, ties):
    """Is a magnitude ``a`` sent: above ``thr``, or equal to it while fewer than ``ties`` equal
    ones came before (``tcount``, returned counted up past this one)?"""
    take = a > thr
    if a == thr:
        take = tcount < ties
        tcount += 1
    return take, tcount


@jit(inline="always")
def take_range(u, r, lo, hi, thr, ties, o, tcount, idx, val):
    """Write ``r[j] = c_j = u_j + r_j`` over ``[lo, hi)`` and send the chosen coordinates, from
    output slot ``o`` on, in index order (their ``r`` becomes 0): every ``|c_j| > thr``, and ties
    (``|c_j| == thr``) while fewer than ``ties`` have been taken before them (``tcount`` counts
    those of earlier ranges). ``u=None``: r already holds c (the GPU's select); the
    branch is pruned at compile time."""
    for j in range(lo, hi):
        c = r[j]
        if u is not None:
            c = u[j] + c
        take, tcount = chosen(abs(c), thr, tcount, ties)
        if take:
            idx[o] = j
            val[o] = c
            r[j] = 0
            o += 1
        else:
            r[j] = c


@jit(inline="always")
def take_all(u, r, csize, thr, gt, eq, k, idx, val):
    """The last pass: every chunk sends its ``gt[t]`` coordinates above ``thr`` and its share
    of the ``k - sum(gt)`` ties (``eq[t]`` of them lie in chunk t), in index order."""
    P = u.shape[0]
    ties = k - gt.sum()
    start, tie_start = output_starts(gt, eq, ties)
    for t in prange(CHUNKS):
        take_range(u, r, t * csize, min(P, (t + 1) * csize), thr, ties, start[t], tie_start[t],
                   idx, val)


@jit(inline="always")
def sample_bracket(u, r, k):
    """Magnitudes ``(lo, hi)`` that bracket the k-th largest ``|c|`` with high probability, from
    SAMPLE_BLOCKS evenly spread blocks of SAMPLE_BLOCK consecutive coordinates (blocks, not
    single strided entries: each is one cache-line run instead of a miss per entry).

    With ``e = k m / P`` of the m sampled magnitudes expected above the k-th largest, the
    count is about binomial, so ``e -+ MARGIN sd`` ranks bracket it unless the data are
    arranged against the sample; the caller checks the bracket on the full vector and
    falls back to the exact histogram when it misses. Also returns the fraction of the
    sample inside the bracket. Returns ``lo = -1`` for a sample that is not finite (the
    histogram path then reports it) or a bracket that would hold everything.
    """
    P = u.shape[0]
    m = SAMPLE_BLOCKS * SAMPLE_BLOCK
    s = np.empty(m, r.dtype)
    for b in range(SAMPLE_BLOCKS):
        j0 = b * (P - SAMPLE_BLOCK) // (SAMPLE_BLOCKS - 1)
        for i in range(SAMPLE_BLOCK):
            s[b * SAMPLE_BLOCK + i] = abs(u[j0 + i] + r[j0 + i])
    for i in range(m):
        if not s[i] < np.inf:
            return -1.0, -1.0, 0.0
    e = k * m / P
    # (P - k) in integers: fastmath may reassociate ``1 - k / P`` to a tiny negative at k = P
    sd = np.sqrt(e * (P - k) / P) + 1.0
    hi_rank = int(np.floor(e - MARGIN * sd))   # ranks from the top, 1-based
    lo_rank = int(np.ceil(e + MARGIN * sd))
    if lo_rank > m:
        return -1.0, -1.0, 0.0
    srt = np.partition(s, m - lo_rank)
    lo = srt[m - lo_rank]
    hi = np.inf
    if hi_rank >= 1:
        hi = np.partition(s, m - hi_rank)[m - hi_rank]
    return lo, hi, (lo_rank - max(hi_rank, 0)) / m


@jit(parallel=True)
def topk_bracket(u, r, k, idx, val):
    """:func:`topk_error_feedback` for large vectors, from a sampled bracket ``[lo, hi]``
    of the k-th largest ``|c|``. Returns 0 when done, the number of non-finite entries
    of c if any (nothing written), or -1 when the bracket missed (nothing written: the
    caller then runs the exact histogram).

    Pass 1 keeps every ``|c| >= lo`` (index and signed value, about ``k`` plus the
    bracket's width of them) and counts non-finite entries; a partition of the hits inside
    the bracket gives the exact threshold; pass 2 writes ``r = c`` and zeroes the chosen
    coordinates. Pass 1 tests blocks of HIT_BLOCK with a branch-free count, which
    vectorizes, and walks only the blocks that hold a hit; both passes loop over a view of
    their chunk from 0, the form LLVM vectorizes.
    """
    lo, hi, width = sample_bracket(u, r, k)
    if lo < 0:
        return -1
    P = u.shape[0]
    csize = (P + CHUNKS - 1) // CHUNKS
    # each chunk may hold all k and every candidate (the big values may sit in one chunk,
    # e.g. one layer of a model); a chunk that overflows sends us to the histogram
    cap = min(csize, k + 2 * int(width * P) + 4096)
    hidx = np.empty((CHUNKS, cap), np.int64)
    hval = np.empty((CHUNKS, cap), r.dtype)
    nhit = np.zeros(CHUNKS, np.int64)
    bad = np.zeros(CHUNKS, np.int64)
    for t in prange(CHUNKS):
        j0 = t * csize
        uu = u[j0:min(P, j0 + csize)]
        rr = r[j0:min(P, j0 + csize)]
        ht = hidx[t]
        hv = hval[t]
        n = 0
        nb = 0
        for b0 in range(0, uu.shape[0], HIT_BLOCK):
            ub = uu[b0:b0 + HIT_BLOCK]
            rb = rr[b0:b0 + HIT_BLOCK]
            cnt = 0
            for i in range(ub.shape[0]):
                a = abs(ub[i] + rb[i])
                nb += not a < np.inf  # NaN fails the comparison too
                cnt += a >= lo
            if cnt:
                for i in range(ub.shape[0]):
                    c = ub[i] + rb[i]
                    if abs(c) >= lo:
                        if n < cap:
                            ht[n] = j0 + b0 + i
                            hv[n] = c
                        n += 1
        bad[t] = nb
        nhit[t] = n
    nbad = bad.sum()
    if nbad:
        return nbad
    if nhit.sum() < k or nhit.max() > cap:
        return -1
    # hits above hi are surely taken; the partition settles those inside the bracket
    n_in = np.zeros(CHUNKS + 1, np.int64)
    for t in prange(CHUNKS):
        n = 0
        for i in range(nhit[t]):
            n += abs(hval[t, i]) <= hi
        n_in[t + 1] = n
    n_above = nhit.sum() - n_in.sum()
    if n_above >= k:
        return -1
    for t in range(CHUNKS):
        n_in[t + 1] += n_in[t]
    flat = np.empty(n_in[CHUNKS], r.dtype)
    for t in prange(CHUNKS):
        o = n_in[t]
        for i in range(nhit[t]):
            a = abs(hval[t, i])
            if a <= hi:
                flat[o] = a
                o += 1
    m = flat.shape[0]
    need = k - n_above
    thr = np.partition(flat, m - need)[m - need]
    # strictly above thr are taken; of those equal to thr, the first in index order
    gt = np.zeros(CHUNKS, np.int64)
    eq = np.zeros(CHUNKS, np.int64)
    for t in prange(CHUNKS):
        g = 0
        e = 0
        for i in range(nhit[t]):
            a = abs(hval[t, i])
            g += a > thr
            e += a == thr
        gt[t] = g
        eq[t] = e
    ties = k - gt.sum()
    start, tie_start = output_starts(gt, eq, ties)
    for t in prange(CHUNKS):
        # the chosen hits, in index order, to the output; their indices to the front of
        # hidx[t] for the write pass
        o = start[t]
        tcount = tie_start[t]
        ns = 0
        for i in range(nhit[t]):
            c = hval[t, i]
            take, tcount = chosen(abs(c), thr, tcount, ties)
            if take:
                idx[o] = hidx[t, i]
                val[o] = c
                o += 1
                hidx[t, ns] = hidx[t, i]
                ns += 1
        j0 = t * csize
        uu = u[j0:min(P, j0 + csize)]
        rr = r[j0:min(P, j0 + csize)]
        prev = 0
        for q in range(ns + 1):
            s = hidx[t, q] - j0 if q < ns else uu.shape[0]
            us = uu[prev:s]
            rs = rr[prev:s]
            for j in range(us.shape[0]):
                rs[j] = us[j] + rs[j]
            if q < ns:
                rr[s] = 0
            prev = s + 1
    return 0


@jit(inline="always")
def output_starts(gt, eq, ties):
    """Each chunk's first output slot, and how many ties earlier chunks hold: chunk t sends
    its ``gt[t]`` values above the threshold and its share of the ``ties`` (``eq[t]`` lie in it)."""
    start = np.zeros(CHUNKS, np.int64)
    tie_start = np.zeros(CHUNKS, np.int64)
    for t in range(1, CHUNKS):
        tie_start[t] = tie_start[t - 1] + eq[t - 1]
        take_prev = min(eq[t - 1], max(0, ties - tie_start[t - 1]))
        start[t] = start[t - 1] + gt[t - 1] + take_prev
    return start, tie_start


@jit(parallel=True)
def topk_error_feedback(u, r, k, idx, val):
    """``c = u + r``; write the k largest ``|c|`` to ``idx`` (ascending) and ``val``, and
    leave ``r = c`` with those k entries zeroed (the residual kept for next round).

    ``r`` is updated in place, and only once c is known to be finite: otherwise nothing
    is written and the number of non-finite entries of c is returned (0 on success).

    The exact radix histogram (three passes); :func:`topk_bracket` gives the same answer
    in two passes when its sampled bracket holds.
    """
    P = u.shape[0]
    csize = (P + CHUNKS - 1) // CHUNKS
    bad = np.zeros(CHUNKS, np.int64)
    gt = np.zeros(CHUNKS, np.int64)
    eq = np.zeros(CHUNKS, np.int64)
    # The exact path. |c| as bits: clear the sign, keep the next BITS bits (the mask
    # leaves a non-negative integer, so the shift is exact)
    hist = np.zeros((CHUNKS, NBINS), np.int32)
    width = r.itemsize * 8
    shift = width - 1 - BITS
    mask = (1 << (width - 1)) - 1
    for t in prange(CHUNKS):
        nb = 0
        for j in range(t * csize, min(P, (t + 1) * csize)):
            c = u[j] + r[j]
            nb += not abs(c) < np.inf
            hist[t, (float_bits(c) & mask) >> shift] += 1
        bad[t] = nb
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
            c = u[j] + r[j]
            if (float_bits(c) & mask) >> shift == tb:
                cand[n] = abs(c)
                n += 1
    m = cand.shape[0]
    thr = np.partition(cand, m - need)[m - need]
    # strictly above thr are taken; of those equal to thr, the first in index order
    for t in range(CHUNKS):
        g = 0
        for b in range(tb + 1, NBINS):
            g += hist[t, b]
        for i in range(cstart[t], cstart[t + 1]):
            g += cand[i] > thr
            eq[t] += cand[i] == thr
        gt[t] = g
    take_all(u, r, csize, thr, gt, eq, k, idx, val)
    return 0


@jit(parallel=True)
def sparse_axpy(acc, w, idx, val):
    """``acc[idx] += w * val`` (indices distinct, so the order of the adds is irrelevant)."""
    for i in prange(idx.shape[0]):
        acc[idx[i]] += w * val[i]
