"""Local mini-batch SGD of a run of clients, one after the other, compiled once per way of
computing a mini-batch's gradient: ``sgd_sample`` (sample by sample), ``sgd_linear1`` (a
one-output linear model, without per-sample views), ``sgd_batched`` (layer by layer with
matrix products) and ``sgd_dp`` (the same, clipped and noised: DP-SGD). Clients run in
parallel on the host's threads (``fastmb.learn.training.run_threads``).

The loop over epochs and mini-batches runs here, in compiled code. A mini-batch's
gradient is the weighted mean of its samples' gradients, summed in the parameters'
dtype (at most ``batch`` terms). The update, with all options on, is::

    g = g + l2 * W / sum(w)         (l2: the weights only, not the biases; scikit-learn's
                                     MLP alpha, a penalty of the batch's summed loss)
    d = g + weight_decay * p + prox_mu * (p - p0)
    v = momentum * v + d            (v starts at 0; skipped when momentum == 0)
    p = p - lr_t * v                (nesterov: p = p - lr_t * (d + momentum * v))

or with Adam (Kingma and Ba 2015, in scikit-learn's form: the bias corrections fold into
the step size, and ``eps`` is added to the uncorrected root)::

    m = beta1 * m + (1 - beta1) * d          (m, s start at 0; t counts steps from 1)
    s = beta2 * s + (1 - beta2) * d * d
    p = p - lr_t * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(s) + eps)

``lr_t`` follows the schedule: 0 constant, 1 inverse scaling ``lr / (t + 1)**power_t``,
2 cosine ``lr * (1 + cos(pi * t / T)) / 2`` over the T steps of the run.

Shuffling uses the counter-based generator of ``_rng``: client k's epoch e is
shuffled with key ``hash2(hash2(seed, k), e)``, so clients are independent of which
thread trains them.

DP-SGD (Abadi et al. 2016) replaces ``g`` by ``(sum_i clip(g_i, C) + N(0, (zC)^2 I)) / b``
for a batch of b rows: each per-sample gradient is clipped to L2 norm ``C`` before the
sum and Gaussian noise of standard deviation ``noise_std = z C`` is added to the sum.
It runs on the batched path (``_layers.batch_grad``), which gets the per-sample norms
from the layer activations and deltas and folds the clip factors into one matrix
product per layer. Step t's noise is drawn with key ``hash2(client key ^ NOISE_TAG, t)``.
"""

import math

import numpy as np

from ._input import (
    block_head,
    block_like,
    block_set,
    input_overload,
    input_row,
    is_sparse,
    n_cols,
    prefetch_row,
    row_col,
    row_nnz,
    sparse_type,
)
from ._jit import jit
from ._layers import batch_grad
from ._model import input_axpy, linear1_delta, sample_grad_add, workspace
from ._rng import add_normal, hash2
from ._rng import shuffle as shuffle_inplace

SCHED_CONSTANT, SCHED_INVSCALING, SCHED_COSINE = 0, 1, 2
# Separates the noise stream from the shuffling stream that uses the same client key.
NOISE_TAG = np.uint64(0xD1B54A32D192ED03)


@jit(fastmath=False)
def lr_at(lr_schedule, lr, power_t, t, total):
    """The learning rate of step ``t`` of ``total`` under the schedule (module docstring).

    IEEE arithmetic (no fastmath) in a linked function, as :func:`apply_update`: the step's
    values then do not depend on the code around the call (split learning calls these two
    from each party and gets the unsplit kernel's bits)."""
    if lr_schedule == SCHED_INVSCALING:
        return lr / (t + 1.0) ** power_t
    if lr_schedule == SCHED_COSINE:
        return lr * 0.5 * (1.0 + math.cos(math.pi * t / total))
    return lr


# The ways a mini-batch's gradient is computed; each is its own kernel. PATH_DP is
# PATH_BATCHED with DP-SGD's noise (the Gaussian sampler compiles only there).
PATH_SAMPLE, PATH_LINEAR1, PATH_BATCHED, PATH_DP = 0, 1, 2, 3
PREFETCH_ROWS = 8   # how far ahead the one-output linear path prefetches rows


