"""One sample through a fully connected model: forward, loss derivative, backward.

A model reaches the kernels as a few integer arrays (see ``fastmb.models``):

* ``sizes``  (L+1,)  units per layer, ``sizes[0]`` = features, ``sizes[L]`` = outputs
* ``w_off``  (L,)    offset of layer l's weights W_l, stored row-major (in, out)
* ``b_off``  (L,)    offset of layer l's bias, or -1 when the model has no bias
* ``u_off``  (L+1,)  offset of layer l's units in the per-sample workspace
* ``act``, ``loss``  integer codes below; ``hdelta`` is the Huber threshold

Hidden layers apply ``act``; the output layer is affine and the loss supplies the
link (sigmoid, softmax). A linear model is the case L = 1.

Workspaces ``zs`` (pre-activations), ``hs`` (activations) and ``ds`` (deltas) hold
``u_off[L]`` values each, in the parameters' dtype. Sums over a layer's inputs are
accumulated in that dtype too: there are at most a few thousand terms, and keeping
float32 lets the loops run at full SIMD width. Sums over samples (loss, mean
gradient) are the caller's business and are done in float64.

Two seams shape this module. The model's input is read through the ``input_*`` helpers
only (a dense row today; a sparse CSR row can plug in there), and the passes run over a
range of layers ``[lo, hi)`` (``forward_range``, ``backward_range``) apart from the loss
head (``loss_and_delta``), so part of a model can run on its own: a range that starts past
layer 0 reads its input, the activations at the cut, where the model's input would be.
A whole model is the range ``[0, L)``.

Loops are ordered so the innermost one runs over contiguous memory: the forward
pass adds ``a_i * W[i, :]`` row by row, the backward pass takes dot products with
rows of W, and the weight gradient is written row by row as ``a_i * delta``. A
one-output layer (logistic, hinge, scalar regression) gets its own branch, where
the contiguous direction is the input axis instead.
"""

import math

import numpy as np

from ._input import clear_unstored, layer_row, row_col, row_nnz, row_val
from ._jit import jit

ACT_IDENTITY, ACT_RELU, ACT_TANH, ACT_SIGMOID = 0, 1, 2, 3
LOSS_SQUARED, LOSS_HUBER, LOSS_LOGISTIC, LOSS_HINGE, LOSS_SOFTMAX = 0, 1, 2, 3, 4


@jit(inline="always")
def sigmoid(z):
    # Split on the sign so exp never overflows: both branches stay in (0, 1].
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@jit(inline="always")
def _activate(z, act):
    if act == ACT_RELU:
        return z if z > 0 else z * 0
    if act == ACT_TANH:
        return math.tanh(z)
    if act == ACT_SIGMOID:
        return sigmoid(z)
    return z


@jit(inline="always")
def _act_deriv(z, h, act):
    # Derivative written in terms of the stored activation h where that is cheaper.
    if act == ACT_RELU:
        return 1.0 if z > 0 else 0.0
    if act == ACT_TANH:
        return 1.0 - h * h
    if act == ACT_SIGMOID:
        return h * (1.0 - h)
    return 1.0


@jit(inline="always")
def workspace(u_off, like):
    """One sample's buffers ``(zs, hs, ds)``: pre-activations, activations, deltas.

    Each holds every layer's units (``u_off[-1]`` values) in the dtype of ``like``.
    """
    U = u_off[u_off.shape[0] - 1]
    return np.empty(U, like.dtype), np.empty(U, like.dtype), np.empty(U, like.dtype)


# ---------------------------------------------------------------- the model's input
# Every read of a sample's features goes through these helpers and those of ``_input``
# (``input_row``, a row's entries ``row_nnz``/``row_col``/``row_val``): the loops below run
# over a row's entries, which are all its features for a dense row and the stored ones
# for a sparse row, so one source serves both input types.


@jit(inline="always")
def input_axpy(x, a, out):
    """``out += a * x`` over the input's entries (a one-output linear model's gradient)."""
    for k in range(row_nnz(x)):
        out[row_col(x, k)] += row_val(x, k) * a


