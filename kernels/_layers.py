"""A whole mini-batch through a fully connected model, layer by layer as matrix products.

``_model`` pushes one sample at a time through the network (matrix-vector products);
that is the right shape for small batches and for per-sample outputs. For a large
mini-batch the same arithmetic is three matrix products per layer, and those run at
GEMM speed through ``np.dot`` (BLAS, via SciPy). With the rows of a batch in the
rows of ``A_l`` (activations entering layer l) and ``D_l`` (output deltas of layer l):

    forward    Z_l = A_l W_l + b_l,            A_{l+1} = act(Z_l)
    backward   D_{l-1} = (D_l W_l^T) * act'(Z_{l-1})
    gradient   G_W_l = A_l^T diag(c) D_l,      G_b_l = sum_i c_i D_l[i]

Sample i's gradient for layer l is the outer product ``a_il (x) d_il``, so its squared
norm is ``(|a_il|^2 + 1) |d_il|^2`` (the 1 for the bias): the per-sample norms, needed
to clip for DP-SGD, cost two row norms per layer and no per-sample gradient is ever
formed ("ghost norms", Goodfellow 2015; Li et al. 2022). The clip factors ``c_i`` then
enter the weight-gradient product as a diagonal scaling of ``D_l``'s rows, so the
clipped sum is still one matrix product per layer.

Row norms are summed in float64 (at most a few thousand terms each, but the clip
decision compares them to a threshold, so they should not depend on the dtype's
rounding more than needed). The matrix products run in the parameters' dtype, as
BLAS does; each output element is one dot product over the batch or the layer width,
and OpenBLAS splits GEMM work over output blocks only, so the bits do not depend on
its thread count.
"""

import math

import numpy as np

from ._input import (
    block_affine,
    block_outer,
    clear_unstored,
    input_row,
    layer_rows,
    n_rows,
    row_col,
    row_nnz,
    row_val,
)
from ._jit import jit
from ._model import _act_deriv, _activate, layer_norms, loss_and_delta


@jit(inline="always")
def _block(buf, b, lo, hi):
    """Rows ``0:b`` of layer units ``lo:hi`` in a flat per-batch buffer, as a (b, hi-lo) view."""
    return buf[b * lo:b * hi].reshape((b, hi - lo))


@jit(inline="always")
def batch_forward(params, A0, rows, lo, hi, sizes, w_off, b_off, u_off, act, Zb, Hb):
    """Forward pass of layers ``[lo, hi)`` for the ``b`` rows of ``A0`` (their input to layer
    ``lo``); returns the first row (of ``rows``) whose layer-``lo`` outputs are not finite, or
    -1. Hidden layers (all but the model's last) apply ``act``."""
    L = sizes.shape[0] - 1
    b = n_rows(A0)
    bad = -1
    for l in range(lo, hi):
        nin = sizes[l]
        nout = sizes[l + 1]
        W = params[w_off[l]:w_off[l] + nin * nout].reshape((nin, nout))
        Z = _block(Zb, b, u_off[l], u_off[l + 1])
        if l == 0:
            block_affine(A0, W, Z)  # the model's input, dense or sparse (the input seam)
        else:
            np.dot(layer_rows(l, lo, A0, Hb, b, u_off), W, Z)
        if b_off[l] >= 0:
            bias = params[b_off[l]:b_off[l] + nout]
            for i in range(b):
                z = Z[i]
                for j in range(nout):
                    z[j] += bias[j]
        if l == lo:
            # A NaN/Inf input always reaches its row of Z (see _model.forward_range).
            for i in range(b):
                if bad < 0:
                    for j in range(nout):
                        if not math.isfinite(Z[i, j]):
                            bad = rows[i]
                            break
        if l < L - 1:
            H = _block(Hb, b, u_off[l], u_off[l + 1])
            for i in range(b):
                for j in range(nout):
                    H[i, j] = _activate(Z[i, j], act)
    return bad


@jit(inline="always")
def batch_backward(params, lo, hi, sizes, w_off, u_off, act, Zb, Hb, Db, b):
    """Deltas of layers ``[lo, hi)`` from the deltas at the output of layer ``hi - 1`` (in
    ``Db``): ``D_{l-1} = (D_l W_l^T) * act'(Z_{l-1})``, down to layer ``lo``."""
    for l in range(hi - 1, lo, -1):
        nin = sizes[l]
        nout = sizes[l + 1]
        W = params[w_off[l]:w_off[l] + nin * nout].reshape((nin, nout))
        D = _block(Db, b, u_off[l], u_off[l + 1])
        Dp = _block(Db, b, u_off[l - 1], u_off[l])
        np.dot(D, W.T, Dp)
        Zp = _block(Zb, b, u_off[l - 1], u_off[l])
        Hp = _block(Hb, b, u_off[l - 1], u_off[l])
        for i in range(b):
            for j in range(nin):
                Dp[i, j] *= _act_deriv(Zp[i, j], Hp[i, j], act)


