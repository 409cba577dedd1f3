"""Host side of ``kernels/cuda/slicing.py``: a depth slice's forward and backward passes on
the GPU (``fastmb.slicing.forward`` / ``backward`` with ``device="cuda"``)."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .arrays import blocks_for, empty, threads, to_device, zeros
from .gradients import _accum_blocks
from .model import _meta, _shared, _units


def _launch(model, params, A, G, lo, hi, mode, p0, out, G_in, nb):
    from ..kernels.cuda import slicing as KS
    from ..kernels.cuda._model import workspace_bytes

    T = threads()
    shared = _shared(model, workspace_bytes(_units(model), params.dtype.itemsize))
    KS.slice_rows[nb, T, 0, shared](to_device(params), to_device(A), G, to_device(
        _meta(model)), lo, hi, mode, p0, out, G_in)


def forward(model, params, A, lo, hi):
    """``(n, sizes[hi])`` outputs of layers ``[lo, hi)`` (checked NumPy inputs), on the
    GPU; the result comes back to the host."""
    from ..kernels.cuda import slicing as KS

    n = A.shape[0]
    out = empty((n, model.sizes[hi]), params.dtype)
    _launch(model, params, A, empty((0, 0), params.dtype), lo, hi, KS.MODE_FORWARD, 0, out,
            empty((0, 0), params.dtype), blocks_for(n, 1, cap=16384))
    return out.copy_to_host()


def backward(model, params, A, G, lo, hi, p0, p1, per_sample):
    """``(grad, G_in)`` of layers ``[lo, hi)``: the parameter gradient per row or summed
    (per-block float64 sums, merged in block order on the host) and the gradient with
    respect to the slice's input (``lo > 0``)."""
    from ..kernels.cuda import slicing as KS

    n = A.shape[0]
    Gd = to_device(G)
    G_in = empty((n, model.sizes[lo]) if lo > 0 else (0, 0), params.dtype)
    if per_sample:
        out = empty((n, p1 - p0), params.dtype)
        _launch(model, params, A, Gd, lo, hi, KS.MODE_PER_ROW, p0, out, G_in,
                blocks_for(n, 1, cap=16384))
        grad = out.copy_to_host()
    else:
        nb = _accum_blocks(n, p1 - p0)
        out = zeros((nb, p1 - p0), np.float64)
        _launch(model, params, A, Gd, lo, hi, KS.MODE_SUM, p0, out, G_in, nb)
        grad = out.copy_to_host().sum(axis=0).astype(params.dtype)
    G_in = G_in.copy_to_host() if lo > 0 else None
    return V.finite_result(grad, "the slice's gradient"), G_in
