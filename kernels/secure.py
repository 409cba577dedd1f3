"""Secure aggregation's hot loops: updates quantized into a finite group, masks added.

The group is the integers modulo ``2**32`` or ``2**64`` (``uint32`` / ``uint64`` arrays,
whose arithmetic wraps): masks cancel exactly, and a sum of quantized updates is exact as
long as it stays below the modulus (``fastmb.secure`` checks that before a round starts).

* :func:`quantize_field`: ``out[j] = weight * q_j`` with ``q_j = floor((clip(u_j) + c) *
  scale + xi_j)``, ``xi_j`` uniform in [0, 1) from the counter-based generator (key, j):
  stochastic rounding, unbiased, the same draws on any number of threads. The value is
  computed in float64 (a float32 product can round across an integer); with ``scale =
  (levels - 1) / (2 c)`` it lies in ``[0, levels - 1]``.
* :func:`add_words`: ``out += words`` or ``out -= words`` (a mask, read from a keystream
  buffer as words of ``out``'s type), elementwise, wrapping.
"""

import math

import numpy as np
from numba import prange

from ._jit import jit
from ._rng import _uniform53, hash2

QUANT_BLOCK = 16384   # coordinates per task: a task's draws and writes stay in cache


@jit(parallel=True)
def quantize_field(u, clip, scale, weight, key, out):
    """Quantize ``u`` (float) into ``out[:P]`` (uint32/uint64); returns the number of
    non-finite entries (nothing meaningful is written for them: the caller refuses)."""
    P = u.shape[0]
    nb = (P + QUANT_BLOCK - 1) // QUANT_BLOCK
    nbad = 0
    for b in prange(nb):
        bad = 0
        for j in range(b * QUANT_BLOCK, min(P, (b + 1) * QUANT_BLOCK)):
            x = np.float64(u[j])
            if not abs(x) < np.inf:
                bad += 1
                x = 0.0
            x = min(clip, max(-clip, x))
            q = math.floor((x + clip) * scale + _uniform53(hash2(key, np.uint64(j))))
            out[j] = np.uint64(q) * weight
        nbad += bad
    return nbad


@jit(parallel=True)
def add_words(out, words, negate):
    """``out[j] += words[j]`` (``out[j] -= words[j]`` when ``negate``), modulo the words'
    range: one mask chunk added in place."""
    n = out.shape[0]
    if negate:
        for j in prange(n):
            out[j] -= words[j]
    else:
        for j in prange(n):
            out[j] += words[j]
