"""Host side of ``kernels/cuda/gradients.py``: per-sample gradients and norms, loss and mean
gradient on the GPU."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .arrays import blocks_for, device_view, empty, finish, is_device_array, threads, to_device
from .model import Batch, _check_overlap, _first_bad_row, _linear1, _shared, _units

# ----------------------------------------------------------------------------- gradients


def _accum_blocks(n, P):
    """Blocks whose float64 partial sums a mean gradient keeps: a function of the problem
    only (so the sum order is the same on every GPU), at most 2**24 partial sums (128 MiB)."""
    return max(1, min(-(-n // 64), 4096, max(2, (1 << 24) // max(P, 1))))


def _samples(b, mode, microbatch, out, totals, nb):
    from ..kernels.cuda import gradients as KG

    T = threads()
    bad = empty(nb, np.int64)
    shared = _shared(b.model, KG.shared_bytes_samples(_units(b.model), b.dtype.itemsize))
    KG.samples[nb, T, 0, shared](
        b.params, b.X, b.yc, b.yr, b.sw, b.meta, b.model.huber_delta, microbatch, mode, out,
        totals, bad)
    b.check(bad.copy_to_host())


def _linear1_launch(b, mode, out, totals, nb):
    from ..kernels.cuda import gradients as KG

    T = threads()
    bad = empty(nb * T, np.int64)
    KG.linear1[nb, T, 0, KG.shared_bytes_linear1(T, b.dtype.itemsize)](
        b.params, b.X, b.yc, b.yr, b.sw, int(b.model.layout.loss), b.model.huber_delta,
        b.model.fit_intercept, mode, KG.group_size(T), out, totals, bad)
    b.check(bad.copy_to_host())


def _rows_blocks(n_items, linear1):
    """Blocks for the per-sample kernels, whose results do not depend on the grid: a block
    per item (a row, a micro-batch), or per ``T / G`` rows in the linear kernel."""
    from ..kernels.cuda import gradients as KG

    T = threads()
    return blocks_for(n_items, T // KG.group_size(T) if linear1 else 1, cap=16384)


def per_sample_grad(model, params, X, y, microbatch, out):
    from ..kernels.cuda import gradients as KG

    b = Batch(model, params, X, y)
    rows = -(-b.n // microbatch)
    shape = (rows, model.n_params)
    user_out = out
    if out is None:
        out = empty(shape, b.dtype)
    else:
        if not is_device_array(out):
            raise TypeError("out must be a GPU array when device='cuda'")
        out = device_view("out", out, [b.dtype])
        if tuple(out.shape) != shape:
            raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
        _check_overlap("out", out, params=b.params, X=b.X, y=b.yr)
    no_totals = empty((0, 2), np.float64)
    if _linear1(model) and microbatch == 1:
        _linear1_launch(b, KG.MODE_WRITE, out, no_totals, _rows_blocks(rows, True))
    else:
        _samples(b, KG.MODE_WRITE, microbatch, out, no_totals, _rows_blocks(rows, False))
    _first_bad_row(b, out, microbatch)
    return finish(out, b.on_device) if user_out is None else user_out


def per_sample_grad_norm(model, params, X, y):
    from ..kernels.cuda import gradients as KG

    b = Batch(model, params, X, y)
    out = empty((b.n, 1), b.dtype)
    no_totals = empty((0, 2), np.float64)
    if _linear1(model):
        _linear1_launch(b, KG.MODE_NORM, out, no_totals, _rows_blocks(b.n, True))
    else:
        _samples(b, KG.MODE_NORM, 1, out, no_totals, _rows_blocks(b.n, False))
    _first_bad_row(b, out)
    return finish(out.reshape(b.n), b.on_device)


def loss_grad(model, params, X, y, sample_weight, want_grad):
    """``(mean loss, mean gradient)``: float64 sums per block, merged in block order."""
    from ..kernels.cuda import aggregation as KA
    from ..kernels.cuda import gradients as KG

    b = Batch(model, params, X, y, sample_weight)
    P = model.n_params
    T = threads()
    if _linear1(model):
        nb = _accum_blocks(-(-b.n // (T // KG.group_size(T))), P)
        acc = empty((nb, P), np.float64)
        totals = empty((nb * T, 2), np.float64)
        _linear1_launch(b, KG.MODE_ACCUM, acc, totals, nb)
    else:
        nb = _accum_blocks(b.n, P)
        acc = empty((nb, P), np.float64)
        totals = empty((nb, 2), np.float64)
        _samples(b, KG.MODE_ACCUM, 1, acc, totals, nb)
    lsum, wsum = totals.copy_to_host().sum(axis=0)
    value = float(V.finite_result(np.float64(lsum / wsum), "the mean loss"))
    if not want_grad:
        return value, None
    g = empty(P, b.dtype)
    nbad = empty(blocks_for(P, T) * T, np.int64)
    ones = to_device(np.ones(nb))
    KA.weighted_mean[blocks_for(P, T), T](acc, ones, 1.0 / wsum, g, nbad)
    if nbad.copy_to_host().sum():
        V.finite_result(np.array([np.inf], b.dtype), "the mean gradient")
    return value, finish(g, b.on_device)
