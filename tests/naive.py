"""Slow, obviously-correct references for every fastmb kernel.

Everything here is float64 NumPy or plain Python, one sample at a time, written to
be read rather than to be fast. The kernels are tested against these functions and
the gradients here are themselves tested against finite differences.
"""

import math

import numpy as np

# ---------------------------------------------------------------- models


def activation(z, name):
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    return z


def activation_deriv(z, name):
    if name == "relu":
        return (z > 0).astype(float)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    return np.ones_like(z)


def weights(model, params):
    """[(W, b), ...] as float64 copies; b is zeros when the model has no bias."""
    out = []
    for W, b in model.layers(np.asarray(params, np.float64)):
        out.append((W.copy(), b.copy() if b is not None else np.zeros(W.shape[1])))
    return out


def forward(model, params, x):
    """Outputs of one sample, plus the pre-activations and inputs of every layer."""
    layers = weights(model, params)
    a = np.asarray(x, np.float64)
    inputs, pre = [], []
    for i, (W, b) in enumerate(layers):
        inputs.append(a)
        z = a @ W + b
        pre.append(z)
        a = activation(z, model.activation) if i < len(layers) - 1 else z
    return a, pre, inputs


def sample_loss(model, f, y):
    """Loss of one sample with outputs f (1-D) and label y, and dloss/df."""
    loss = model.loss
    if loss == "logistic":
        z = f[0]
        p = 1.0 / (1.0 + np.exp(-z))
        return np.logaddexp(0.0, z) - y * z, np.array([p - y])
    if loss == "hinge":
        s = 2.0 * y - 1.0
        if s * f[0] < 1:
            return 1.0 - s * f[0], np.array([-s])
        return 0.0, np.array([0.0])
    if loss == "softmax":
        lse = np.logaddexp.reduce(f)
        p = np.exp(f - lse)
        onehot = np.zeros_like(f)
        onehot[int(y)] = 1.0
        return lse - f[int(y)], p - onehot
    r = f - np.atleast_1d(y)
    if loss == "huber":
        d = model.huber_delta
        quad = np.abs(r) <= d
        value = np.where(quad, 0.5 * r**2, d * (np.abs(r) - 0.5 * d)).sum()
        return value, np.where(quad, r, d * np.sign(r))
    return 0.5 * np.sum(r**2), r


def sample_grad(model, params, x, y):
    """(loss, gradient) of one sample by textbook backpropagation, float64."""
    f, pre, inputs = forward(model, params, x)
    value, delta = sample_loss(model, f, y)
    layers = weights(model, params)
    grads = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        W, _ = layers[i]
        grads[i] = (np.outer(inputs[i], delta), delta.copy())
        if i > 0:
            delta = (W @ delta) * activation_deriv(pre[i - 1], model.activation)
    flat = []
    for gW, gb in grads:
        flat.append(gW.ravel())
        if model.fit_intercept:
            flat.append(gb)
    return value, np.concatenate(flat)


def slice_forward(model, params, a, start, stop):
    """Outputs of layers [start, stop) for one input row ``a`` (the model's input at 0,
    the activations at the cut otherwise): activations, or raw outputs at the top."""
    layers = weights(model, params)
    a = np.asarray(a, np.float64)
    for i in range(start, stop):
        W, b = layers[i]
        z = a @ W + b
        a = activation(z, model.activation) if i < len(layers) - 1 else z
    return a


def slice_backward(model, params, a, g_out, start, stop):
    """(parameter gradient of the slice's block, gradient w.r.t. its input ``a``) for one
    row, given ``g_out``, the gradient w.r.t. the slice's outputs; by textbook
    backpropagation through layers [start, stop) only."""
    layers = weights(model, params)
    L = len(layers)
    inputs, pre = [], []
    x = np.asarray(a, np.float64)
    for i in range(start, stop):
        W, b = layers[i]
        inputs.append(x)
        z = x @ W + b
        pre.append(z)
        x = activation(z, model.activation) if i < L - 1 else z
    delta = np.asarray(g_out, np.float64)
    if stop < L:
        delta = delta * activation_deriv(pre[-1], model.activation)
    grads = []
    for j, i in enumerate(range(stop - 1, start - 1, -1)):
        W, _ = layers[i]
        k = stop - 1 - start - j
        grads.append((np.outer(inputs[k], delta), delta.copy()))
        g_in = W @ delta
        if i > start:
            delta = g_in * activation_deriv(pre[k - 1], model.activation)
    flat = []
    for gW, gb in reversed(grads):
        flat.append(gW.ravel())
        if model.fit_intercept:
            flat.append(gb)
    return np.concatenate(flat), g_in


