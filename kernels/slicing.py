"""Layers ``[lo, hi)`` of a model run alone: the depth slices of split learning.

A slice reads its input where the model's input would be (``_model``'s layer-range seam):
the model's rows for ``lo = 0`` (dense or sparse), the activations at the cut otherwise.
Each row goes through ``forward_range`` and ``backward_range``, the same linked code that
``decision`` (``predict``) and the per-row gradients run, so a slice computes what the
whole model computes for those layers, operation for operation:

* forward: the activations leaving layer ``hi - 1`` (after the hidden activation), or the
  model's raw outputs when ``hi = L``. ``[0, c)`` then ``[c, L)`` is ``decision``'s pass
  split in two, bit for bit.
* backward: given ``G``, the loss's gradient with respect to the slice's outputs (the
  output deltas when ``hi = L``), the slice's parameter gradient and ``G_in``, the
  gradient with respect to its input: ``G_in[i] = sum_j W_lo[i, j] delta_lo[j]``, the dot
  product the whole model's backward pass takes before multiplying by the activation's
  derivative, in the same order; the layer below applies that derivative itself, so a
  gradient crossing the cut is the unsplit pass's value, bit for bit.

Rows are split into tasks by the problem size only, per-task partial sums are merged in
task order by the caller: the same bits on any number of threads.
"""

import math

import numpy as np
from numba import prange

from ._input import block_like, block_set, input_row, n_rows
from ._jit import jit
from ._layers import _block, batch_backward, batch_forward, batch_weight_grads
from ._layout import Layout
from ._model import (
    MODE_ADD,
    MODE_WRITE,
    _act_deriv,
    backward_range,
    forward_range,
    loss_and_delta,
    workspace,
)
from ._rng import hash2
from ._rng import shuffle as shuffle_inplace
from .gradients import ROW_WORK_MIN_SIZE, ROWS_PER_TASK, first_flagged
from .training import PATH_BATCHED, PATH_DP, PATH_LINEAR1, PATH_SAMPLE, _sgd_clients


@jit(parallel=True, min_size=ROW_WORK_MIN_SIZE)
def slice_forward(params, A, lo, hi, spec, out):
    """``out[r]`` = the outputs of layers ``[lo, hi)`` for input row ``r`` of ``A``; returns
    the first row whose outputs are not finite, or -1."""
    sizes, w_off, b_off, u_off, act, _, _ = spec
    n = n_rows(A)
    L = sizes.shape[0] - 1
    base = u_off[hi - 1]
    k = sizes[hi]
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    bad = np.empty(n_tasks, np.int64)
    for t in prange(n_tasks):
        zs, hs, _ = workspace(u_off, params)
        first_bad = -1
        for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):
            ok = forward_range(params, input_row(A, r), lo, hi, sizes, w_off, b_off, u_off,
                               act, zs, hs)
            src = hs if hi < L else zs
            for j in range(k):
                v = src[base + j]
                out[r, j] = v
                ok = ok and math.isfinite(v)
            if not ok and first_bad < 0:
                first_bad = r
        bad[t] = first_bad
    return first_flagged(bad)