@jit
def linear1_batch(p, g, X, yc, yr, sw, idx, perm, lo, b_lo, b_hi, zs, loss, hdelta, scattered):
    """One mini-batch of a one-layer, one-output model: ``g += w_r delta_r [x_r, 1]`` over
    rows ``perm[b_lo:b_hi]`` (offset by ``lo``, through ``idx`` when it is not empty), with
    no views per row. Returns (sum of the weights, -1) or (_, the first row whose loss was
    not finite).

    Row s + PREFETCH_ROWS is prefetched while row s is computed when ``scattered`` (rows
    read out of order: a shuffle or a partition's index), so that a shuffled epoch's cache
    misses overlap with work instead of stalling it (measured: 8 rows ahead is best here).

    Linked, not inlined, like ``sample_batch``: the kernels of the other paths never
    inline this code (Numba inlines a helper into every branch before it prunes the
    branches a constant ``path`` rules out; that cost 1.9 s of a cold ``sgd_batched``).
    """
    n = perm.shape[0]
    nf = n_cols(X)
    has_b = p.shape[0] > nf  # the one layer's bias (P is nf or nf + 1)
    has_w = sw.shape[0] > 0
    has_idx = idx.shape[0] > 0
    pw = p[:nf]
    gw = g[:nf]
    z0 = p[nf] if has_b else 0.0
    wsum = 0.0
    for s in range(b_lo, b_hi):
        if scattered and s + PREFETCH_ROWS < n:
            r = lo + perm[s + PREFETCH_ROWS]
            prefetch_row(X, idx[r] if has_idx else r)
        r = lo + perm[s]
        if has_idx:
            r = idx[r]
        w = sw[r] if has_w else 1.0
        x = input_row(X, r)
        dl, ok = linear1_delta(x, pw, z0, zs, loss, hdelta, yc, yr, r, w)
        if not ok:
            return wsum, r
        input_axpy(x, dl, gw)
        if has_b:
            g[nf] += dl
        wsum += w
    return wsum, -1


@jit
def _sparse_update(p, g, step, X, idx, perm, lo, b_lo, b_hi, w0, w0_end, nout0):
    """``p -= step * g`` where a sparse mini-batch's gradient can be non-zero (every
    coordinate outside the first layer's weights ``w0:w0_end``, and the weight rows of the
    columns its rows store), zeroing ``g`` there again. A column stored by several rows is
    updated at its first visit; later visits subtract ``step * 0``."""
    has_idx = idx.shape[0] > 0
    for j in range(w0):
        p[j] -= step * g[j]
        g[j] = 0
    for j in range(w0_end, p.shape[0]):
        p[j] -= step * g[j]
        g[j] = 0
    for s in range(b_lo, b_hi):
        r = lo + perm[s]
        if has_idx:
            r = idx[r]
        x = input_row(X, r)
        for k in range(row_nnz(x)):
            o = w0 + row_col(x, k) * nout0
            for j in range(o, o + nout0):
                p[j] -= step * g[j]
                g[j] = 0


def sparse_update(p, g, step, X, idx, perm, lo, b_lo, b_hi, w0, w0_end, nout0):
    """:func:`_sparse_update` for sparse rows; nothing for a dense X (that branch never
    runs, and this way a dense kernel does not compile it)."""
    raise NotImplementedError("runs inside Numba kernels only")


@input_overload(sparse_update)
def _sparse_update_for(p, g, step, X, idx, perm, lo, b_lo, b_hi, w0, w0_end, nout0):
    if sparse_type(X):
        def impl(p, g, step, X, idx, perm, lo, b_lo, b_hi, w0, w0_end, nout0):
            _sparse_update(p, g, step, X, idx, perm, lo, b_lo, b_hi, w0, w0_end, nout0)
        return impl
    return lambda p, g, step, X, idx, perm, lo, b_lo, b_hi, w0, w0_end, nout0: None


@jit
def sample_batch(p, g, X, yc, yr, sw, spec, idx, perm, lo, b_lo, b_hi, zs, hs, ds):
    """One mini-batch summed sample by sample (``sample_grad_add``) into ``g``; returns
    (sum of the weights, -1) or (_, the first row whose forward pass or loss was not
    finite). Linked, not inlined (see ``linear1_batch``)."""
    sizes, w_off, b_off, u_off, act, loss, hdelta = spec
    has_w = sw.shape[0] > 0
    has_idx = idx.shape[0] > 0
    wsum = 0.0
    for s in range(b_lo, b_hi):
        r = lo + perm[s]
        if has_idx:
            r = idx[r]
        w = sw[r] if has_w else 1.0
        _, _, ok = sample_grad_add(p, input_row(X, r), yc, yr, r, sizes, w_off, b_off, u_off,
                                   act, loss, hdelta, zs, hs, ds, g, w)
        if not ok:
            return wsum, r
        wsum += w
    return wsum, -1


