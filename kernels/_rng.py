"""Counter-based random numbers (SplitMix64 finalizer) for reproducible kernels.

Every random draw is a pure function of ``(key, counter)``, so a parallel loop gives
the same numbers whatever thread runs which iteration. Keys are derived by hashing:
``client key = hash2(seed, k)``, ``epoch key = hash2(client key, epoch)``.
``tests/naive.py`` re-implements these few lines in plain Python integers.
"""

import numpy as np

from ._jit import jit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)


@jit(inline="always")
def mix64(z):
    """SplitMix64 output function of ``z + golden`` (a bijection on uint64)."""
    z = np.uint64(z) + _GOLDEN
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


@jit(inline="always")
def hash2(a, b):
    """Hash of an ordered pair of uint64, used for keys and draws alike."""
    return mix64(mix64(np.uint64(a)) ^ np.uint64(b))


@jit(inline="always")
def randbelow(key, ctr, n):
    """An integer in ``[0, n)`` for ``n < 2**32``: the top 32 random bits scaled by ``n``."""
    h = hash2(key, ctr)
    return np.int64(((h >> _S32) * np.uint64(n)) >> _S32)


@jit(inline="always")
def shuffle(perm, key):
    """Fisher-Yates shuffle of ``perm`` in place with draws ``(key, i)``."""
    for i in range(perm.shape[0] - 1, 0, -1):
        j = randbelow(key, i, i + 1)
        t = perm[i]
        perm[i] = perm[j]
        perm[j] = t