@jit(parallel=True, min_size=ROW_WORK_MIN_SIZE)
def slice_backward(params, A, G, lo, hi, spec, per_sample, G_in, out):
    """The backward pass of layers ``[lo, hi)``: ``G[r]`` is row r's gradient with respect
    to the slice's outputs. ``per_sample``: ``out[r]`` is row r's parameter gradient of the
    slice (its ``P_slice`` coordinates); otherwise ``out[t]`` is the sum over task t's rows,
    added in row order in the parameters' dtype. ``G_in[r]`` (when ``lo > 0``; else an
    empty array) is the gradient with respect to the slice's input row. Returns the first
    row whose forward pass or gradient is not finite, or -1."""
    sizes, w_off, b_off, u_off, act, _, _ = spec
    n = n_rows(A)
    L = sizes.shape[0] - 1
    p0 = w_off[lo]
    P = params.shape[0]
    dbase = u_off[hi - 1]
    k = sizes[hi]
    nin = sizes[lo]
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    bad = np.empty(n_tasks, np.int64)
    for t in prange(n_tasks):
        zs, hs, ds = workspace(u_off, params)
        g = np.zeros(P, params.dtype)
        first_bad = -1
        for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):
            x = input_row(A, r)
            ok = forward_range(params, x, lo, hi, sizes, w_off, b_off, u_off, act, zs, hs)
            for j in range(k):
                gj = G[r, j]
                ok = ok and math.isfinite(gj)
                if hi < L:
                    # the slice's outputs are activations: delta = G * act'(z)
                    ds[dbase + j] = gj * _act_deriv(zs[dbase + j], hs[dbase + j], act)
                else:
                    ds[dbase + j] = gj
            mode = np.int64(MODE_WRITE if per_sample else MODE_ADD)
            backward_range(params, x, lo, hi, sizes, w_off, b_off, u_off, act, zs, hs, ds, g,
                           mode)
            if per_sample:
                o = out[r]
                for j in range(o.shape[0]):
                    o[j] = g[p0 + j]
                    ok = ok and math.isfinite(g[p0 + j])
            if G_in.shape[0] > 0:
                gi = G_in[r]
                _row_cut_gradient(params, w_off, sizes, u_off, lo, ds, gi)
                for i in range(nin):
                    ok = ok and math.isfinite(gi[i])
            if not ok and first_bad < 0:
                first_bad = r
        if not per_sample:
            o = out[t]
            for j in range(o.shape[0]):
                o[j] = g[p0 + j]
        bad[t] = first_bad
    return first_flagged(bad)


@jit(parallel=True, min_size=ROW_WORK_MIN_SIZE)
def output_deltas(F, yc, yr, spec, out):
    """``out[r]`` = the derivative of row r's loss with respect to its raw outputs ``F[r]``
    (the loss head of ``sample_grad``); returns the mean loss (float64, task sums merged in
    order) and the first row whose loss is not finite, or -1."""
    _, _, _, _, _, loss, hdelta = spec
    n = F.shape[0]
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    bad = np.empty(n_tasks, np.int64)
    sums = np.empty(n_tasks, np.float64)
    for t in prange(n_tasks):
        first_bad = -1
        s = 0.0
        for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):
            lv = loss_and_delta(F[r], out[r], loss, hdelta, yc, yr, r, np.bool_(True))
            s += lv
            if not math.isfinite(lv) and first_bad < 0:
                first_bad = r
        sums[t] = s
        bad[t] = first_bad
    total = 0.0
    for t in range(n_tasks):
        total += sums[t]
    return total / n, first_flagged(bad)


# ----------------------------------------------------------------------------- training
#
# One mini-batch of split training, a slice at a time. Each party holds its own block of
# the parameters (``params`` below is that block, ``spec`` the model's layout with the
# block's offsets: ``fastmb.slicing.split`` builds it) and computes with the very code the
# unsplit training kernel runs for those layers: ``batched`` the matrix products of
# ``_layers`` (``sgd``'s path from batch 8), otherwise row by row (``forward_range``,
# ``backward_range``). A slice's input block is ``X``'s rows ``rows`` (the model's input
# for the first slice, the activations received at a cut for the others). A party keeps
# nothing between its forward and its backward call: the backward call runs the slice's
# forward pass again (activation recomputation), which gives the same bits.


@jit
def _rows_block(X, rows, like):
    A0 = block_like(X, rows.shape[0], like)
    for s in range(rows.shape[0]):
        block_set(A0, s, X, rows[s])
    return A0


@jit
def _buffers(u_off, b, like):
    n = b * u_off[u_off.shape[0] - 1]
    return (np.empty(n, like.dtype), np.empty(n, like.dtype), np.empty(n, like.dtype))


@jit
def _cut_gradient(params, w_off, sizes, lo, D, G_in):
    """``G_in = D W_lo^T``: the gradient leaving the slice at its input, the product the
    unsplit backward pass takes before the activation's derivative (same call, same bits)."""
    nin = sizes[lo]
    nout = sizes[lo + 1]
    W = params[w_off[lo]:w_off[lo] + nin * nout].reshape((nin, nout))
    np.dot(D, W.T, G_in)


@jit
def _batch_cut_gradient(params, w_off, sizes, u_off, lo, Db, b, G_in):
    """:func:`_cut_gradient` of a batch's deltas at layer ``lo``, when ``G_in`` has rows."""
    if G_in.shape[0] > 0:
        _cut_gradient(params, w_off, sizes, lo, _block(Db, b, u_off[lo], u_off[lo + 1]), G_in)


