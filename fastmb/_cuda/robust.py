"""Host side of ``kernels/cuda/robust.py``: the coordinate-wise rank mean on the GPU."""

from __future__ import annotations

from .arrays import blocks_for, empty, threads, to_device

SCRATCH_BYTES = 1 << 28   # the sorting scratch of rank_mean: at most 256 MiB at a time


def rank_mean(U, pairs, r_lo, r_hi):
    """Mean of the ranks ``r_lo:r_hi`` of every coordinate (median, trimmed mean)."""
    from ..kernels.cuda import robust as KR

    K, P = U.shape
    T = threads()
    C = max(1, min(P, SCRATCH_BYTES // (K * U.dtype.itemsize)))
    buf = empty((K, C), U.dtype)
    out = empty(P, U.dtype)
    d_pairs = to_device(pairs)
    for lo in range(0, P, C):
        KR.rank_mean[blocks_for(C, T), T](U, d_pairs, r_lo, r_hi, lo, buf, out)
    return out