@jit(inline="always")
def input_scaled(x, a, out):
    """``out = a * x`` over the input's features; returns how many entries are finite
    (counted in the writing loop: one pass over a row still in cache; a sparse row's
    unstored entries are zeros, finite)."""
    clear_unstored(x, out)
    cnt = out.shape[0] - row_nnz(x)
    for k in range(row_nnz(x)):
        v = row_val(x, k) * a
        out[row_col(x, k)] = v
        cnt += abs(v) < np.inf
    return cnt


@jit(inline="always")
def affine(a, params, wo, bo, nin, nout, z):
    """``z = a @ W + b`` for one layer (``W`` row-major ``(nin, nout)`` at ``wo``, the bias at
    ``bo`` or none when ``bo < 0``), adding ``a_i * W[i, :]`` over the entries of ``a`` (the
    layer's activations, or the model's input row, dense or sparse)."""
    W = params[wo:wo + nin * nout]
    if nout == 1:
        # Start from z[0] so that s keeps the parameters' dtype (a literal 0 would
        # promote a float32 sum to float64 and halve the SIMD width).
        z[0] = params[bo] if bo >= 0 else 0
        s = z[0]
        for k in range(row_nnz(a)):
            s += row_val(a, k) * W[row_col(a, k)]
        z[0] = s
    else:
        if bo >= 0:
            bias = params[bo:bo + nout]
            for j in range(nout):
                z[j] = bias[j]
        else:
            for j in range(nout):
                z[j] = 0
        for k in range(row_nnz(a)):
            ai = row_val(a, k)
            i = row_col(a, k)
            row = W[i * nout:(i + 1) * nout]
            for j in range(nout):
                z[j] += ai * row[j]


input_affine = affine  # the first layer, on the model's input (the input seam)


@jit
def forward_range(params, x, lo, hi, sizes, w_off, b_off, u_off, act, zs, hs):
    """Forward pass of layers ``[lo, hi)`` for one sample whose input to layer ``lo`` is ``x``;
    returns False if that first layer's pre-activations are not finite.

    A NaN or Inf in ``x`` always reaches the first layer's pre-activations (the weights
    are finite, and 0 * Inf is NaN), so checking those few values detects a bad input row
    at no extra memory traffic. Hidden layers (all but the model's last) apply ``act``.

    Linked, not inlined (as :func:`backward_range`): the per-row kernels share one compiled
    copy per input type. Inlined, Numba's inliner copied each caller's whole IR once per
    inlined helper: a cold ``sample_grad_loss`` took 13.9 s (6.4 s in the inliner),
    ``sgd`` with batch 1 29 s, and the sparse entry points 65 s in all (45 s linked). The
    call costs nothing measurable a row (SGD epochs and loss-and-gradient within noise).
    """
    L = sizes.shape[0] - 1
    ok = True
    for l in range(lo, hi):
        nin = sizes[l]
        nout = sizes[l + 1]
        zo = u_off[l]
        z = zs[zo:zo + nout]
        if l == 0:
            input_affine(x, params, w_off[l], b_off[l], nin, nout, z)
        else:
            affine(layer_row(l, lo, x, hs, u_off, nin), params, w_off[l], b_off[l], nin,
                   nout, z)
        if l == lo:
            for j in range(nout):
                if not math.isfinite(z[j]):
                    ok = False
        if l < L - 1:
            h = hs[zo:zo + nout]
            for j in range(nout):
                h[j] = _activate(z[j], act)
    return ok


@jit(inline="always")
def forward(params, x, sizes, w_off, b_off, u_off, act, zs, hs):
    """Forward pass of the whole model for one sample ``x`` (:func:`forward_range` ``[0, L)``)."""
    # (an int64 zero: a literal 0 would compile forward_range once more than the slices do)
    return forward_range(params, x, np.int64(0), sizes.shape[0] - 1, sizes, w_off, b_off,
                         u_off, act, zs, hs)


