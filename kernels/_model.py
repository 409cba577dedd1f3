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

Loops are ordered so the innermost one runs over contiguous memory: the forward
pass adds ``a_i * W[i, :]`` row by row, the backward pass takes dot products with
rows of W, and the weight gradient is written row by row as ``a_i * delta``. A
one-output layer (logistic, hinge, scalar regression) gets its own branch, where
the contiguous direction is the input axis instead.
"""

import math

import numpy as np

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


@jit(inline="always")
def layer_input(l, x, hs, u_off, nin):
    """The input of layer ``l``: the sample itself, or the previous layer's activations."""
    if l == 0:
        return x
    return hs[u_off[l - 1]:u_off[l - 1] + nin]


@jit(inline="always")
def forward(params, x, sizes, w_off, b_off, u_off, act, zs, hs):
    """Forward pass of one sample ``x``; returns False if the first layer is not finite.

    A NaN or Inf in ``x`` always reaches the first layer's pre-activations (the
    weights are finite, and 0 * Inf is NaN), so checking those few values detects a
    bad input row at no extra memory traffic.
    """
    L = sizes.shape[0] - 1
    ok = True
    for l in range(L):
        nin = sizes[l]
        nout = sizes[l + 1]
        zo = u_off[l]
        wo = w_off[l]
        bo = b_off[l]
        a = layer_input(l, x, hs, u_off, nin)
        z = zs[zo:zo + nout]
        W = params[wo:wo + nin * nout]
        if nout == 1:
            # Start from z[0] so that s keeps the parameters' dtype (a literal 0 would
            # promote a float32 sum to float64 and halve the SIMD width).
            z[0] = params[bo] if bo >= 0 else 0
            s = z[0]
            for i in range(nin):
                s += a[i] * W[i]
            z[0] = s
        else:
            if bo >= 0:
                bias = params[bo:bo + nout]
                for j in range(nout):
                    z[j] = bias[j]
            else:
                for j in range(nout):
                    z[j] = 0
            for i in range(nin):
                ai = a[i]
                row = W[i * nout:(i + 1) * nout]
                for j in range(nout):
                    z[j] += ai * row[j]
        if l == 0:
            for j in range(nout):
                if not math.isfinite(z[j]):
                    ok = False
        if l < L - 1:
            h = hs[zo:zo + nout]
            for j in range(nout):
                h[j] = _activate(z[j], act)
    return ok


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
    for i in range(x.shape[0]):
        s += x[i] * w[i]
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


@jit(inline="always")
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
def grad_fits(x, sizes, b_off, u_off, hs, ds, tmp):
    """True when no entry of the sample's gradient can have overflowed the dtype of ``tmp``.

    Layer l's gradient is the outer product of its input ``a`` (and 1 for the bias) and its
    delta, so every entry is at most ``max|a| max|delta|`` in magnitude. That bound, taken in
    float64 and rounded once to the dtype, is finite exactly when no rounded product can be
    Inf: a test on the layers' units (a few hundred values), not on the P gradient entries.
    A NaN or Inf anywhere in ``a`` or ``delta`` fails it too.
    """
    L = sizes.shape[0] - 1
    for l in range(L):
        nin = sizes[l]
        nout = sizes[l + 1]
        a = layer_input(l, x, hs, u_off, nin)
        d = ds[u_off[l]:u_off[l] + nout]
        ma = 1.0 if b_off[l] >= 0 else 0.0
        for i in range(nin):
            ma = max(ma, abs(np.float64(a[i])))
        md = 0.0
        for j in range(nout):
            md = max(md, abs(np.float64(d[j])))
        tmp[0] = ma * md
        if not (math.isfinite(tmp[0]) and ma < np.inf and md < np.inf):
            return False
    return True


@jit(inline="always")
def backward(params, x, sizes, w_off, b_off, u_off, act, zs, hs, ds, g, mode):
    """Backward pass of one sample whose output delta is already in ``ds``.

    ``mode`` MODE_WRITE stores the gradient into ``g`` (length P),
    MODE_ADD adds it, MODE_NORM writes nothing and returns the squared L2 norm of the
    gradient, layer by layer as (|a|^2 + 1) |delta|^2: the norm of an outer product
    is the product of the norms, so the per-sample gradient is never formed.
    MODE_NONE returns at once (loss only).
    Returns the squared norm in MODE_NORM and 0.0 otherwise.
    """
    if mode == MODE_NONE:
        return 0.0
    L = sizes.shape[0] - 1
    sq = 0.0
    for l in range(L - 1, -1, -1):
        nin = sizes[l]
        nout = sizes[l + 1]
        wo = w_off[l]
        bo = b_off[l]
        a = layer_input(l, x, hs, u_off, nin)
        dl = ds[u_off[l]:u_off[l] + nout]
        if mode == MODE_NORM:
            # Squares in float64: |a|^2 of a float32 row overflows from |a_i| ~ 1e19 on,
            # while the norm itself (|a| |delta|) may still be representable.
            na = 1.0 if bo >= 0 else 0.0
            for i in range(nin):
                na += np.float64(a[i]) * a[i]
            nd = 0.0
            for j in range(nout):
                nd += np.float64(dl[j]) * dl[j]
            sq += na * nd
        elif nout == 1:
            d0 = dl[0]
            gw = g[wo:wo + nin]
            if mode == MODE_WRITE:
                for i in range(nin):
                    gw[i] = a[i] * d0
                if bo >= 0:
                    g[bo] = d0
            else:
                for i in range(nin):
                    gw[i] += a[i] * d0
                if bo >= 0:
                    g[bo] += d0
        else:
            for i in range(nin):
                ai = a[i]
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
        if l > 0:
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
def sample_grad(params, x, yc, yr, r, sizes, w_off, b_off, u_off, act, loss, hdelta,
                zs, hs, ds, g, scale, mode, want_loss):
    """Forward, loss and backward for row ``r``.

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
    lv = loss_and_delta(f, dout, loss, hdelta, yc, yr, r, want_loss)
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