@jit(inline="always")
def batch_weight_grads(A0, lo, hi, sizes, w_off, b_off, u_off, Hb, Db, g):
    """Weight and bias gradients of layers ``[lo, hi)``: ``G_W_l = A_l^T D_l`` (one GEMM each),
    the bias gradient the column sums of ``D_l``."""
    b = n_rows(A0)
    for l in range(lo, hi):
        nin = sizes[l]
        nout = sizes[l + 1]
        D = _block(Db, b, u_off[l], u_off[l + 1])
        G = g[w_off[l]:w_off[l] + nin * nout].reshape((nin, nout))
        if l == 0:
            block_outer(A0, D, G)
        else:
            np.dot(layer_rows(l, lo, A0, Hb, b, u_off).T, D, G)
        if b_off[l] >= 0:
            gb = g[b_off[l]:b_off[l] + nout]
            for j in range(nout):
                gb[j] = 0
            for i in range(b):
                d = D[i]
                for j in range(nout):
                    gb[j] += d[j]


@jit(inline="always")
def ghost_sq(A0, Hb, Db, sizes, b_off, u_off, sq):
    """``sq[i]`` = squared L2 norm of block row i's gradient, from the layers' inputs and
    deltas alone: ``|a (x) d|^2 = |a|^2 |d|^2`` per layer, plus ``|d|^2`` for the bias
    (summed in float64, see the module's notes)."""
    L = sizes.shape[0] - 1
    b = n_rows(A0)
    for i in range(b):
        sq[i] = 0.0
    for l in range(L):
        nin = sizes[l]
        nout = sizes[l + 1]
        D = _block(Db, b, u_off[l], u_off[l + 1])
        for i in range(b):
            if l == 0:
                na, nd = layer_norms(input_row(A0, i), D[i], b_off[l], nin, nout)
            else:
                A = _block(Hb, b, u_off[l - 1], u_off[l])
                na, nd = layer_norms(A[i], D[i], b_off[l], nin, nout)
            sq[i] += na * nd


@jit(inline="always")
def _write_outer(a, d, G, nout):
    """``G = a (x) d`` (row-major ``(nin, nout)``) over the entries of ``a`` (zeros where a
    sparse input row stores nothing); returns ``max |a_p|`` in float64."""
    clear_unstored(a, G)
    ma = 0.0
    for k in range(row_nnz(a)):
        ap = row_val(a, k)
        p = row_col(a, k)
        ma = max(ma, abs(np.float64(ap)))
        g = G[p * nout:(p + 1) * nout]
        for j in range(nout):
            g[j] = ap * d[j]
    return ma


@jit(inline="always")
def _add_outer(a, d, G, nout, inv):
    """``G += (inv a) (x) d`` over the entries of ``a``."""
    for k in range(row_nnz(a)):
        ap = row_val(a, k) * inv
        p = row_col(a, k)
        g = G[p * nout:(p + 1) * nout]
        for j in range(nout):
            g[j] += ap * d[j]


@jit(inline="always")
def block_sample_grad(A0, Hb, Db, sizes, w_off, b_off, u_off, i, out, tmp):
    """Write block row i's gradient to ``out`` (P,): each layer's ``a (x) d``, and ``d`` for
    its bias. Returns False when an entry may have overflowed the dtype of ``tmp``: every
    entry is at most ``max|a| max|d|`` in magnitude, and that bound (rounded once to the
    dtype) is tested per layer, not the P entries."""
    b = n_rows(A0)
    fits = True
    for l in range(sizes.shape[0] - 1):
        nout = sizes[l + 1]
        d = _block(Db, b, u_off[l], u_off[l + 1])[i]
        G = out[w_off[l]:w_off[l] + sizes[l] * nout]
        if l == 0:
            ma = _write_outer(input_row(A0, i), d, G, nout)
        else:
            ma = _write_outer(_block(Hb, b, u_off[l - 1], u_off[l])[i], d, G, nout)
        if b_off[l] >= 0:
            ma = max(ma, 1.0)
            gb = out[b_off[l]:b_off[l] + nout]
            for j in range(nout):
                gb[j] = d[j]
        md = 0.0
        for j in range(nout):
            md = max(md, abs(np.float64(d[j])))
        tmp[0] = ma * md
        if not (math.isfinite(tmp[0]) and ma < np.inf and md < np.inf):
            fits = False
    return fits