@jit
def _clear_unless(g, accumulate):
    if not accumulate:
        for j in range(g.shape[0]):
            g[j] = 0


@jit
def _row_cut_gradient(params, w_off, sizes, u_off, lo, ds, gi):
    """One row's gradient at the input of layer ``lo``: delta_lo's dot products with the
    rows of W_lo, in ``backward_range``'s order (before the activation's derivative)."""
    nin = sizes[lo]
    nout = sizes[lo + 1]
    W = params[w_off[lo]:w_off[lo] + nin * nout]
    dl = ds[u_off[lo]:u_off[lo] + nout]
    for i in range(nin):
        row = W[i * nout:(i + 1) * nout]
        s = row[0] * dl[0]
        for j in range(1, nout):
            s += row[j] * dl[j]
        gi[i] = s


@jit
def step_forward(params, spec, X, rows, lo, hi, batched, out):
    """``out`` (b, sizes[hi]) = the outputs of layers ``[lo, hi)`` for the rows ``rows`` of
    ``X``; returns the first flagged row of ``rows`` (a non-finite first layer), or -1."""
    sizes, w_off, b_off, u_off, act, _, _ = spec
    L = sizes.shape[0] - 1
    b = rows.shape[0]
    bad = -1
    if batched:
        A0 = _rows_block(X, rows, params)
        Zb, Hb, _ = _buffers(u_off, b, params)
        bad = batch_forward(params, A0, rows, lo, hi, sizes, w_off, b_off, u_off, act, Zb, Hb)
        src = _block(Hb if hi < L else Zb, b, u_off[hi - 1], u_off[hi])
        for i in range(b):
            for j in range(sizes[hi]):
                out[i, j] = src[i, j]
        return bad
    zs, hs, _ = workspace(u_off, params)
    base = u_off[hi - 1]
    for s in range(b):
        ok = forward_range(params, input_row(X, rows[s]), lo, hi, sizes, w_off, b_off, u_off,
                           act, zs, hs)
        src = hs if hi < L else zs
        for j in range(sizes[hi]):
            out[s, j] = src[base + j]
        if not ok and bad < 0:
            bad = rows[s]
    return bad


@jit
def step_backward(params, spec, X, rows, lo, hi, batched, G_out, g, G_in, accumulate):
    """The backward pass of layers ``[lo, hi)`` for one mini-batch, given ``G_out`` (b,
    sizes[hi]), the gradient with respect to the slice's outputs (activations: ``hi < L``):
    the block's summed gradient into ``g`` and, when ``G_in`` has rows, the gradient at the
    slice's input. Returns the first flagged row, or -1. ``g`` is overwritten, except on
    the per-row path with ``accumulate``: the rows are then added to what ``g`` holds (a
    mini-batch's later micro-batches, in the unsplit kernel's row order)."""
    sizes, w_off, b_off, u_off, act, _, _ = spec
    b = rows.shape[0]
    bad = -1
    if batched:
        A0 = _rows_block(X, rows, params)
        Zb, Hb, Db = _buffers(u_off, b, params)
        bad = batch_forward(params, A0, rows, lo, hi, sizes, w_off, b_off, u_off, act, Zb, Hb)
        D = _block(Db, b, u_off[hi - 1], u_off[hi])
        Z = _block(Zb, b, u_off[hi - 1], u_off[hi])
        H = _block(Hb, b, u_off[hi - 1], u_off[hi])
        for i in range(b):
            for j in range(sizes[hi]):
                D[i, j] = G_out[i, j] * _act_deriv(Z[i, j], H[i, j], act)
        batch_backward(params, lo, hi, sizes, w_off, u_off, act, Zb, Hb, Db, b)
        batch_weight_grads(A0, lo, hi, sizes, w_off, b_off, u_off, Hb, Db, g)
        _batch_cut_gradient(params, w_off, sizes, u_off, lo, Db, b, G_in)
        return bad
    _clear_unless(g, accumulate)
    zs, hs, ds = workspace(u_off, params)
    base = u_off[hi - 1]
    for s in range(b):
        x = input_row(X, rows[s])
        ok = forward_range(params, x, lo, hi, sizes, w_off, b_off, u_off, act, zs, hs)
        for j in range(sizes[hi]):
            ds[base + j] = G_out[s, j] * _act_deriv(zs[base + j], hs[base + j], act)
        backward_range(params, x, lo, hi, sizes, w_off, b_off, u_off, act, zs, hs, ds, g,
                       np.int64(MODE_ADD))
        if G_in.shape[0] > 0:
            _row_cut_gradient(params, w_off, sizes, u_off, lo, ds, G_in[s])
        if not ok and bad < 0:
            bad = rows[s]
    return bad


