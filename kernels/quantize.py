"""Quantized updates: int8 codes with one float32 scale per block of coordinates.

Two quantizers share that representation, ``value = code * scale[j // block]``:

* int8 linear (per block): ``scale = max|u| / 127`` and ``code = round(u / scale)``,
  nearest (ties away from zero) or stochastic (``floor(u / scale + xi)``, xi uniform).
* QSGD (Alistarh et al. 2017) with ``s <= 127`` levels: ``scale = |u_block|_2 / s`` and
  ``code = sign(u) floor(|u| / scale + xi)``, an unbiased estimate of u whose variance
  is at most ``min(d/s^2, sqrt(d)/s) |u|^2`` per block of d.

Stochastic draws are ``uniform(hash2(key, j))``: the same bits on any thread count.
Block norms and maxima are taken in float64; codes are computed in float64 too (a
float32 ``u / scale`` can round across a half-integer and change a code).

``mean_int8`` aggregates K quantized updates the way ``aggregation.weighted_mean``
aggregates dense ones: coordinate blocks in parallel, clients in order inside a
block, a float64 accumulator that stays in cache, so the traffic is the codes
(1 byte per coordinate per client), their scales and one write of the result.
"""

import math

import numpy as np
from numba import prange

from ._intrinsics import int_float
from ._jit import jit
from ._rng import _uniform53, hash2

MEAN_BLOCK = 16384


@jit(inline="always")
def _uniform(key, j):
    """The uniform in [0, 1) of draw ``(key, j)``."""
    return _uniform53(hash2(key, j))


@jit(parallel=True)
def quantize_int8(u, block, stochastic, key, codes, scales):
    """Per-block int8 linear quantization; returns the number of non-finite inputs."""
    P = u.shape[0]
    nb = scales.shape[0]
    nbad = 0
    for b in prange(nb):
        lo = b * block
        hi = min(P, lo + block)
        m = 0.0
        bad = 0
        for j in range(lo, hi):
            a = abs(np.float64(u[j]))
            if not a < np.inf:
                bad += 1
            elif a > m:
                m = a
        nbad += bad
        scale = np.float32(m / 127.0)
        scales[b] = scale
        inv = 1.0 / np.float64(scale) if scale > 0 else 0.0
        for j in range(lo, hi):
            x = np.float64(u[j]) * inv
            if stochastic:
                q = math.floor(x + _uniform(key, j))
            else:
                q = math.floor(abs(x) + 0.5)
                q = q if x >= 0 else -q
            codes[j] = np.int8(min(127.0, max(-127.0, q)))
    return nbad


@jit(parallel=True)
def quantize_qsgd(u, block, levels, key, codes, scales):
    """QSGD with ``levels`` levels per block (stochastic); returns the count of non-finite inputs.

    A block too large for a float32 scale gets an oversized (possibly Inf) scale, which
    the caller refuses; so does ``quantize_int8``."""
    P = u.shape[0]
    nb = scales.shape[0]
    nbad = 0
    for b in prange(nb):
        lo = b * block
        hi = min(P, lo + block)
        sq = 0.0
        finite = 0
        for j in range(lo, hi):
            x = np.float64(u[j])
            sq += x * x
            finite += abs(x) < np.inf
        if finite != hi - lo:
            nbad += hi - lo - finite
            sq = 0.0
        # Finite values whose squares overflow float64 leave sq = inf: the scale is then
        # Inf (every code 0), which the caller refuses as too large for float32 scales.
        norm = math.sqrt(sq)
        scale = np.float32(norm / levels)
        scales[b] = scale
        inv = 1.0 / np.float64(scale) if scale > 0 else 0.0
        for j in range(lo, hi):
            x = np.float64(u[j])
            q = min(np.float64(levels), math.floor(abs(x) * inv + _uniform(key, j)))
            codes[j] = np.int8(q if x >= 0 else -q)
    return nbad


@jit(parallel=True)
def dequantize_int8(codes, scales, block, out):
    """``out[j] = codes[j] * scales[j // block]``, multiplied in float64 (an int8 times a
    float32 needs 31 bits), rounded once to the dtype of ``out``."""
    P = codes.shape[0]
    for b in prange(scales.shape[0]):
        s = np.float64(scales[b])
        for j in range(b * block, min(P, (b + 1) * block)):
            out[j] = codes[j] * s


@jit(parallel=True)
def axpy_int8(acc, w, codes, scales, block):
    """``acc[j] += w * codes[j] * scales[j // block]`` (acc float64)."""
    P = codes.shape[0]
    for b in prange(scales.shape[0]):
        s = w * np.float64(scales[b])
        for j in range(b * block, min(P, (b + 1) * block)):
            acc[j] += s * codes[j]


@jit(parallel=True)
def mean_int8(codes, scales, w, block, inv_total, out):
    """``out[j] = inv_total * sum_k w[k] codes[k][j] scales[k][j // block]``.

    ``codes`` and ``scales`` are typed lists of the K clients' arrays (no stacking
    copy). Coordinate blocks of ``MEAN_BLOCK`` (a multiple of ``block``) run in
    parallel; inside a block the clients are added in order, so the result does not
    depend on the thread count.
    """
    K = len(codes)
    P = out.shape[0]
    span = max(block, (MEAN_BLOCK // block) * block)
    n_spans = (P + span - 1) // span
    for t in prange(n_spans):
        lo = t * span
        hi = min(P, lo + span)
        acc = np.zeros(hi - lo, np.float64)
        k = 0
        # Four clients per pass over the accumulator, grouped as
        # (s0 c0 + s1 c1) + (s2 c2 + s3 c3): a quarter of the accumulator traffic, and
        # a fixed order, so the thread count never changes the bits.
        while k + 4 <= K:
            # Typed-list items are fetched once per pass: each fetch is a reference count.
            c0, c1, c2, c3 = codes[k], codes[k + 1], codes[k + 2], codes[k + 3]
            e0, e1, e2, e3 = scales[k], scales[k + 1], scales[k + 2], scales[k + 3]
            w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
            for b in range(lo // block, (hi + block - 1) // block):
                s0 = w0 * np.float64(e0[b])
                s1 = w1 * np.float64(e1[b])
                s2 = w2 * np.float64(e2[b])
                s3 = w3 * np.float64(e3[b])
                b_lo = b * block
                m = min(hi, b_lo + block) - b_lo
                g0 = c0[b_lo:b_lo + m]
                g1 = c1[b_lo:b_lo + m]
                g2 = c2[b_lo:b_lo + m]
                g3 = c3[b_lo:b_lo + m]
                a = acc[b_lo - lo:b_lo - lo + m]
                for j in range(m):
                    a[j] += (s0 * g0[j] + s1 * g1[j]) + (s2 * g2[j] + s3 * g3[j])
            k += 4
        while k < K:
            c = codes[k]
            sc = scales[k]
            wk = w[k]
            for b in range(lo // block, (hi + block - 1) // block):
                s = wk * np.float64(sc[b])
                b_lo = b * block
                b_hi = min(hi, b_lo + block)
                seg = c[b_lo:b_hi]
                a = acc[b_lo - lo:b_hi - lo]
                for j in range(b_hi - b_lo):
                    a[j] += s * seg[j]
            k += 1
        for j in range(hi - lo):
            out[lo + j] = acc[j] * inv_total


@jit(parallel=True)
def axpy_bf16(acc, w, codes):
    """``acc[j] += w * bfloat16(codes[j])``: a bfloat16 is the top half of a float32."""
    for j in prange(codes.shape[0]):
        acc[j] += w * np.float64(int_float(np.int32(np.uint32(codes[j]) << np.uint32(16))))
