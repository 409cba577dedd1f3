"""Server optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization").

One elementwise kernel serves all four. With ``delta = aggregate - x`` (minus the
pseudo-gradient)::

    FedAvgM:    m = b1 m + delta                 x = x + lr m
    FedAdagrad: m = b1 m + (1 - b1) delta        v = v + delta^2
    FedAdam:    m = b1 m + (1 - b1) delta        v = b2 v + (1 - b2) delta^2
    FedYogi:    m = b1 m + (1 - b1) delta        v = v - (1 - b2) delta^2 sign(v - delta^2)
    (adaptive)  x = x + lr m / (sqrt(v) + tau)

Each coordinate is computed in float64 and stored back in the state's dtype; the
coordinates are independent, so the result does not depend on the thread count.
"""

import math

import numpy as np
from numba import prange

from ._jit import jit

FEDAVGM, FEDADAGRAD, FEDADAM, FEDYOGI = 0, 1, 2, 3
BLOCK = 16384


@jit(parallel=True)
def server_step(x, agg, m, v, kind, lr, b1, b2, tau):
    """One server update of ``x`` (and its state ``m``, ``v``) towards ``agg``, in place."""
    P = x.shape[0]
    nb = (P + BLOCK - 1) // BLOCK
    for b in prange(nb):
        for j in range(b * BLOCK, min(P, (b + 1) * BLOCK)):
            d = np.float64(agg[j]) - x[j]
            if kind == FEDAVGM:
                mj = b1 * m[j] + d
                m[j] = mj
                x[j] = x[j] + lr * mj
                continue
            mj = b1 * m[j] + (1.0 - b1) * d
            d2 = d * d
            vj = np.float64(v[j])
            if kind == FEDADAGRAD:
                vj = vj + d2
            elif kind == FEDADAM:
                vj = b2 * vj + (1.0 - b2) * d2
            else:
                s = 1.0 if vj > d2 else (-1.0 if vj < d2 else 0.0)
                vj = vj - (1.0 - b2) * d2 * s
            m[j] = mj
            v[j] = vj
            x[j] = x[j] + lr * mj / (math.sqrt(vj) + tau)