@jit
def step_top(params, spec, X, rows, labels, yc, yr, lo, batched, g, G_in, accumulate):
    """The top slice ``[lo, L)`` with the loss: forward, the loss head on the labels of rows
    ``labels``, backward; the block's summed gradient into ``g`` (as in
    :func:`step_backward`, ``accumulate`` adds on the per-row path) and the gradient at the
    slice's input into ``G_in`` (when it has rows). Returns the first flagged row of
    ``labels`` (outputs or loss not finite), or -1."""
    sizes, w_off, b_off, u_off, act, loss, hdelta = spec
    L = sizes.shape[0] - 1
    b = rows.shape[0]
    bad = -1
    if batched:
        A0 = _rows_block(X, rows, params)
        Zb, Hb, Db = _buffers(u_off, b, params)
        first = batch_forward(params, A0, rows, lo, L, sizes, w_off, b_off, u_off, act, Zb,
                              Hb)
        F = _block(Zb, b, u_off[L - 1], u_off[L])
        DL = _block(Db, b, u_off[L - 1], u_off[L])
        for i in range(b):
            lv = loss_and_delta(F[i], DL[i], loss, hdelta, yc, yr, labels[i], np.bool_(False))
            ok = math.isfinite(lv)
            for j in range(F.shape[1]):
                ok = ok and math.isfinite(F[i, j]) and math.isfinite(DL[i, j])
            if (not ok or (first >= 0 and rows[i] == first)) and bad < 0:
                bad = labels[i]
        if bad >= 0:
            return bad
        batch_backward(params, lo, L, sizes, w_off, u_off, act, Zb, Hb, Db, b)
        batch_weight_grads(A0, lo, L, sizes, w_off, b_off, u_off, Hb, Db, g)
        _batch_cut_gradient(params, w_off, sizes, u_off, lo, Db, b, G_in)
        return -1
    _clear_unless(g, accumulate)
    zs, hs, ds = workspace(u_off, params)
    lo_out = u_off[L - 1]
    for s in range(b):
        x = input_row(X, rows[s])
        ok = forward_range(params, x, lo, L, sizes, w_off, b_off, u_off, act, zs, hs)
        f = zs[lo_out:u_off[L]]
        dout = ds[lo_out:u_off[L]]
        lv = loss_and_delta(f, dout, loss, hdelta, yc, yr, labels[s], np.bool_(False))
        ok = ok and math.isfinite(lv)
        for j in range(f.shape[0]):
            ok = ok and math.isfinite(f[j])
        if not ok:
            return labels[s]
        backward_range(params, x, lo, L, sizes, w_off, b_off, u_off, act, zs, hs, ds, g,
                       np.int64(MODE_ADD))
        if G_in.shape[0] > 0:
            _row_cut_gradient(params, w_off, sizes, u_off, lo, ds, G_in[s])
    return bad


@jit
def epoch_order(n, key, e, shuffle, perm):
    """Epoch ``e``'s row order for the stream ``key``: ``sgd``'s permutation."""
    for j in range(n):
        perm[j] = j
    if shuffle:
        shuffle_inplace(perm, hash2(key, e))


