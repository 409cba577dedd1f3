"""One sample through a fully connected model, computed by one thread block.

The CPU kernels give each sample to one thread; here a whole block works on a sample
(or on a client, in ``training``), its threads splitting each layer's units:

* forward: thread t computes the units ``j = t, t+T, ...`` of a layer,
  ``z_j = b_j + sum_i a_i W[i, j]`` summed over i in order (as the CPU does); neighbouring
  threads read neighbouring columns of a row of W, so the reads coalesce;
* backward: thread t computes ``delta_i`` of the layer below for ``i = t, t+T, ...``;
* gradient: thread t owns the flat coordinates ``q = t, t+T, ...`` of each layer and
  writes ``a_i delta_j`` there: consecutive threads write consecutive addresses, and a
  sum over samples (a mini-batch, a block's rows) adds to each coordinate in sample
  order, by one thread, so the result never depends on scheduling.

Layers are separated by ``cuda.syncthreads()``. The per-sample workspace (``zs``, ``hs``,
``ds``: pre-activations, activations, deltas, ``U`` values each) is in shared memory.

The model arrives as one int64 array ``meta`` (see :func:`pack`) instead of the CPU's
tuple of arrays. The loss and activation formulas are the CPU functions themselves
(:func:`~fastmb.kernels.cuda._jit.device_twin`).
"""

import math

import numpy as np
from numba import cuda

from .. import _model as M
from ._jit import device, device_twin

sigmoid = device_twin(M.sigmoid)
activate = device_twin(M._activate, sigmoid=sigmoid)
act_deriv = device_twin(M._act_deriv)
delta1 = device_twin(M.delta1, sigmoid=sigmoid)
loss_and_delta = device_twin(M.loss_and_delta, delta1=delta1)


def pack(spec):
    """``meta`` = [L, act, loss, sizes (L+1), w_off (L), b_off (L), u_off (L+1)], int64."""
    sizes, w_off, b_off, u_off, act, loss, _ = spec
    L = sizes.shape[0] - 1
    return np.concatenate([[L, act, loss], sizes, w_off, b_off, u_off]).astype(np.int64)


@device
def size(meta, l):
    return meta[3 + l]


@device
def w_off(meta, l):
    return meta[4 + meta[0] + l]


@device
def b_off(meta, l):
    return meta[4 + 2 * meta[0] + l]


@device
def u_off(meta, l):
    return meta[4 + 3 * meta[0] + l]


@device
def clear(row, tid, T):
    """``row[:] = 0``, thread t writing elements t, t+T, ... (the block's threads together)."""
    for q in range(tid, row.shape[0], T):
        row[q] = 0


@device
def layer(meta, l):
    """Layer ``l``'s ``(n_in, n_out, weight offset, bias offset or -1, offset of its units,
    offset of its input units)``; the input offset is 0 for layer 0, whose input is the sample."""
    return (size(meta, l), size(meta, l + 1), w_off(meta, l), b_off(meta, l), u_off(meta, l),
            u_off(meta, l - 1) if l > 0 else 0)


@device
def forward_range(params, x, meta, lo, hi, zs, hs, tid, T):
    """Layers ``[lo, hi)`` of sample ``x`` (the model's input for ``lo = 0``, the
    activations at cut ``lo`` otherwise) into ``zs``/``hs``; every thread of the block
    calls it. A hidden layer's activation is applied, the last layer's outputs stay raw."""
    L = meta[0]
    act = meta[1]
    for l in range(lo, hi):
        nin, nout, wo, bo, zo, ao = layer(meta, l)
        for j in range(tid, nout, T):
            # Start from a stored value so the sum keeps the parameters' dtype.
            if bo >= 0:
                zs[zo + j] = params[bo + j]
            else:
                zs[zo + j] = 0
            z = zs[zo + j]
            if l == lo:
                for i in range(nin):
                    z += x[i] * params[wo + i * nout + j]
            else:
                for i in range(nin):
                    z += hs[ao + i] * params[wo + i * nout + j]
            zs[zo + j] = z
            if l < L - 1:
                hs[zo + j] = activate(z, act)
        cuda.syncthreads()


@device
def forward(params, x, meta, zs, hs, tid, T):
    """Forward pass of sample ``x`` into ``zs``/``hs``; every thread of the block calls it."""
    forward_range(params, x, meta, 0, meta[0], zs, hs, tid, T)