def width_submodel(model, params, rate, shift=0):
    """A width slice by hand: the layers' weight matrices and biases restricted to the
    kept units (the first ceil(rate * n) of each hidden layer, from ``shift``, wrapping),
    flattened in the sub-model's layout."""
    sizes = model.sizes
    L = len(sizes) - 1
    keep = [list(range(sizes[0]))]
    for h in sizes[1:L]:
        k = max(1, math.ceil(rate * h - 1e-9))
        keep.append([(shift + i) % h for i in range(k)])
    keep.append(list(range(sizes[L])))
    flat = []
    for l, (W, b) in enumerate(model.layers(np.asarray(params, np.float64))):
        for i in keep[l]:
            for j in keep[l + 1]:
                flat.append(W[i, j])
        if b is not None:
            flat.extend(b[j] for j in keep[l + 1])
    return np.array(flat), [len(k) for k in keep]


def width_mean(P, params, updates, positions, weights):
    """Per-parameter weighted mean over the clients holding each position, one position at
    a time; positions nobody holds keep ``params``."""
    out = np.array(params, np.float64)
    for j in range(P):
        num = den = 0.0
        for u, pos, w in zip(updates, positions, weights):
            hits = np.flatnonzero(np.asarray(pos) == j)
            if hits.size:
                num += w * float(u[hits[0]])
                den += w
        if den > 0:
            out[j] = num / den
    return out


def compact_decode(W, fmt):
    """The weights a compact format stores for ``W``, decoded the obvious way: int8 codes
    round(W / s) with s = max |row| / 127 per input unit, half floats, or W itself."""
    W = np.asarray(W, np.float32)
    if fmt.endswith("int8"):
        s = np.abs(W).max(axis=1, keepdims=True) / np.float32(127.0)
        q = np.clip(np.rint(W / np.where(s > 0, s, 1)), -127, 127)
        return (q * s).astype(np.float64)
    if fmt.endswith("fp16"):
        return W.astype(np.float16).astype(np.float64)
    return W.astype(np.float64)


def compact_forward(model, params, x, fmt, start, stop):
    """One row through layers [start, stop) with the weights ``compact_decode`` gives."""
    a = np.asarray(x, np.float64)
    L = model.n_layers
    for l in range(start, stop):
        W, b = model.layers(np.asarray(params, np.float32))[l]
        z = a @ compact_decode(W, fmt) + (0.0 if b is None else b.astype(np.float64))
        a = activation(z, model.activation) if l < L - 1 else z
    return a


def async_split_sgd(model, params, X, y, cut, *, epochs, batch_size, lr):
    """Split learning with the client one step stale, plain SGD, rows in order: the client's
    layers compute each mini-batch with the weights they had before their last update,
    and the gradient from them updates the current ones; the server is always current."""
    p = np.array(params, np.float64)
    c = sum(W.size + (b.size if b is not None else 0) for W, b in model.layers(p)[:cut])
    stale = p[:c].copy()
    n = len(X)
    for _ in range(epochs):
        for lo in range(0, n, batch_size):
            rows = range(lo, min(n, lo + batch_size))
            used = np.concatenate([stale, p[c:]])   # the weights this step computes with
            g = sum(sample_grad(model, used, X[r], _label(y, r))[1] for r in rows)
            stale = p[:c].copy()                    # the next step's client weights
            p = p - lr * g / len(rows)
    return p


def _label(y, i):
    return y[i]


def loss(model, params, X, y, sample_weight=None):
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, float)
    total = 0.0
    for i in range(len(X)):
        f, _, _ = forward(model, params, X[i])
        total += w[i] * sample_loss(model, f, _label(y, i))[0]
    return total / w.sum()


