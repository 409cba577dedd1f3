"""Layers ``[lo, hi)`` of a model on the GPU: the CUDA twins of ``kernels/slicing.py``'s
``slice_forward`` and ``slice_backward``.

One block per row at a time (blocks stride over the rows), the threads of a block
splitting each layer's units as in ``_model``: the forward pass of the slice from the
row's input (the model's input, or the activations at the cut), then, for the backward
pass, the slice's top deltas from ``G`` (times the activation's derivative below the
last layer), the deltas down to layer ``lo``, the gradient with respect to the slice's
input ``G_in[r, i] = sum_j W_lo[i, j] delta_lo[j]`` (the sum the unsplit pass takes, in
the same order) and the slice's parameter gradient: per row, or added into the block's
float64 row (a block visits rows ``block, block + grid, ...`` in order, the grid fixed by
the problem size, so the sums are the same on every run).
"""

from numba import cuda

from ._jit import kernel
from ._model import (
    act_deriv,
    backprop_range,
    clear,
    forward_range,
    layer,
    layer_grads_range,
    size,
    u_off,
    weight_dot,
)

MODE_FORWARD, MODE_PER_ROW, MODE_SUM = 0, 1, 2


@kernel
def slice_rows(params, A, G, meta, lo, hi, mode, p0, out, G_in):
    ws = cuda.shared.array(0, params.dtype)
    U = u_off(meta, meta[0])
    zs = ws[:U]
    hs = ws[U:2 * U]
    ds = ws[2 * U:3 * U]
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    blk = cuda.blockIdx.x
    L = meta[0]
    act = meta[1]
    n = A.shape[0]
    top = u_off(meta, hi - 1)
    width = size(meta, hi)
    if mode == MODE_SUM:
        clear(out[blk], tid, T)
    for r in range(blk, n, cuda.gridDim.x):
        x = A[r]
        forward_range(params, x, meta, lo, hi, zs, hs, tid, T)
        if mode == MODE_FORWARD:
            for j in range(tid, width, T):
                out[r, j] = zs[top + j] if hi == L else hs[top + j]
            cuda.syncthreads()
            continue
        for j in range(tid, width, T):
            g = G[r, j]
            if hi < L:
                g = g * act_deriv(zs[top + j], hs[top + j], act)
            ds[top + j] = g
        cuda.syncthreads()
        backprop_range(params, meta, lo, hi, zs, hs, ds, tid, T)
        if lo > 0:
            nin, nout, wo, _, do, _ = layer(meta, lo)
            for i in range(tid, nin, T):
                G_in[r, i] = weight_dot(params, wo + i * nout, ds, do, nout)
        if mode == MODE_SUM:
            layer_grads_range(x, meta, lo, hi, hs, ds, out[blk], p0, True, tid, T)
        else:
            layer_grads_range(x, meta, lo, hi, hs, ds, out[r], p0, False, tid, T)
        # The next row overwrites the workspace these threads may still read.
        cuda.syncthreads()
