"""Local mini-batch SGD: one client (``sgd_client``) and many in one call (``train_clients``).

The loop over epochs and mini-batches runs here, in compiled code. A mini-batch's
gradient is the weighted mean of its samples' gradients, summed in the parameters'
dtype (at most ``batch`` terms). The update, with all options on, is::

    d = g + weight_decay * p + prox_mu * (p - p0)
    v = momentum * v + d            (v starts at 0; skipped when momentum == 0)
    p = p - lr_t * v

``lr_t`` follows the schedule: 0 constant, 1 inverse scaling ``lr / (t + 1)**power_t``,
2 cosine ``lr * (1 + cos(pi * t / T)) / 2`` over the T steps of the run.

Shuffling uses the counter-based generator of ``_rng``: client k's epoch e is
shuffled with key ``hash2(hash2(seed, k), e)``, so clients are independent of which
thread trains them.
"""

import math

import numpy as np
from numba import prange

from ._jit import jit
from ._model import MODE_ADD, is_linear1, linear1_delta, sample_grad, workspace
from ._rng import hash2, shuffle as shuffle_inplace

SCHED_CONSTANT, SCHED_INVSCALING, SCHED_COSINE = 0, 1, 2


@jit
def sgd_client(params0, X, yc, yr, sw, spec, lo, hi, key, epochs, batch, lr_schedule, shuffle,
               lr, power_t, momentum, weight_decay, prox_mu, p):
    """Train on rows ``lo:hi`` starting from ``params0``; the result is written to ``p``.

    Returns -1, or the first row whose forward pass or loss was not finite (a bad
    input row, or parameters that diverged).
    """
    sizes, w_off, b_off, u_off, act, loss, hdelta = spec
    P = params0.shape[0]
    zs, hs, ds = workspace(u_off, params0)
    g = np.empty(P, params0.dtype)
    use_mom = momentum != 0.0
    v = np.zeros(P if use_mom else 0, params0.dtype)
    n = hi - lo
    perm = np.arange(n)
    nf = X.shape[1]
    fast = is_linear1(sizes)
    has_b = b_off[0] >= 0
    pw = p[:nf]
    gw = g[:nf]
    has_w = sw.shape[0] > 0
    for j in range(P):
        p[j] = params0[j]
    n_batches = (n + batch - 1) // batch
    total = max(1, epochs * n_batches)
    t = 0
    for e in range(epochs):
        if shuffle:
            for i in range(n):
                perm[i] = i
            shuffle_inplace(perm, hash2(key, e))
        for b in range(n_batches):
            g[:] = 0
            wsum = 0.0
            b_lo = b * batch
            b_hi = min(n, b_lo + batch)
            if fast:
                # One layer, one output: g += w_r * delta_r * [x_r, 1], no views per row.
                z0 = p[nf] if has_b else 0.0
                for s in range(b_lo, b_hi):
                    r = lo + perm[s]
                    w = sw[r] if has_w else 1.0
                    x = X[r]
                    dl, ok = linear1_delta(x, pw, z0, zs, loss, hdelta, yc, yr, r, w)
                    if not ok:
                        return r
                    for i in range(nf):
                        gw[i] += x[i] * dl
                    if has_b:
                        g[nf] += dl
                    wsum += w
            else:
                for s in range(b_lo, b_hi):
                    r = lo + perm[s]
                    w = sw[r] if has_w else 1.0
                    _, _, ok = sample_grad(p, X[r], yc, yr, r, sizes, w_off, b_off, u_off,
                                           act, loss, hdelta, zs, hs, ds, g, w, MODE_ADD, False)
                    if not ok:
                        return r
                    wsum += w
            inv = 1.0 / wsum if wsum > 0 else 0.0
            if lr_schedule == SCHED_INVSCALING:
                lr_t = lr / (t + 1.0) ** power_t
            elif lr_schedule == SCHED_COSINE:
                lr_t = lr * 0.5 * (1.0 + math.cos(math.pi * t / total))
            else:
                lr_t = lr
            if use_mom:
                for j in range(P):
                    d = g[j] * inv + weight_decay * p[j] + prox_mu * (p[j] - params0[j])
                    v[j] = momentum * v[j] + d
                    p[j] -= lr_t * v[j]
            elif weight_decay != 0.0 or prox_mu != 0.0:
                for j in range(P):
                    d = g[j] * inv + weight_decay * p[j] + prox_mu * (p[j] - params0[j])
                    p[j] -= lr_t * d
            else:
                step = lr_t * inv
                for j in range(P):
                    p[j] -= step * g[j]
            t += 1
    return -1


@jit(parallel=True)
def train_clients(params0, X, yc, yr, sw, spec, offsets, seed, epochs, batch, lr_schedule, shuffle,
                  lr, power_t, momentum, weight_decay, prox_mu, out, bad):
    """Client k trains on rows ``offsets[k]:offsets[k+1]`` for ``epochs[k]`` epochs into ``out[k]``."""
    K = out.shape[0]
    for k in prange(K):
        bad[k] = sgd_client(params0, X, yc, yr, sw, spec, offsets[k], offsets[k + 1],
                            hash2(seed, k), epochs[k], batch, lr_schedule, shuffle, lr, power_t,
                            momentum, weight_decay, prox_mu, out[k])
