"""Counter-based random numbers (SplitMix64 finalizer) for reproducible kernels.

Every random draw is a pure function of ``(key, counter)``, so a parallel loop gives
the same numbers whatever thread runs which iteration. Keys are derived by hashing:
``client key = hash2(seed, k)``, ``epoch key = hash2(client key, epoch)``.
``tests/naive.py`` re-implements these few lines in plain Python integers.
"""

import math

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


_TWO53 = 1.0 / 9007199254740992.0  # 2**-53
_S11 = np.uint64(11)
_M7 = np.uint64(127)


def _ziggurat_tables(n=128, r=3.442619855899, v=9.91256303526217e-3):
    """Layer edges ``x`` (n+1,) and ratios ``x[i+1]/x[i]`` (n,) of a 128-layer ziggurat.

    Doornik (2005), "An Improved Ziggurat Method to Generate Normal Random Samples":
    ``r`` is the start of the tail and ``v`` each layer's area, for the unnormalized
    density exp(-x^2/2).
    """
    x = np.empty(n + 1)
    f = math.exp(-0.5 * r * r)
    x[0] = v / f
    x[1] = r
    x[n] = 0.0
    for i in range(2, n):
        x[i] = math.sqrt(-2.0 * math.log(v / x[i - 1] + f))
        f = math.exp(-0.5 * x[i] * x[i])
    return x, x[1:] / x[:-1]


_ZX, _ZR = _ziggurat_tables()
_ZTAIL = 3.442619855899


@jit(inline="always")
def _uniform53(h):
    """A uniform in [0, 1) from the top 53 bits of ``h``."""
    return np.float64(h >> _S11) * _TWO53


@jit
def _normal_slow(key, i, u):
    """The rare (about 1.3%) ziggurat draws outside a layer's inner rectangle.

    Further uniforms come from ``hash2(key, a)`` for a = 1, 2, ... (the first draw,
    a = 0, was the fast path's), so the result is still a function of ``key`` alone.
    """
    a = 1
    while True:
        if i == 0:
            # Tail beyond r (Marsaglia 1964): x = -ln(u1)/r accepted if -2 ln(u2) > x^2.
            while True:
                x = -math.log(1.0 - _uniform53(hash2(key, a))) / _ZTAIL
                y = -math.log(1.0 - _uniform53(hash2(key, a + 1)))
                a += 2
                if 2.0 * y > x * x:
                    break
            return -(_ZTAIL + x) if u < 0 else _ZTAIL + x
        x = u * _ZX[i]
        f0 = math.exp(-0.5 * (_ZX[i] * _ZX[i] - x * x))
        f1 = math.exp(-0.5 * (_ZX[i + 1] * _ZX[i + 1] - x * x))
        if f1 + _uniform53(hash2(key, a)) * (f0 - f1) < 1.0:
            return x
        h = hash2(key, a + 1)
        a += 2
        u = 2.0 * _uniform53(h) - 1.0
        i = np.int64(h & _M7)
        if abs(u) < _ZR[i]:
            return u * _ZX[i]


@jit(inline="always")
def normal(key, ctr):
    """A standard normal that depends only on ``(key, ctr)`` (Doornik's ZIGNOR ziggurat).

    One hash gives the layer (its low 7 bits) and a uniform in (-1, 1) (its top 53
    bits); 98.8% of draws stop there at a table lookup and a multiply. The rest go to
    ``_normal_slow`` with the sub-key ``hash2(key, ctr)``. Computed in float64.
    """
    h = hash2(key, ctr)
    u = 2.0 * _uniform53(h) - 1.0
    i = np.int64(h & _M7)
    if abs(u) < _ZR[i]:
        return u * _ZX[i]
    return _normal_slow(h, i, u)


@jit
def add_normal(out, key, sigma):
    """``out[j] += sigma * z_j`` with z_j = ``normal(key, j)`` (one stream, any thread)."""
    for j in range(out.shape[0]):
        out[j] += sigma * normal(key, j)