@device
def output_delta(meta, hdelta, zs, ds, yc, yr, r, scale, want_loss):
    """One thread: the loss of row ``r`` and ``scale * dloss/df`` into the output deltas.

    Returns ``(loss, ok)``; ``ok`` is False when the first layer, the outputs or the
    loss are not finite (a NaN/Inf in the row, or an overflow), as on the CPU.
    """
    L = meta[0]
    lo = u_off(meta, L - 1)
    hi = u_off(meta, L)
    lv = loss_and_delta(zs[lo:hi], ds[lo:hi], meta[2], hdelta, yc, yr, r, want_loss)
    ok = math.isfinite(lv)
    for j in range(size(meta, 1)):
        ok = ok and math.isfinite(zs[j])
    for j in range(lo, hi):
        ok = ok and math.isfinite(zs[j])
        if scale != 1.0:
            ds[j] = ds[j] * scale
    return lv, ok


@device
def weight_dot(params, row, ds, do, nout):
    """``sum_j W[i, j] delta[j]`` for the weight row starting at ``row``, j in order (the
    CPU's order): the gradient reaching unit i of the layer below."""
    s = params[row] * ds[do]
    for j in range(1, nout):
        s += params[row + j] * ds[do + j]
    return s


def workspace_bytes(U, itemsize):
    """Dynamic shared memory of a per-sample workspace ``zs, hs, ds`` of ``U`` units each."""
    return 3 * U * itemsize


@device
def backprop_range(params, meta, lo, hi, zs, hs, ds, tid, T):
    """Deltas of layers ``hi - 2`` down to ``lo`` from those of layer ``hi - 1``:
    ``(W_l delta_l) * act'(z)``."""
    act = meta[1]
    for l in range(hi - 1, lo, -1):
        nin, nout, wo, _, do, po = layer(meta, l)
        for i in range(tid, nin, T):
            s = weight_dot(params, wo + i * nout, ds, do, nout)
            ds[po + i] = s * act_deriv(zs[po + i], hs[po + i], act)
        cuda.syncthreads()


@device
def backprop(params, meta, zs, hs, ds, tid, T):
    """Deltas of the hidden layers from the output deltas: ``(W_l delta_l) * act'(z)``."""
    backprop_range(params, meta, 0, meta[0], zs, hs, ds, tid, T)


@device
def layer_grads_range(x, meta, lo, hi, hs, ds, g, p0, add, tid, T):
    """``g`` = (or += with ``add``) the sample's gradient ``a_l (x) delta_l`` of layers
    ``[lo, hi)``, at ``g[flat coordinate - p0]`` (``p0``: the slice's first coordinate).

    Thread t writes the flat coordinates ``t, t+T, ...`` of each layer's weights and bias.
    """
    for l in range(lo, hi):
        nin, nout, wo, bo, do, ao = layer(meta, l)
        for q in range(tid, nin * nout, T):
            i = q // nout
            j = q - i * nout
            a = x[i] if l == lo else hs[ao + i]
            v = a * ds[do + j]
            if add:
                g[wo - p0 + q] += v
            else:
                g[wo - p0 + q] = v
        if bo >= 0:
            for j in range(tid, nout, T):
                if add:
                    g[bo - p0 + j] += ds[do + j]
                else:
                    g[bo - p0 + j] = ds[do + j]


@device
def layer_grads(x, meta, hs, ds, g, add, tid, T):
    """``g`` = (or += with ``add``) the sample's gradient ``a_l (x) delta_l``, layer by layer.

    Thread t writes the flat coordinates ``t, t+T, ...`` of each layer's weights and bias.
    """
    layer_grads_range(x, meta, 0, meta[0], hs, ds, g, 0, add, tid, T)


@device
def sq_norm(x, meta, hs, ds):
    """One thread: the squared norm of the sample's gradient, ``sum_l (|a_l|^2 + 1)|delta_l|^2``
    (no 1 without a bias), in float64, without forming the gradient."""
    L = meta[0]
    sq = 0.0
    for l in range(L):
        nin, nout, _, bo, do, ao = layer(meta, l)
        na = 1.0 if bo >= 0 else 0.0
        for i in range(nin):
            a = float(x[i]) if l == 0 else float(hs[ao + i])
            na += a * a
        nd = 0.0
        for j in range(nout):
            d = float(ds[do + j])
            nd += d * d
        sq += na * nd
    return sq


@device
def scale_deltas(meta, ds, c, tid, T):
    """Every delta times ``c`` (a clip factor): the whole gradient scales with it."""
    for u in range(tid, u_off(meta, meta[0]), T):
        ds[u] = ds[u] * c
    cuda.syncthreads()