@jit(inline="always")
def delta1(z, loss, hdelta, yc, yr, r):
    """dloss/df of a one-output model (every loss but softmax) at output ``z``."""
    if loss == LOSS_LOGISTIC:
        return sigmoid(z) - yc[r]
    if loss == LOSS_HINGE:
        s = 2.0 * yc[r] - 1.0
        return -s if s * z < 1.0 else 0.0
    res = z - yr[r, 0]
    if loss == LOSS_HUBER and abs(res) > hdelta:
        return hdelta if res > 0 else -hdelta
    return res


@jit(inline="always")
def is_linear1(sizes):
    """A single layer with a single output: the case with dedicated fast loops."""
    return sizes.shape[0] == 2 and sizes[1] == 1


@jit(inline="always")
def dot1(x, w, z0, tmp):
    """``z0 + x . w`` in the dtype of ``tmp`` (a 1-element scratch array).

    Starting the sum from a value stored in ``tmp`` keeps it in the arrays' dtype; a
    Python float would promote a float32 sum to float64 and halve the SIMD width.
    """
    tmp[0] = z0
    s = tmp[0]
    for k in range(row_nnz(x)):
        s += row_val(x, k) * w[row_col(x, k)]
    return s


@jit(inline="always")
def linear1_delta(x, w, z0, tmp, loss, hdelta, yc, yr, r, scale):
    """Output delta of a one-layer, one-output model for row ``r``, times ``scale``.

    Returns ``(delta, ok)`` with ``delta`` in the dtype of ``tmp`` (see :func:`dot1`)
    and ``ok`` False when the output or the delta is not finite. The gradient of the
    row is then ``delta * [x, 1]``.
    """
    z = dot1(x, w, z0, tmp)
    tmp[0] = scale * delta1(z, loss, hdelta, yc, yr, r)
    dl = tmp[0]
    return dl, math.isfinite(z) and math.isfinite(dl)


@jit
def loss_and_delta(f, d, loss, hdelta, yc, yr, r, want_loss):
    """Loss of one sample with outputs ``f`` and label row ``r``; writes dloss/df into ``d``.

    Returns the loss as float64, or 0.0 when ``want_loss`` is False (gradients and SGD
    never need the value, and for the logistic and softmax losses it costs extra
    transcendentals). Each loss is written in its numerically stable form: log(1 + e^f)
    as max(f, 0) + log1p(e^-|f|), softmax through its log-sum-exp.
    """
    k = f.shape[0]
    if loss == LOSS_LOGISTIC or loss == LOSS_HINGE:
        z = f[0]
        d[0] = delta1(z, loss, hdelta, yc, yr, r)
        if not want_loss:
            return 0.0
        if loss == LOSS_LOGISTIC:
            return max(z, 0.0) + math.log1p(math.exp(-abs(z))) - yc[r] * z
        return max(0.0, 1.0 - (2.0 * yc[r] - 1.0) * z)
    if loss == LOSS_SOFTMAX:
        m = f[0]
        for j in range(1, k):
            m = max(m, f[j])
        tot = 0.0
        for j in range(k):
            e = math.exp(f[j] - m)
            d[j] = e
            tot += e
        inv = 1.0 / tot
        for j in range(k):
            d[j] = d[j] * inv
        c = yc[r]
        d[c] -= 1.0
        if not want_loss:
            return 0.0
        return m + math.log(tot) - f[c]
    out = 0.0
    if loss == LOSS_HUBER:
        for j in range(k):
            res = f[j] - yr[r, j]
            if abs(res) <= hdelta:
                d[j] = res
                out += 0.5 * res * res
            else:
                d[j] = hdelta if res > 0 else -hdelta
                out += hdelta * (abs(res) - 0.5 * hdelta)
        return out
    for j in range(k):
        res = f[j] - yr[r, j]
        d[j] = res
        out += 0.5 * res * res
    return out


MODE_WRITE, MODE_ADD, MODE_NORM, MODE_NONE = 0, 1, 2, 3


@jit(inline="always")
def input_absmax(x):
    """``max |x_i|`` of the model's input, in float64."""
    m = 0.0
    for k in range(row_nnz(x)):
        m = max(m, abs(np.float64(row_val(x, k))))
    return m


