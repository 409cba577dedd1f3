"""Many clients' local SGD in one launch: the CUDA twin of ``kernels.training``.

One block per client (blocks stride over the clients). The block keeps the client's
parameters in its row of ``out``, its gradient and momentum in rows of ``gbuf`` and
``vbuf`` (device memory, each row touched by one block only), and pushes the
mini-batch's samples through the model one after the other, its threads sharing each
sample's units as in ``_model``. A mini-batch's gradient is therefore summed in sample
order, in the parameters' dtype, exactly as the CPU's sample-by-sample path sums it.

The update, the learning-rate schedule, the shuffle (thread 0 runs the same
Fisher-Yates with the same counter-based keys) and the stopping rules are those of
``kernels.training.sgd_client``; client k's stream is ``hash2(seed, ids[k])`` there
and here, so a client visits its rows in the same order on either device.

DP-SGD: with ``clip < inf`` each sample's gradient norm comes from the activations and
deltas (``sq_norm``, float64), the deltas are scaled by ``w * min(1, clip / norm)``
before they are added, and ``noise_std * normal(hash2(noise key, t), j)`` is added to
coordinate j of step t's sum: the CPU's noise, bit for bit.
"""

import math

import numpy as np
from numba import cuda

from .. import training as CPU
from ..training import NOISE_TAG
from ._jit import device_twin, kernel
from ._model import (
    backprop,
    clear,
    forward,
    layer_grads,
    output_delta,
    scale_deltas,
    sq_norm,
    u_off,
)
from ._rng import hash2, normal
from ._rng import shuffle as shuffle_inplace

lr_at = device_twin(CPU.lr_at)


def shared_bytes(U, itemsize):
    """Dynamic shared memory of :func:`train_clients`: ``zs, hs, ds`` and two slots."""
    return (3 * U + 2) * itemsize


@kernel
def train_clients(params0, X, yc, yr, sw, meta, hdelta, idx, starts, ends, ids, seed, epochs,
                  max_steps, batch, lr_schedule, shuffle, lr, power_t, momentum, weight_decay,
                  prox_mu, clip, noise_std, perm_buf, perm_off, gbuf, vbuf, out, bad):
    ws = cuda.shared.array(0, params0.dtype)
    U = u_off(meta, meta[0])
    zs = ws[:U]
    hs = ws[U:2 * U]
    ds = ws[2 * U:3 * U]
    flag = ws[3 * U:3 * U + 2]   # [0]: the current row is bad; [1]: its clip factor
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    P = params0.shape[0]
    K = out.shape[0]
    use_mom = momentum != 0.0
    has_w = sw.shape[0] > 0
    has_idx = idx.shape[0] > 0
    clipping = clip < math.inf
    for k in range(cuda.blockIdx.x, K, cuda.gridDim.x):
        p = out[k]
        g = gbuf[k]
        v = vbuf[k]
        perm = perm_buf[perm_off[k]:perm_off[k + 1]]
        lo = starts[k]
        n = ends[k] - lo
        key = hash2(seed, ids[k])
        noise_key = hash2(np.uint64(key) ^ NOISE_TAG, 0)
        for j in range(tid, P, T):
            p[j] = params0[j]
            if use_mom:
                v[j] = 0
        if tid == 0:
            for i in range(n):
                perm[i] = i
        cuda.syncthreads()
        n_batches = (n + batch - 1) // batch
        total = max(1, epochs[k] * n_batches)
        n_epochs = epochs[k] if n_batches > 0 else 0
        limit = max_steps[k]
        if limit >= 0 and n_batches > 0:
            n_epochs = min(n_epochs, (limit + n_batches - 1) // n_batches)
        first_bad = -1
        t = 0
        for e in range(n_epochs):
            if shuffle:
                if tid == 0:
                    for i in range(n):
                        perm[i] = i
                    shuffle_inplace(perm, hash2(key, e))
                cuda.syncthreads()
            for b in range(n_batches):
                if t == limit or first_bad >= 0:
                    break
                clear(g, tid, T)
                cuda.syncthreads()
                wsum = 0.0
                b_lo = b * batch
                for s in range(b_lo, min(n, b_lo + batch)):
                    r = lo + perm[s]
                    if has_idx:
                        r = idx[r]
                    w = sw[r] if has_w else 1.0
                    x = X[r]
                    forward(p, x, meta, zs, hs, tid, T)
                    if tid == 0:
                        _, ok = output_delta(meta, hdelta, zs, ds, yc, yr, r,
                                             1.0 if clipping else w, False)
                        flag[0] = 0 if ok else 1
                    cuda.syncthreads()
                    if flag[0] != 0:
                        first_bad = r
                        break
                    backprop(p, meta, zs, hs, ds, tid, T)
                    if clipping:
                        if tid == 0:
                            sq = sq_norm(x, meta, hs, ds)
                            c = w
                            if sq > clip * clip:
                                c *= clip / math.sqrt(sq)
                            flag[1] = c
                        cuda.syncthreads()
                        scale_deltas(meta, ds, flag[1], tid, T)
                    layer_grads(x, meta, hs, ds, g, True, tid, T)
                    wsum += w
                    cuda.syncthreads()
                if first_bad >= 0:
                    break
                if noise_std > 0.0:
                    step_key = hash2(noise_key, t)
                    for j in range(tid, P, T):
                        g[j] += noise_std * normal(step_key, j)
                inv = 1.0 / wsum if wsum > 0 else 0.0
                lr_t = lr_at(lr_schedule, lr, power_t, t, total)
                for j in range(tid, P, T):
                    if use_mom:
                        dj = g[j] * inv + weight_decay * p[j] + prox_mu * (p[j] - params0[j])
                        v[j] = momentum * v[j] + dj
                        p[j] -= lr_t * v[j]
                    elif weight_decay != 0.0 or prox_mu != 0.0:
                        dj = g[j] * inv + weight_decay * p[j] + prox_mu * (p[j] - params0[j])
                        p[j] -= lr_t * dj
                    else:
                        p[j] -= (lr_t * inv) * g[j]
                cuda.syncthreads()
                t += 1
            if first_bad >= 0:
                break
        if tid == 0:
            bad[k] = first_bad
