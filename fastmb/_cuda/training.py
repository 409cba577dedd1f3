"""Host side of ``kernels/cuda/training.py``: local SGD of many clients on the GPU."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .aggregation import rows_nonfinite
from .arrays import empty, finish, threads, to_device
from .model import _shared, _units

# ----------------------------------------------------------------------------- training


def train_clients(b, idx, offsets, options, ids, epochs, steps):
    """Local SGD of the clients ``ids`` on the GPU (arguments checked by the caller)."""
    from ..kernels.cuda import training as KT

    model = b.model
    K = ids.shape[0]
    P = model.n_params
    starts = offsets[ids]
    ends = offsets[ids + 1]
    perm_off = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    out = empty((K, P), b.dtype)
    gbuf = empty((K, P), b.dtype)
    r = options.record(model)  # the CUDA kernel takes the record's fields as scalars
    vbuf = empty((K, P) if r.momentum else (K, 0), b.dtype)
    perm = empty(int(perm_off[-1]), np.int64)
    bad = empty(K, np.int64)
    T = threads()
    shared = _shared(model, KT.shared_bytes(_units(model), b.dtype.itemsize))
    KT.train_clients[min(K, 65535), T, 0, shared](
        b.params, b.X, b.yc, b.yr, b.sw, b.meta, model.huber_delta, to_device(idx),
        to_device(starts), to_device(ends), to_device(ids), np.uint64(options.seed),
        to_device(epochs), to_device(steps), r.batch, r.lr_schedule, r.shuffle, r.lr,
        r.power_t, r.momentum, r.weight_decay, r.prox_mu, float(r.clip), float(r.noise_std),
        perm, to_device(perm_off), gbuf, vbuf,
        out, bad)
    bad = bad.copy_to_host()
    flagged = bad[bad >= 0]
    if flagged.size:
        row = int(flagged.min())  # a row of X: the kernel maps through rows
        V.raise_bad_row(b.X, row, overflow=(
            f"training diverged: the loss became NaN or Inf at row {row}; lower lr or scale "
            "the inputs"))
    diverged = rows_nonfinite(out)
    if diverged.any():
        k = int(np.argmax(diverged))
        raise ValueError(f"training diverged: the parameters of client {int(ids[k])} overflowed "
                         f"{b.dtype}; lower lr or scale the inputs")
    return finish(out, b.on_device)
