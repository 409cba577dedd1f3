"""Gaussian noise for differential privacy, drawn from the counter-based stream of ``_rng``.

Coordinate j's noise is ``normal(key, j)`` whatever thread computes it, so the noisy
result is the same on any number of cores. The draws are made in float64 (the
ziggurat's tables and the tail are float64) and added once to the output's dtype.
"""

from numba import prange

from ._jit import jit
from ._rng import normal

NOISE_CHUNK = 16384


@jit(parallel=True)
def add_gaussian(out, key, sigma):
    """``out[j] += sigma * normal(key, j)`` for every j, in parallel over fixed chunks."""
    n = out.shape[0]
    n_chunks = (n + NOISE_CHUNK - 1) // NOISE_CHUNK
    for c in prange(n_chunks):
        for j in range(c * NOISE_CHUNK, min(n, (c + 1) * NOISE_CHUNK)):
            out[j] += sigma * normal(key, j)