@jit(fastmath=False)
def apply_update(p, g, v, params0, j0, j1, l0, l1, sizes, w_off, inv, lr_t, t, opts):
    """The optimizer's step on coordinates ``j0:j1`` of ``p`` (the weights of layers
    ``l0:l1`` for the ``l2`` term), from the mini-batch's summed gradient ``g`` and its
    weight's reciprocal ``inv``, at step ``t`` with learning rate ``lr_t`` (module
    docstring). ``v`` is the optimizer's state over the whole vector (momentum ``(P,)``,
    Adam's moments ``(2P,)``, or empty).

    Every coordinate's update reads that coordinate only, so a model's parameters can be
    updated in blocks: split learning steps a client's layers and a server's layers apart
    with this same code, and gets the unsplit step's bits. Compiled without fastmath:
    with reassociation and contraction allowed, LLVM grouped ``g * inv + wd * p + mu *
    (p - p0)`` differently in different callers (one ulp in float64); in IEEE order the
    values are the same wherever it is called, or inlined. The loops are elementwise and
    still vectorize.
    """
    (_, _, _, _, _, momentum, weight_decay, prox_mu, _, _, _, nesterov, l2, use_adam, beta1,
     beta2, eps, _) = opts
    P = p.shape[0]
    if l2 != 0.0:
        for l in range(l0, l1):
            for j in range(w_off[l], w_off[l] + sizes[l] * sizes[l + 1]):
                g[j] += l2 * p[j]
    if use_adam:
        t1 = t + 1.0
        a = lr_t * math.sqrt(1.0 - beta2 ** t1) / (1.0 - beta1 ** t1)
        m = v[:P]
        s2 = v[P:]
        for j in range(j0, j1):
            d = g[j] * inv + weight_decay * p[j] + prox_mu * (p[j] - params0[j])
            m[j] = beta1 * m[j] + (1.0 - beta1) * d
            s2[j] = beta2 * s2[j] + (1.0 - beta2) * d * d
            p[j] -= a * m[j] / (math.sqrt(s2[j]) + eps)
    elif momentum != 0.0:
        for j in range(j0, j1):
            d = g[j] * inv + weight_decay * p[j] + prox_mu * (p[j] - params0[j])
            v[j] = momentum * v[j] + d
            if nesterov:
                p[j] -= lr_t * (d + momentum * v[j])
            else:
                p[j] -= lr_t * v[j]
    elif weight_decay != 0.0 or prox_mu != 0.0:
        for j in range(j0, j1):
            d = g[j] * inv + weight_decay * p[j] + prox_mu * (p[j] - params0[j])
            p[j] -= lr_t * d
    else:
        step = lr_t * inv
        for j in range(j0, j1):
            p[j] -= step * g[j]


