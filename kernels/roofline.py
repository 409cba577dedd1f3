"""Roofline probes of ``fastmb bench``: the measured limits a kernel's speed is reported against.

The memory-bandwidth yardstick is the STREAM triad below, run in parallel over fixed blocks
like every streaming kernel of fastmb. (The compute yardstick, NumPy's GEMM, needs no kernel.)
"""

from numba import prange

from ._jit import jit

BLOCK = 4096


@jit(parallel=True)
def triad(a, b, c, s):
    """STREAM triad ``a = b + s * c``: the memory-bandwidth yardstick of ``fastmb bench``."""
    n = a.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    for k in prange(nb):
        for j in range(k * BLOCK, min(n, (k + 1) * BLOCK)):
            a[j] = b[j] + s * c[j]