@jit(inline="always")
def layer_norms(a, dl, bo, nin, nout):
    """``(|a|^2 + 1, |delta|^2)`` of one layer (no 1 without a bias): the squared norm of the
    layer's part of the sample's gradient is their product. Squares in float64: |a|^2 of a
    float32 row overflows from |a_i| ~ 1e19 on, while the norm itself may be representable."""
    na = 1.0 if bo >= 0 else 0.0
    for k in range(row_nnz(a)):
        v = np.float64(row_val(a, k))
        na += v * v
    nd = 0.0
    for j in range(nout):
        nd += np.float64(dl[j]) * dl[j]
    return na, nd



@jit(inline="always")
def layer_grad(a, dl, g, wo, bo, nin, nout, mode):
    """One layer's part of a sample's gradient: the outer product ``a (x) delta`` (and
    ``delta`` for the bias) written to (MODE_WRITE) or added into (MODE_ADD) ``g``, over
    the entries of ``a`` (a sparse input row writes zeros where it stores nothing)."""
    if nout == 1:
        d0 = dl[0]
        gw = g[wo:wo + nin]
        if mode == MODE_WRITE:
            clear_unstored(a, gw)
            for k in range(row_nnz(a)):
                gw[row_col(a, k)] = row_val(a, k) * d0
            if bo >= 0:
                g[bo] = d0
        else:
            for k in range(row_nnz(a)):
                gw[row_col(a, k)] += row_val(a, k) * d0
            if bo >= 0:
                g[bo] += d0
        return
    if mode == MODE_WRITE:
        clear_unstored(a, g[wo:wo + nin * nout])
    for k in range(row_nnz(a)):
        ai = row_val(a, k)
        i = row_col(a, k)
        gr = g[wo + i * nout:wo + (i + 1) * nout]
        if mode == MODE_WRITE:
            for j in range(nout):
                gr[j] = ai * dl[j]
        else:
            for j in range(nout):
                gr[j] += ai * dl[j]
    if bo >= 0:
        gb = g[bo:bo + nout]
        if mode == MODE_WRITE:
            for j in range(nout):
                gb[j] = dl[j]
        else:
            for j in range(nout):
                gb[j] += dl[j]


input_outer = layer_grad  # the first layer's gradient, from the model's input (the input seam)


@jit
def backward_range(params, x, lo, hi, sizes, w_off, b_off, u_off, act, zs, hs, ds, g, mode):
    """Backward pass of layers ``[lo, hi)`` of one sample whose delta at the output of layer
    ``hi - 1`` is already in ``ds`` and whose input to layer ``lo`` was ``x``.

    ``mode`` MODE_WRITE stores the gradient into ``g`` (length P),
    MODE_ADD adds it, MODE_NORM writes nothing and returns the squared L2 norm of the
    gradient, layer by layer as (|a|^2 + 1) |delta|^2: the norm of an outer product
    is the product of the norms, so the per-sample gradient is never formed.
    MODE_NONE returns at once (loss only). Deltas are carried down to layer ``lo``.
    Returns the squared norm in MODE_NORM and 0.0 otherwise. Linked, not inlined (see
    :func:`forward_range`); ``mode`` is then a run-time value.
    """
    if mode == MODE_NONE:
        return 0.0
    sq = 0.0
    for l in range(hi - 1, lo - 1, -1):
        nin = sizes[l]
        nout = sizes[l + 1]
        wo = w_off[l]
        bo = b_off[l]
        dl = ds[u_off[l]:u_off[l] + nout]
        if mode == MODE_NORM:
            # One loop for every layer (the model's input for the first): a float64
            # reduction vectorizes into one fixed order, as it always has.
            if l == lo:
                na, nd = layer_norms(x, dl, bo, nin, nout)
            else:
                na, nd = layer_norms(layer_row(l, lo, x, hs, u_off, nin), dl, bo, nin, nout)
            sq += na * nd
        elif l == 0:
            input_outer(x, dl, g, wo, bo, nin, nout, mode)
        else:
            layer_grad(layer_row(l, lo, x, hs, u_off, nin), dl, g, wo, bo, nin, nout, mode)
        if l > lo:
            # delta_{l-1} = (W_l delta_l) * act'(z_{l-1}); W_l rows are contiguous.
            po = u_off[l - 1]
            W = params[wo:wo + nin * nout]
            dprev = ds[po:po + nin]
            zprev = zs[po:po + nin]
            hprev = hs[po:po + nin]
            for i in range(nin):
                row = W[i * nout:(i + 1) * nout]
                s = row[0] * dl[0]
                for j in range(1, nout):
                    s += row[j] * dl[j]
                dprev[i] = s * _act_deriv(zprev[i], hprev[i], act)
    return sq