@jit(inline="always")
def block_group_grad(A0, Hb, Db, sizes, w_off, b_off, u_off, i0, i1, out):
    """``out`` = the mean of block rows ``i0:i1``'s gradients (a micro-batch's gradient): each
    row's ``a (x) d`` and bias ``d``, scaled by ``1 / (i1 - i0)``, summed in row order."""
    b = n_rows(A0)
    inv = 1.0 / (i1 - i0)
    for j in range(out.shape[0]):
        out[j] = 0
    for i in range(i0, i1):
        for l in range(sizes.shape[0] - 1):
            nout = sizes[l + 1]
            d = _block(Db, b, u_off[l], u_off[l + 1])[i]
            G = out[w_off[l]:w_off[l] + sizes[l] * nout]
            if l == 0:
                _add_outer(input_row(A0, i), d, G, nout, inv)
            else:
                _add_outer(_block(Hb, b, u_off[l - 1], u_off[l])[i], d, G, nout, inv)
            if b_off[l] >= 0:
                gb = out[b_off[l]:b_off[l] + nout]
                for j in range(nout):
                    gb[j] += d[j] * inv


@jit(inline="always")
def batch_deltas(params, A0, rows, yc, yr, spec, Zb, Hb, Db):
    """Forward pass, loss head and backward pass of a block of samples: every layer's
    pre-activations (``Zb``), activations (``Hb``) and output deltas (``Db``), as
    ``_block`` views of b rows (``A0`` holds the b inputs, ``rows`` their rows in the label
    arrays). Returns the first of ``rows`` whose first layer, outputs or loss are not
    finite (the buffers are then incomplete), or -1.

    Shared by every kernel that needs a block's deltas (the mini-batch gradient,
    per-sample gradients, per-sample norms). Inlined: as a function of its own it would
    compile once, but LLVM optimizes a linked callee again in each caller; with that one
    more level of calls the cold ``fastmb simulate`` measured 30.6 s, against 24-29 s for
    the inlined form in the same stretch of the (noisy) 2-core VM.
    """
    sizes, w_off, b_off, u_off, act, loss, hdelta = spec
    L = sizes.shape[0] - 1
    b = n_rows(A0)
    bad = batch_forward(params, A0, rows, 0, L, sizes, w_off, b_off, u_off, act, Zb, Hb)
    # The loss head: output deltas, row by row (the losses are per-sample functions).
    lo = u_off[L - 1]
    F = _block(Zb, b, lo, u_off[L])
    DL = _block(Db, b, lo, u_off[L])
    for i in range(b):
        lv = loss_and_delta(F[i], DL[i], loss, hdelta, yc, yr, rows[i], np.bool_(False))
        ok = math.isfinite(lv)
        for j in range(F.shape[1]):
            ok = ok and math.isfinite(F[i, j]) and math.isfinite(DL[i, j])
        if not ok and (bad < 0 or rows[i] < bad):
            bad = rows[i]
    if bad >= 0:
        return bad
    batch_backward(params, 0, L, sizes, w_off, u_off, act, Zb, Hb, Db, b)
    return -1


@jit
def batch_grad(params, A0, rows, yc, yr, spec, scale, clip, Zb, Hb, Db, sq, g):
    """Sum of (clipped, weighted) per-sample gradients of one mini-batch, written to ``g``.

    ``A0`` (b, n_features) holds the batch's inputs and ``rows`` (b,) their row numbers
    in the label arrays. ``scale`` (b,) weights each sample (or is empty: weight 1).
    Each sample's gradient is first clipped to L2 norm ``clip`` (``inf``: no clipping).
    ``Zb``, ``Hb``, ``Db`` are flat buffers of at least ``b * u_off[L]`` values and
    ``sq`` (b,) float64 receives the squared per-sample norms (before clipping and
    weighting). Returns ``(first bad row or -1, number of samples clipped)``.

    The model runs as the layer range ``[0, L)`` (:func:`batch_deltas`, then the weight
    gradients), the same pieces a part of a model would run on its own.
    """
    sizes, w_off, b_off, u_off = spec[0], spec[1], spec[2], spec[3]
    L = sizes.shape[0] - 1
    b = n_rows(A0)
    has_w = scale.shape[0] > 0
    bad = batch_deltas(params, A0, rows, yc, yr, spec, Zb, Hb, Db)
    if bad >= 0:
        return bad, 0
    # Ghost norms: not needed (and left at 0) without clipping.
    if clip < np.inf:
        ghost_sq(A0, Hb, Db, sizes, b_off, u_off, sq)
    else:
        for i in range(b):
            sq[i] = 0.0
    # Row factors c_i = weight_i * min(1, clip / |g_i|), folded into the deltas.
    n_clipped = 0
    clip_sq = clip * clip
    for i in range(b):
        c = scale[i] if has_w else 1.0
        if sq[i] > clip_sq:
            c *= clip / math.sqrt(sq[i])
            n_clipped += 1
        if c != 1.0:
            for l in range(L):
                D = _block(Db, b, u_off[l], u_off[l + 1])
                d = D[i]
                for j in range(d.shape[0]):
                    d[j] = d[j] * c
    batch_weight_grads(A0, 0, L, sizes, w_off, b_off, u_off, Hb, Db, g)
    return -1, n_clipped