@jit(inline="always")
def _width_clients(path, P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends, keys,
                   epochs, max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad, order,
                   o_lo, o_hi):
    """``_sgd_clients`` for clients of different widths in one call: client ``k`` trains
    the sub-model ``rate_of[k]`` = r, whose layout is row r of the arrays of ``stack`` =
    ``(sizes, w_off, b_off, u_off, act, loss, hdelta)`` (a :class:`Layout` whose arrays
    have a row per sub-model; the activation, loss and Huber threshold are the full
    model's) from ``P0[p0_off[r]:p0_off[r + 1]]`` into ``out[out_off[k]:out_off[k + 1]]``,
    its optimizer state in ``V[v_off[k]:v_off[k + 1]]`` (empty: none carried).

    Each client is the training kernel's own loop for one client (``_sgd_clients`` with a
    one-client order), its layout built here as the same :class:`Layout` record Python
    passes, so it runs the linked helpers ``train_clients`` runs on that sub-model and gets
    its bits: a client trains the same values in a call of one width or of many.
    """
    # (the stacked layout is one argument: a call of 30 or more arguments compiles to a
    # call with *args, which Numba cannot inline)
    sizes, w_off, b_off, u_off, act, loss, hdelta = stack
    one = np.zeros(1, np.int64)
    for i in range(o_lo, o_hi):
        k = order[i]
        r = rate_of[k]
        spec = Layout(sizes[r], w_off[r], b_off[r], u_off[r], act, loss, hdelta)
        P = p0_off[r + 1] - p0_off[r]
        n_state = v_off[k + 1] - v_off[k]
        _sgd_clients(path, P0[p0_off[r]:p0_off[r + 1]], X, yc, yr, sw, spec, idx,
                     starts[k:k + 1], ends[k:k + 1], keys[k:k + 1], epochs[k:k + 1],
                     max_steps[k:k + 1], e_lo, e_hi, opts,
                     out[out_off[k]:out_off[k + 1]].reshape((1, P)),
                     V[v_off[k]:v_off[k + 1]].reshape((1, n_state)), bad[k:k + 1], one,
                     0, 1)


@jit
def width_sample(P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends, keys, epochs,
                 max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad, order, o_lo, o_hi):
    """``_width_clients``, each mini-batch's gradient summed sample by sample."""
    _width_clients(PATH_SAMPLE, P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends, keys,
                   epochs, max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad, order,
                   o_lo, o_hi)


@jit
def width_linear1(P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends, keys, epochs,
                  max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad, order, o_lo, o_hi):
    """``_width_clients`` for a one-layer, one-output model (every width is the model)."""
    _width_clients(PATH_LINEAR1, P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends,
                   keys, epochs, max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad,
                   order, o_lo, o_hi)


@jit
def width_batched(P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends, keys, epochs,
                  max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad, order, o_lo, o_hi):
    """``_width_clients``, each mini-batch's gradient from matrix products."""
    _width_clients(PATH_BATCHED, P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends,
                   keys, epochs, max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad,
                   order, o_lo, o_hi)


@jit
def width_dp(P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends, keys, epochs,
             max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad, order, o_lo, o_hi):
    """``_width_clients`` for DP-SGD: clipped per-sample gradients, plus noise."""
    _width_clients(PATH_DP, P0, p0_off, X, yc, yr, sw, stack, rate_of, idx, starts, ends, keys,
                   epochs, max_steps, e_lo, e_hi, opts, out, out_off, V, v_off, bad, order,
                   o_lo, o_hi)


#: The width kernel of each path, indexed by ``training.PATH_*``.
WIDTH = (width_sample, width_linear1, width_batched, width_dp)


@jit
def width_scatter(sums, weights, U, u_off, maps, m_off, which, w):
    """Add clients' sub-model updates into the full model's running sums: client ``i``'s
    update ``U[u_off[i]:u_off[i + 1]]`` through its index map ``maps[m_off[s]:m_off[s +
    1]]`` (``s = which[i]``, one map per distinct slice), weighted by ``w[i]``:
    ``sums[map[j]] += w[i] * U[j]``, ``weights[map[j]] += w[i]``.

    float64 sums (``sums``, ``weights``), clients added in order, so a parameter's sum is
    the same whatever the other clients hold. Serial: a slice's positions are distinct but
    two clients' overlap, so threads would race on the shared entries; at a round's size
    (20 clients of a few thousand parameters) the whole scatter takes about 0.1 ms.
    """
    for i in range(which.shape[0]):
        s = which[i]
        m = maps[m_off[s]:m_off[s + 1]]
        u = U[u_off[i]:u_off[i + 1]]
        wi = w[i]
        for j in range(m.shape[0]):
            sums[m[j]] += wi * np.float64(u[j])
            weights[m[j]] += wi