@jit(inline="always")
def _sgd_clients(path, params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs, max_steps,
                 e_lo, e_hi, opts, out, V, bad, order, o_lo, o_hi):
    """Clients ``order[o_lo:o_hi]`` one after the other, each from ``params0``: client k
    trains rows ``starts[k]:ends[k]`` with stream ``keys[k]`` into ``out[k]`` (momentum
    row ``V[k]``), epochs ``e_lo:e_hi`` of its ``epochs[k]``; ``bad[k]`` gets -1, or the
    first row whose forward pass or loss was not finite (a bad input row, or parameters
    that diverged). A client already flagged (``bad[k] >= 0``, in an earlier chunk of
    epochs) stops where it is. One call trains several small clients: a call from Python
    costs about 20 us, more than a small client's whole training.

    With a non-empty ``idx`` the rows are ``idx[lo:hi]`` (a partition's permutation, read
    in place: no copy of the client's rows). ``max_steps[k] >= 0`` stops after that many
    mini-batch steps (a straggler); the learning-rate schedule still spans the planned
    epochs so that a straggler's first steps equal a full client's.

    Only epochs ``e_lo:e_hi`` run in this call, so that a long training returns to Python
    between chunks (Ctrl-C stops it) without changing a bit: the state carried from one
    chunk to the next is exactly ``out[k]``, the momentum ``V[k]`` and the step count,
    which is ``e_lo`` times the batches per epoch (each epoch reshuffles from the
    identity, with its own key). ``e_lo == 0`` starts from ``params0`` with zero momentum.
    ``V`` holds the optimizer's state rows when the training is split into chunks (momentum
    ``(P,)``, Adam's moments ``(2P,)``); rows of any other length mean "allocate one here"
    (a training done in one call).

    ``spec`` is the model's layout and ``opts`` the training options, both small typed
    records (``fastmb.models.Layout``, ``fastmb.learn.options.TrainRecord``). ``path`` is a
    compile-time constant (one of ``PATH_*``): a kernel holds the code of one path only,
    which roughly halves what a first call compiles. ``PATH_BATCHED`` computes each
    mini-batch's gradient layer by layer with matrix products (required for
    ``clip < inf``), ``PATH_DP`` the same and adds DP-SGD's noise; the others go sample
    by sample, in linked (not inlined) helpers.

    The client loop is in this function rather than in a caller that inlines a
    one-client function: Numba's inliner deep-copies the inlined IR block by block, its
    whole scope with every block (quadratic in the function's size), so each level of
    inlining of this large body cost about a second of a cold compile.
    """
    sizes, w_off, _, u_off, _, loss, hdelta = spec
    (batch, lr_schedule, shuffle, lr, power_t, momentum, weight_decay, prox_mu, _, clip,
     noise_std, _, l2, use_adam, _, _, _, step0) = opts
    P = params0.shape[0]
    has_w = sw.shape[0] > 0
    has_idx = idx.shape[0] > 0
    scattered = shuffle or has_idx   # rows read out of order: prefetch them
    use_mom = momentum != 0.0
    n_state = 2 * P if use_adam else (P if use_mom else 0)
    # A sparse input's plain step touches only the first layer's weight rows of the batch's
    # columns (and the other layers, which do not scale with n_features): the gradient is
    # kept zero between steps and the update visits those rows alone, so a step costs the
    # batch's stored entries, not n_features. The updated values are the dense step's
    # bits (an untouched coordinate would only subtract step * 0). Momentum, weight decay,
    # a proximal term and DP noise change every coordinate at every step: those run the
    # dense update.
    sparse_step = (is_sparse(X) and n_state == 0 and weight_decay == 0.0 and prox_mu == 0.0
                   and l2 == 0.0 and path != PATH_DP)
    n_layers = sizes.shape[0] - 1
    w0 = w_off[0]
    nout0 = sizes[1]
    w0_end = w0 + n_cols(X) * nout0
    for i in range(o_lo, o_hi):
        k = order[i]
        if bad[k] >= 0:
            continue
        lo = starts[k]
        n = ends[k] - lo
        key = keys[k]
        ms = max_steps[k]
        p = out[k]
        v = V[k]
        zs, hs, ds = workspace(u_off, params0)
        g = np.zeros(P, params0.dtype)
        if v.shape[0] != n_state:
            v = np.zeros(n_state, params0.dtype)
        perm = np.arange(n)
        if e_lo == 0:
            for j in range(P):
                p[j] = params0[j]
            for j in range(v.shape[0]):
                v[j] = 0
        if path == PATH_BATCHED or path == PATH_DP:
            bmax = min(batch, n)
            A0 = block_like(X, bmax, params0)
            rows = np.empty(bmax, np.int64)
            scale = np.empty(bmax if has_w else 0, params0.dtype)
            nbuf = bmax * u_off[u_off.shape[0] - 1]
            Zb = np.empty(nbuf, params0.dtype)
            Hb = np.empty(nbuf, params0.dtype)
            Db = np.empty(nbuf, params0.dtype)
            sq = np.empty(bmax, np.float64)
        noise_key = hash2(np.uint64(key) ^ NOISE_TAG, 0)
        n_batches = (n + batch - 1) // batch
        total = max(1, epochs[k] * n_batches)
        ep = epochs[k]
        if ms >= 0:
            ep = min(ep, (ms + n_batches - 1) // n_batches)
        t = e_lo * n_batches + step0
        r = -1
        for e in range(e_lo, min(e_hi, ep)):
            if shuffle:
                for j in range(n):
                    perm[j] = j
                shuffle_inplace(perm, hash2(key, e))
            for b in range(n_batches):
                if t == ms:
                    break
                if not sparse_step:
                    for j in range(P):
                        g[j] = 0
                wsum = 0.0
                b_lo = b * batch
                b_hi = min(n, b_lo + batch)
                if path == PATH_BATCHED or path == PATH_DP:
                    nb = b_hi - b_lo
                    for s in range(nb):
                        row = lo + perm[s + b_lo]
                        if has_idx:
                            row = idx[row]
                        rows[s] = row
                        block_set(A0, s, X, row)
                        w = sw[row] if has_w else 1.0
                        if has_w:
                            scale[s] = w
                        wsum += w
                    r, _ = batch_grad(p, block_head(A0, nb), rows[:nb], yc, yr, spec,
                                      scale[:nb if has_w else 0], clip, Zb, Hb, Db, sq[:nb], g)
                    if path == PATH_DP and noise_std > 0.0 and r < 0:
                        add_normal(g, hash2(noise_key, t), noise_std)
                elif path == PATH_LINEAR1:
                    wsum, r = linear1_batch(p, g, X, yc, yr, sw, idx, perm, lo, b_lo, b_hi,
                                            zs, loss, hdelta, scattered)
                else:
                    wsum, r = sample_batch(p, g, X, yc, yr, sw, spec, idx, perm, lo, b_lo,
                                           b_hi, zs, hs, ds)
                if r >= 0:
                    break
                inv = 1.0 / wsum if wsum > 0 else 0.0
                lr_t = lr_at(lr_schedule, lr, power_t, t, total)
                if sparse_step:
                    sparse_update(p, g, lr_t * inv, X, idx, perm, lo, b_lo, b_hi, w0, w0_end,
                                  nout0)
                else:
                    # (int64 zeros: a literal 0 would compile the helper once more)
                    apply_update(p, g, v, params0, np.int64(0), P, np.int64(0), n_layers,
                                 sizes, w_off, inv, lr_t, t, opts)
                t += 1
            if r >= 0:
                break
        bad[k] = r


@jit
def sgd_sample(params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs, max_steps, e_lo,
               e_hi, opts, out, V, bad, order, o_lo, o_hi):
    """``_sgd_clients`` with each mini-batch's gradient summed sample by sample."""
    _sgd_clients(PATH_SAMPLE, params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs,
                 max_steps, e_lo, e_hi, opts, out, V, bad, order, o_lo, o_hi)


@jit
def sgd_linear1(params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs, max_steps, e_lo,
                e_hi, opts, out, V, bad, order, o_lo, o_hi):
    """``_sgd_clients`` for a one-layer, one-output model: ``g += w_r delta_r [x_r, 1]``."""
    _sgd_clients(PATH_LINEAR1, params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs,
                 max_steps, e_lo, e_hi, opts, out, V, bad, order, o_lo, o_hi)


@jit
def sgd_batched(params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs, max_steps, e_lo,
                e_hi, opts, out, V, bad, order, o_lo, o_hi):
    """``_sgd_clients`` with each mini-batch's gradient from matrix products."""
    _sgd_clients(PATH_BATCHED, params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs,
                 max_steps, e_lo, e_hi, opts, out, V, bad, order, o_lo, o_hi)


@jit
def sgd_dp(params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs, max_steps, e_lo,
           e_hi, opts, out, V, bad, order, o_lo, o_hi):
    """``_sgd_clients`` for DP-SGD: clipped per-sample gradients, plus noise."""
    _sgd_clients(PATH_DP, params0, X, yc, yr, sw, spec, idx, starts, ends, keys, epochs,
                 max_steps, e_lo, e_hi, opts, out, V, bad, order, o_lo, o_hi)


@jit
def client_keys(seed, ids, out):
    """``out[k] = hash2(seed, ids[k])``: each client's stream, for all clients of a call at
    once (from Python, one ``hash2`` call costs more than a client's whole dispatch)."""
    for k in range(ids.shape[0]):
        out[k] = hash2(seed, np.uint64(ids[k]))


#: The kernel of each path, indexed by ``PATH_*``.
SGD = (sgd_sample, sgd_linear1, sgd_batched, sgd_dp)