def grad(model, params, X, y, sample_weight=None):
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, float)
    g = np.zeros(model.n_params)
    for i in range(len(X)):
        g += w[i] * sample_grad(model, params, X[i], _label(y, i))[1]
    return g / w.sum()


def per_sample_grad(model, params, X, y, microbatch=1):
    rows = []
    for lo in range(0, len(X), microbatch):
        hi = min(len(X), lo + microbatch)
        rows.append(np.mean([sample_grad(model, params, X[i], _label(y, i))[1]
                             for i in range(lo, hi)], axis=0))
    return np.array(rows)


def per_sample_grad_norm(model, params, X, y):
    return np.linalg.norm(per_sample_grad(model, params, X, y), axis=1)


def decision_function(model, params, X):
    return np.array([forward(model, params, x)[0] for x in X])


def predict(model, params, x):
    """Class of one sample: the first largest output (softmax) or output > 0 (binary)."""
    f = np.asarray(forward(model, params, x)[0], np.float64).ravel()
    return int(np.argmax(f)) if model.loss == "softmax" else int(f[0] > 0)


def finite_difference_grad(model, params, X, y, eps=1e-6):
    """Central differences of the mean loss, float64."""
    params = np.asarray(params, np.float64)
    g = np.zeros_like(params)
    for j in range(params.size):
        up, down = params.copy(), params.copy()
        up[j] += eps
        down[j] -= eps
        g[j] = (loss(model, up, X, y) - loss(model, down, X, y)) / (2 * eps)
    return g


# ---------------------------------------------------------------- random numbers
# Plain-integer copy of kernels/_rng.py (SplitMix64's output function).

M64 = (1 << 64) - 1


def mix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def hash2(a, b):
    return mix64(mix64(a) ^ b)


def shuffled(n, key):
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = ((hash2(key, i) >> 32) * (i + 1)) >> 32
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _uniform53(h):
    return (h >> 11) * 2.0**-53


def _zig_tables(n=128, r=3.442619855899, v=9.91256303526217e-3):
    x = [0.0] * (n + 1)
    f = math.exp(-0.5 * r * r)
    x[0], x[1] = v / f, r
    for i in range(2, n):
        x[i] = math.sqrt(-2.0 * math.log(v / x[i - 1] + f))
        f = math.exp(-0.5 * x[i] * x[i])
    return x, [x[i + 1] / x[i] for i in range(n)]


ZIG_X, ZIG_R = _zig_tables()


def normal(key, ctr):
    """Doornik's ZIGNOR ziggurat driven by hash2 draws, step by step (see kernels/_rng.py)."""
    h = hash2(key, ctr)
    u, i = 2.0 * _uniform53(h) - 1.0, h & 127
    if abs(u) < ZIG_R[i]:
        return u * ZIG_X[i]
    key, a = h, 1
    while True:
        if i == 0:
            while True:
                x = -math.log(1.0 - _uniform53(hash2(key, a))) / ZIG_X[1]
                y = -math.log(1.0 - _uniform53(hash2(key, a + 1)))
                a += 2
                if 2.0 * y > x * x:
                    return -(ZIG_X[1] + x) if u < 0 else ZIG_X[1] + x
        x = u * ZIG_X[i]
        f0 = math.exp(-0.5 * (ZIG_X[i] ** 2 - x * x))
        f1 = math.exp(-0.5 * (ZIG_X[i + 1] ** 2 - x * x))
        if f1 + _uniform53(hash2(key, a)) * (f0 - f1) < 1.0:
            return x
        h = hash2(key, a + 1)
        a += 2
        u, i = 2.0 * _uniform53(h) - 1.0, h & 127
        if abs(u) < ZIG_R[i]:
            return u * ZIG_X[i]


NOISE_TAG = 0xD1B54A32D192ED03


# ---------------------------------------------------------------- local training


def lr_at(t, total, lr, schedule, power_t):
    if schedule == "invscaling":
        return lr / (t + 1.0) ** power_t
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + np.cos(np.pi * t / total))
    return lr