@jit(inline="always")
def backward(params, x, sizes, w_off, b_off, u_off, act, zs, hs, ds, g, mode):
    """Backward pass of the whole model (:func:`backward_range` ``[0, L)``)."""
    return backward_range(params, x, np.int64(0), sizes.shape[0] - 1, sizes, w_off, b_off,
                          u_off, act, zs, hs, ds, g, np.int64(mode))


@jit(inline="always")
def sample_grad(params, x, yc, yr, r, sizes, w_off, b_off, u_off, act, loss, hdelta,
                zs, hs, ds, g, scale, mode, want_loss):
    """Forward, loss and backward for row ``r``.

    Kernels call it through ``sample_grad_add`` and ``sample_grad_loss`` below:
    one compiled copy per mode, which each kernel links instead of Numba typing and
    lowering the whole forward and backward pass again inside every kernel (the first
    simulation compiled for 47 s with everything inlined, 28 s without), while the mode
    stays a constant inside each copy (a single copy for all modes made per-sample
    gradients 5-10% slower).

    The gradient is multiplied by ``scale`` (a sample weight, or 1/m for a micro-batch
    mean). Returns ``(loss, sqnorm, ok)``; ``ok`` is False when the row's first layer or its
    loss is not finite (a NaN/Inf in ``x``, or an overflow).
    """
    ok = forward(params, x, sizes, w_off, b_off, u_off, act, zs, hs)
    L = sizes.shape[0] - 1
    lo = u_off[L - 1]
    hi = u_off[L]
    dout = ds[lo:hi]
    f = zs[lo:hi]
    lv = loss_and_delta(f, dout, loss, hdelta, yc, yr, r, np.bool_(want_loss))
    if not math.isfinite(lv):
        ok = False
    for j in range(hi - lo):
        if not math.isfinite(f[j]):
            ok = False
    if scale != 1.0:
        # The gradient is linear in the output delta: scaling it here once scales
        # every layer's gradient, and keeps the inner loops free of float64 scalars.
        for j in range(hi - lo):
            dout[j] = dout[j] * scale
    sq = backward(params, x, sizes, w_off, b_off, u_off, act, zs, hs, ds, g, mode)
    return lv, sq, ok


# The compiled copies of sample_grad, one per mode (see there). ``loss_and_delta`` is not
# inlined either: the batched path and the evaluation share its one copy. Their flags are
# passed as ``np.bool_(...)``: a literal argument would compile a helper once more per value.


@jit
def sample_grad_add(params, x, yc, yr, r, sizes, w_off, b_off, u_off, act, loss, hdelta,
                    zs, hs, ds, g, scale):
    """:func:`sample_grad` adding the gradient to ``g``."""
    return sample_grad(params, x, yc, yr, r, sizes, w_off, b_off, u_off, act, loss, hdelta,
                       zs, hs, ds, g, scale, MODE_ADD, False)


@jit
def sample_grad_loss(params, x, yc, yr, r, sizes, w_off, b_off, u_off, act, loss, hdelta,
                     zs, hs, ds, g, scale, mode):
    """:func:`sample_grad` with the loss; ``mode`` (``MODE_ADD`` or ``MODE_NONE``, known
    only at run time) says whether the gradient is added to ``g``."""
    return sample_grad(params, x, yc, yr, r, sizes, w_off, b_off, u_off, act, loss, hdelta,
                       zs, hs, ds, g, scale, mode, True)
