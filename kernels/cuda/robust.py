"""Coordinate-wise robust rules on the GPU: the mean of a rank range of each coordinate.

The CPU kernel sorts a block of coordinates with one sorting network; here each
thread takes one coordinate and applies the same network to that coordinate's K
values, copied into column j of a scratch matrix ``buf`` (K, C). A comparator reads and
writes ``buf[a, j]``, ``buf[b, j]``: the same row for every thread of a warp, at
consecutive j, so the network's data-independent sequence of comparisons becomes a
sequence of coalesced loads and stores, with no branch that diverges. The kept ranks are
summed in float64 in rank order, as on the CPU, so the two agree bit for bit.
"""

from numba import cuda

from ._jit import kernel


@kernel
def rank_mean(U, pairs, r_lo, r_hi, lo, buf, out):
    """``out[lo + j]`` = mean of ranks ``r_lo:r_hi`` of column ``lo + j``, for j < buf.shape[1]."""
    K = U.shape[0]
    P = U.shape[1]
    C = buf.shape[1]
    cnt = float(r_hi - r_lo)
    for j in range(cuda.grid(1), C, cuda.gridsize(1)):
        c = lo + j
        if c < P:
            for i in range(K):
                buf[i, j] = U[i, c]
            for q in range(pairs.shape[0]):
                a = pairs[q, 0]
                b = pairs[q, 1]
                x = buf[a, j]
                y = buf[b, j]
                buf[a, j] = min(x, y)
                buf[b, j] = max(x, y)
            s = 0.0
            for i in range(r_lo, r_hi):
                s += float(buf[i, j])  # float64, as on the CPU (and in the simulator)
            out[c] = s / cnt  # IEEE division (no fastmath here), as on the CPU