def sgd(model, params, X, y, *, epochs=1, batch_size=32, lr=0.01, momentum=0.0,
        weight_decay=0.0, prox_mu=0.0, shuffle=True, seed=0, sample_weight=None,
        schedule="constant", power_t=0.5, key=None, clip_norm=None, noise_multiplier=0.0,
        max_steps=-1, optimizer="sgd", betas=(0.9, 0.999), eps=1e-8, nesterov=False, l2=0.0,
        keep=None):
    """Mini-batch SGD, one Python step at a time; ``key`` defaults to client 0's stream.

    ``keep``: a boolean mask of the parameters that train; the others are set to zero
    after every step (pruned training).

    ``optimizer="adam"``: Adam as written in Kingma and Ba's Algorithm 1 with the bias
    corrections folded into the step (their section 2's last paragraph), as scikit-learn
    writes it.

    ``max_steps >= 0`` stops after that many steps (the schedule still spans ``epochs``).

    With ``clip_norm``: DP-SGD, each per-sample gradient clipped to that norm, noise
    ``noise_multiplier * clip_norm * normal(hash2(key ^ NOISE_TAG, 0) then t, j)``.
    """
    p0 = np.asarray(params, np.float64)
    p = p0.copy()
    v = np.zeros_like(p)
    m, s = np.zeros_like(p), np.zeros_like(p)
    n = len(X)
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, float)
    key = hash2(seed, 0) if key is None else key
    n_batches = -(-n // batch_size)
    total = max(1, epochs * n_batches)
    noise_key = hash2(key ^ NOISE_TAG, 0)
    t = 0
    for e in range(epochs):
        order = shuffled(n, hash2(key, e)) if shuffle else list(range(n))
        for b in range(n_batches):
            if t == max_steps:
                return p
            idx = order[b * batch_size:(b + 1) * batch_size]
            g = np.zeros_like(p)
            for i in idx:
                gi = sample_grad(model, p, X[i], _label(y, i))[1]
                if clip_norm is not None:
                    norm = np.linalg.norm(gi)
                    if norm > clip_norm:
                        gi = gi * (clip_norm / norm)
                g += w[i] * gi
            if noise_multiplier > 0:
                step_key = hash2(noise_key, t)
                g += noise_multiplier * clip_norm * np.array(
                    [normal(step_key, j) for j in range(len(p))])
            g = g + l2 * _weights_only(model, p)
            wsum = w[idx].sum()
            g = g / wsum if wsum > 0 else 0 * g
            d = g + weight_decay * p + prox_mu * (p - p0)
            lr_t = lr_at(t, total, lr, schedule, power_t)
            if optimizer == "adam":
                b1, b2 = betas
                m = b1 * m + (1 - b1) * d
                s = b2 * s + (1 - b2) * d * d
                step = lr_t * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
                p = p - step * m / (np.sqrt(s) + eps)
            else:
                v = momentum * v + d
                p = p - lr_t * (d + momentum * v if nesterov else v)
            if keep is not None:
                p = np.where(keep, p, 0.0)
            t += 1
    return p


def _weights_only(model, p):
    """``p`` with its biases zeroed (the weights an ``l2`` penalty acts on)."""
    out = p.copy()
    for (_, b) in model.layers(out):
        if b is not None:
            b[:] = 0
    return out


def train_clients(model, params, X, y, offsets, *, seed=0, epochs=1, sample_weight=None,
                  rows=None, clients=None, max_steps=None, **kw):
    """Each client copies out its rows (``rows[lo:hi]`` of X, or ``lo:hi``) and runs sgd."""
    out = []
    ids = range(len(offsets) - 1) if clients is None else clients
    for i, k in enumerate(ids):
        lo, hi = offsets[k], offsets[k + 1]
        take = np.arange(lo, hi) if rows is None else np.asarray(rows)[lo:hi]
        ep = epochs[i] if np.ndim(epochs) else epochs
        ms = -1 if max_steps is None else (max_steps[i] if np.ndim(max_steps) else max_steps)
        sw = None if sample_weight is None else np.asarray(sample_weight)[take]
        out.append(sgd(model, params, X[take], np.asarray(y)[take], epochs=ep, sample_weight=sw,
                       key=hash2(seed, k), max_steps=ms, **kw))
    return np.array(out)


# ---------------------------------------------------------------- aggregation


def fedavg(updates, weights=None):
    U = np.asarray(updates, np.float64)
    w = np.ones(len(U)) if weights is None else np.asarray(weights, np.float64)
    share = w / w.sum()  # normalise first: subnormal weights times U would lose bits
    total = np.zeros(U.shape[1])
    for k in range(len(U)):
        total += share[k] * U[k]
    return total


# ---------------------------------------------------------------- robust aggregation
# Each rule written straight from its paper, one coordinate or one pair at a time.


def coordinate_median(U):
    U = np.asarray(U, np.float64)
    out = np.empty(U.shape[1])
    for j in range(U.shape[1]):
        col = sorted(U[:, j])
        K = len(col)
        out[j] = col[K // 2] if K % 2 else 0.5 * (col[K // 2 - 1] + col[K // 2])
    return out


def trimmed_mean(U, beta):
    U = np.asarray(U, np.float64)
    K = U.shape[0]
    t = int(np.floor(beta * K))
    return np.array([np.mean(sorted(U[:, j])[t:K - t]) for j in range(U.shape[1])])


def sq_distances(U):
    U = np.asarray(U, np.float64)
    K = len(U)
    return np.array([[float(np.sum((U[i] - U[k]) ** 2)) for k in range(K)] for i in range(K)])


def krum_scores(U, f):
    D = sq_distances(U)
    n = len(U)
    return np.array([sum(sorted(D[i, k] for k in range(n) if k != i)[:n - f - 2])
                     for i in range(n)])


def multi_krum(U, f, m):
    """Indices of the m lowest scores (ties to the lower index) and their mean."""
    scores = krum_scores(U, f)
    order = sorted(range(len(U)), key=lambda i: (scores[i], i))[:m]
    sel = sorted(order)
    return sel, np.mean(np.asarray(U, np.float64)[sel], axis=0)


def bulyan(U, f):
    U = np.asarray(U, np.float64)
    n = len(U)
    theta = n - 2 * f
    left = list(range(n))
    chosen = []
    for _ in range(theta):
        sub = U[left]
        scores = (krum_scores(sub, f) if len(left) > 2 * f + 2
                  else sq_distances(sub).sum(axis=1))
        best = left[min(range(len(left)), key=lambda i: (scores[i], i))]
        chosen.append(best)
        left.remove(best)
    sel = sorted(chosen)
    beta = theta - 2 * f
    out = np.empty(U.shape[1])
    for j in range(U.shape[1]):
        col = np.sort(U[sel, j])
        med = np.median(col)
        closest = np.argsort(np.abs(col - med), kind="stable")[:beta]
        out[j] = np.mean(col[closest])
    return sel, out


def norm_bounded_mean(U, max_norm, w=None):
    U = np.asarray(U, np.float64)
    w = np.ones(len(U)) if w is None else np.asarray(w, np.float64)
    clipped = [u * min(1.0, max_norm / np.linalg.norm(u)) if np.linalg.norm(u) > 0 else u
               for u in U]
    return sum(wk * ck for wk, ck in zip(w, clipped)) / w.sum()


def centered_clipping(U, tau, center, n_iter, w=None):
    U = np.asarray(U, np.float64)
    w = np.ones(len(U)) if w is None else np.asarray(w, np.float64)
    w = w / w.sum()
    v = np.array(center, np.float64)
    for _ in range(n_iter):
        step = np.zeros_like(v)
        for wk, u in zip(w, U):
            d = np.linalg.norm(u - v)
            step += wk * (u - v) * (min(1.0, tau / d) if d > 0 else 1.0)
        v = v + step
    return v


def geometric_median_objective(U, v, w=None):
    U = np.asarray(U, np.float64)
    w = np.ones(len(U)) if w is None else np.asarray(w, np.float64)
    return float(sum(wk * np.linalg.norm(u - v) for wk, u in zip(w, U)))


# ---------------------------------------------------------------- server optimizers


def server_steps(kind, x, aggregates, lr, b1, b2=0.0, tau=0.0):
    """Reddi et al. 2021, Algorithm 2, one coordinate at a time in float64."""
    x = [float(a) for a in x]
    m = [0.0] * len(x)
    v = [tau * tau] * len(x)
    for agg in aggregates:
        for j in range(len(x)):
            d = float(agg[j]) - x[j]
            if kind == "FedAvgM":
                m[j] = b1 * m[j] + d
                x[j] += lr * m[j]
                continue
            m[j] = b1 * m[j] + (1 - b1) * d
            if kind == "FedAdagrad":
                v[j] = v[j] + d * d
            elif kind == "FedAdam":
                v[j] = b2 * v[j] + (1 - b2) * d * d
            else:
                v[j] = v[j] - (1 - b2) * d * d * np.sign(v[j] - d * d)
            x[j] += lr * m[j] / (np.sqrt(v[j]) + tau)
    return np.array(x)


# ---------------------------------------------------------------- differential privacy


def central_dp_round(U, clip, z_sum, m, key, adaptive=None):
    """One DP-FedAvg round; ``adaptive`` = (gamma, clip_lr, sigma_b) or None.

    Returns (aggregate, new clip norm). Noise: normal(hash2(key, 0), j) per coordinate,
    normal(hash2(key, 1), 0) for the count.
    """
    U = np.asarray(U, np.float64)
    total = np.zeros(U.shape[1])
    below = 0
    for u in U:
        if not np.isfinite(u).all():
            continue
        norm = np.linalg.norm(u)
        below += norm <= clip
        total += u * (min(1.0, clip / norm) if norm > 0 else 1.0)
    agg = total / m
    sigma = z_sum * clip / m
    if sigma > 0:
        k0 = hash2(key, 0)
        agg = agg + sigma * np.array([normal(k0, j) for j in range(U.shape[1])])
    new_clip = clip
    if adaptive is not None:
        gamma, lr, sigma_b = adaptive
        b = below + (sigma_b * normal(hash2(key, 1), 0) if z_sum > 0 and sigma_b > 0 else 0.0)
        new_clip = clip * math.exp(-lr * (b / m - gamma))
    return agg, new_clip


# ---------------------------------------------------------------- quantization


def _stream(seed):
    return hash2(seed, 0x51ED)


def quantize_int8(u, block, stochastic=False, seed=0):
    """(codes, scales): per-block max/127 scales, round half away from zero or stochastic."""
    u = np.asarray(u, np.float64)
    key = _stream(seed)
    codes, scales = [], []
    for lo in range(0, len(u), block):
        seg = u[lo:lo + block]
        scale = float(np.float32(np.abs(seg).max() / 127.0))
        scales.append(scale)
        for j, x in enumerate(seg, lo):
            x = x / scale if scale > 0 else 0.0
            if stochastic:
                q = math.floor(x + _uniform53(hash2(key, j)))
            else:
                q = math.copysign(math.floor(abs(x) + 0.5), x)
            codes.append(int(max(-127, min(127, q))))
    return np.array(codes, np.int8), np.array(scales, np.float32)


def qsgd(u, levels, block, seed=0):
    u = np.asarray(u, np.float64)
    key = _stream(seed)
    codes, scales = [], []
    for lo in range(0, len(u), block):
        seg = u[lo:lo + block]
        scale = float(np.float32(math.sqrt(float((seg * seg).sum())) / levels))
        scales.append(scale)
        for j, x in enumerate(seg, lo):
            r = abs(x) / scale if scale > 0 else 0.0
            q = min(levels, math.floor(r + _uniform53(hash2(key, j))))
            codes.append(q if x >= 0 else -q)
    return np.array(codes, np.int8), np.array(scales, np.float32)


def bfloat16(x):
    """Nearest bfloat16 (ties to even) of each float32, by comparing the two neighbours."""
    out = []
    for v in np.asarray(x, np.float32):
        bits = int(np.array(v).view(np.uint32))
        lo = bits & 0xFFFF0000
        hi = lo + 0x10000
        f_lo = float(np.array(lo, np.uint32).view(np.float32))
        f_hi = float(np.array(hi, np.uint32).view(np.float32))
        d_lo, d_hi = abs(float(v) - f_lo), abs(f_hi - float(v))
        pick = lo if d_lo < d_hi or (d_lo == d_hi and not (lo >> 16) & 1) else hi
        out.append(pick >> 16)
    return np.array(out, np.uint16)


# ---------------------------------------------------------------- buffered asynchronous


def fedbuff(x0, arrivals, K, lr=1.0, weight_fn=lambda s: (1.0 + s) ** -0.5, max_staleness=None):
    """FedBuff, step by step: arrivals are (delta, version, weight); returns the params
    after each server update."""
    x = np.asarray(x0, np.float64).copy()
    version, buf, n, history = 0, np.zeros_like(x), 0, []
    for delta, v, w in arrivals:
        s = version - v
        if max_staleness is not None and s > max_staleness:
            continue
        buf += w * weight_fn(s) * np.asarray(delta, np.float64)
        n += 1
        if n == K:
            x = x + lr * buf / K
            version, buf, n = version + 1, np.zeros_like(x), 0
            history.append(x.copy())
    return history


# ---------------------------------------------------------------- federation


def dirichlet_counts_ok(counts, n_per_class):
    """Every row of every class was dealt to exactly one client."""
    return np.array_equal(counts.sum(0), n_per_class)


def fedavg_round(model, params, X, y, partition, ids, key, *, epochs, batch_size, lr, momentum,
                 max_steps, attack, attack_kind, attack_scale):
    """One FedAvg round from scratch: each client copies out its rows and runs the naive
    sgd with stream ``hash2(key, id)``; updates ``p_k - params`` (corrupted as asked) are
    averaged with the clients' example counts, skipping non-finite ones; returns the new
    parameters (float64) and the rejected client ids."""
    p0 = np.asarray(params, np.float64)
    total, wsum, rejected = np.zeros_like(p0), 0.0, []
    for i, k in enumerate(ids):
        rows = partition.rows[partition.offsets[k]:partition.offsets[k + 1]]
        p = sgd(model, p0, X[rows], y[rows], epochs=epochs, batch_size=batch_size, lr=lr,
                momentum=momentum, key=hash2(int(key), int(k)), max_steps=int(max_steps[i]))
        u = p - p0
        if attack[i]:
            u = (np.full_like(u, np.nan) if attack_kind == "nan" else
                 u * (attack_scale if attack_kind == "scale" else -attack_scale))
        if not np.isfinite(u).all():
            rejected.append(int(k))
            continue
        total += len(rows) * u
        wsum += len(rows)
    return p0 + total / wsum, rejected


# ---------------------------------------------------------------- sparse input


def csr_to_dense(X):
    """The dense matrix of a SciPy CSR matrix, read entry by entry from its three arrays
    (``data``, ``indices``, ``indptr``), repeated entries summed: what the stored entries
    mean, independent of SciPy's own conversion."""
    n, d = X.shape
    out = np.zeros((n, d))
    for i in range(n):
        for k in range(X.indptr[i], X.indptr[i + 1]):
            out[i, X.indices[k]] += float(X.data[k])
    return out


# ---------------------------------------------------------------- secure aggregation


def field_quantize(u, clip, bits, weight, key, modulus_bits=32):
    """SecAgg's quantization, coordinate by coordinate in Python integers: ``w * floor((
    clip(x) + c) * (2**bits - 1) / (2c) + xi_j)`` then ``w``, as a list of ints."""
    levels = (1 << bits) - 1
    scale = levels / (2.0 * clip)
    out = []
    for j, x in enumerate(np.asarray(u, np.float64)):
        x = min(clip, max(-clip, float(x)))
        q = math.floor((x + clip) * scale + _uniform53(hash2(int(key), j)))
        assert 0 <= q <= levels
        out.append(weight * q % (1 << modulus_bits))
    return [*out, weight]


def masked_input(x, self_words, pair_words, signs, modulus_bits=32):
    """``x + self mask + sum sign * pair mask`` modulo ``2**modulus_bits``, in Python
    integers: what a client sends in SecAgg."""
    m = 1 << modulus_bits
    out = [int(v) for v in x]
    for j in range(len(out)):
        v = out[j] + int(self_words[j])
        for words, s in zip(pair_words, signs):
            v += s * int(words[j])
        out[j] = v % m
    return out
