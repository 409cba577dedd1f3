"""scikit-learn's plain SGD for one linear output (``SGDClassifier``, ``SGDRegressor``), one
epoch per call, on dense or sparse rows (the input seam, ``_input``).

This is the algorithm of scikit-learn's ``_plain_sgd`` (``linear_model/_sgd_fast.pyx.tp``),
step for step, so that ``fastmb.sklearn``'s estimators reach scikit-learn's coefficients:

* the weights are ``wscale * w``: the L2 penalty's shrinkage ``w *= 1 - eta alpha`` scales
  the one scalar (``w`` is rescaled when ``wscale`` falls below 1e-9, 1e-6 in float32), so a
  step costs the row's stored entries, not ``n_features``;
* a step: ``p = wscale (w . x) + b``; ``eta`` from the schedule; ``update = -eta
  clip(dloss(y, p), +-1e12) * class weight * sample weight``; shrink; ``w += update x /
  wscale``; ``b += update * intercept_decay``; L1: the truncated gradient of Tsuruoka et al.
  (2009) on the row's entries, with the cumulative penalty ``u`` and each weight's ``q``;
* the epoch's mean loss and objective drive the stopping rule (in Python, between calls).
  The objective adds ``alpha * ((1 - l1_ratio) |w|^2 / 2 + l1_ratio |w|_1)`` a sample, with
  the norms as scikit-learn tracks them: after each update, of the entries that update
  touched only (its ``WeightVector.add``), scaled since. That quirk decides when
  scikit-learn stops, so it is kept.

Dot products accumulate in float64 in the row's order, as scikit-learn's do, and these
kernels compile without fastmath (``jit(fastmath=False)``): the same operations in the same
order give scikit-learn's bits, where a reassociated dot product starts differences of
1e-12 that the "optimal" schedule's large first steps amplify.
"""

import math

from ._input import input_row, prefetch_row, row_col, row_nnz, row_val
from ._jit import jit

# losses (scikit-learn's names): the binary ones take y in {-1, 1}, but log_loss, whose
# half-binomial form takes y in {0, 1}
HINGE, SQUARED_HINGE, MODIFIED_HUBER, LOG_LOSS = 0, 1, 2, 3
SQUARED_ERROR, HUBER, EPSILON_INSENSITIVE, SQUARED_EPSILON_INSENSITIVE = 4, 5, 6, 7
# penalties and learning rates: scikit-learn's codes
NO_PENALTY, L1, L2, ELASTICNET = 0, 1, 2, 3
CONSTANT, OPTIMAL, INVSCALING, ADAPTIVE = 1, 2, 3, 4
MAX_DLOSS = 1e12
PREFETCH_ROWS = 8


@jit(inline="always", fastmath=False)
def _log1pexp(x):
    # scikit-learn's stable log(1 + exp(x)) (``_loss.pyx.tp``)
    if x <= -37:
        return math.exp(x)
    if x <= -2:
        return math.log1p(math.exp(x))
    if x <= 18:
        return math.log(1.0 + math.exp(x))
    if x <= 33.3:
        return x + math.exp(-x)
    return x


@jit(fastmath=False)
def loss_value(kind, param, y, p):
    """The loss of prediction ``p`` for target ``y`` (``param``: the hinge's threshold, or
    Huber's and the epsilon-insensitive losses' epsilon)."""
    if kind == HINGE:
        z = p * y
        return param - z if z <= param else 0.0
    if kind == SQUARED_HINGE:
        z = param - p * y
        return z * z if z > 0 else 0.0
    if kind == MODIFIED_HUBER:
        z = p * y
        if z >= 1.0:
            return 0.0
        if z >= -1.0:
            return (1.0 - z) * (1.0 - z)
        return -4.0 * z
    if kind == LOG_LOSS:
        return _log1pexp(p) - y * p
    if kind == SQUARED_ERROR:
        return 0.5 * (p - y) * (p - y)
    if kind == HUBER:
        a = abs(y - p)
        return 0.5 * a * a if a <= param else param * (a - 0.5 * param)
    r = abs(y - p) - param
    if kind == EPSILON_INSENSITIVE:
        return r if r > 0 else 0.0
    return r * r if r > 0 else 0.0


@jit(fastmath=False)
def loss_gradient(kind, param, y, p):
    """d loss / d p (see :func:`loss_value`), as scikit-learn computes it."""
    if kind == HINGE:
        return -y if p * y <= param else 0.0
    if kind == SQUARED_HINGE:
        z = param - p * y
        return -2.0 * y * z if z > 0 else 0.0
    if kind == MODIFIED_HUBER:
        z = p * y
        if z >= 1.0:
            return 0.0
        if z >= -1.0:
            return 2.0 * (1.0 - z) * -y
        return -4.0 * y
    if kind == LOG_LOSS:
        if p > -37:
            e = math.exp(-p)
            return ((1.0 - y) - y * e) / (1.0 + e)
        return math.exp(p) - y
    if kind == SQUARED_ERROR:
        return p - y
    if kind == HUBER:
        d = p - y
        if abs(d) <= param:
            return d
        return param if d >= 0 else -param
    if kind == EPSILON_INSENSITIVE:
        if y - p > param:
            return -1.0
        if p - y > param:
            return 1.0
        return 0.0
    z = y - p
    if z > param:
        return -2.0 * (z - param)
    if z < -param:
        return 2.0 * (-z - param)
    return 0.0


@jit(fastmath=False)
def sgd_epoch(w, state, q, X, y, sw, order, spec, reset_below):
    """One epoch of scikit-learn's plain SGD over rows ``order`` of ``X``.

    ``w`` (n_features,) the unscaled weights; ``state`` float64 ``[intercept, wscale, t, u,
    eta, sq_norm, l1_norm]`` carried from call to call; ``q`` the L1 penalty's record (empty
    without L1); ``y`` float64 targets (+-1, or 0/1 for log_loss); ``sw`` float64 sample
    weights; ``spec`` ``(loss, loss param, penalty, alpha, l1_ratio, learning rate, eta0,
    power_t, optimal_init, fit_intercept, intercept_decay, weight_pos, weight_neg)``.

    Returns ``(sum of losses, sum of objectives, finite)``: ``finite`` is False when the
    weights or the intercept overflowed (scikit-learn's "Floating-point under-/overflow").
    """
    (kind, param, penalty, alpha, l1_ratio, lr_type, eta0, power_t, optimal_init,
     fit_intercept, intercept_decay, weight_pos, weight_neg) = spec
    intercept, wscale, t, u, eta, sq_norm, l1_norm = (state[0], state[1], state[2], state[3],
                                                     state[4], state[5], state[6])
    use_l1 = penalty == L1 or penalty == ELASTICNET
    sumloss = 0.0
    objective = 0.0
    n = order.shape[0]
    for s in range(n):
        if s + PREFETCH_ROWS < n:
            # rows come in a shuffled order: fetch a later row's entries while this one
            # is computed (as the training kernels' one-output linear path does)
            prefetch_row(X, order[s + PREFETCH_ROWS])
        r = order[s]
        x = input_row(X, r)
        nnz = row_nnz(x)
        dot = 0.0
        for k in range(nnz):
            dot += w[row_col(x, k)] * row_val(x, k)
        p = dot * wscale + intercept
        if lr_type == OPTIMAL:
            eta = 1.0 / (alpha * (optimal_init + t - 1.0))
        elif lr_type == INVSCALING:
            eta = eta0 / t ** power_t
        yr = y[r]
        cur = loss_value(kind, param, yr, p)
        sumloss += cur
        objective += cur
        if penalty > 0:
            objective += alpha * ((1.0 - l1_ratio) * 0.5 * sq_norm + l1_ratio * l1_norm)
        cw = weight_pos if yr > 0.0 else weight_neg
        dloss = min(max(loss_gradient(kind, param, yr, p), -MAX_DLOSS), MAX_DLOSS)
        update = -eta * dloss
        update *= cw * sw[r]
        if penalty >= L2:
            c = max(0.0, 1.0 - (1.0 - l1_ratio) * eta * alpha)
            wscale *= c
            sq_norm *= c * c
            l1_norm *= abs(c)
            if wscale < reset_below:
                for j in range(w.shape[0]):
                    w[j] *= wscale
                wscale = 1.0
        if update != 0.0:
            a2 = 0.0
            a1 = 0.0
            step = update / wscale
            for k in range(nnz):
                j = row_col(x, k)
                w[j] += row_val(x, k) * step
                a2 += w[j] * w[j]
                a1 += abs(w[j])
            sq_norm = a2 * (wscale * wscale)
            l1_norm = a1 * wscale
        if fit_intercept and update != 0.0:
            intercept += update * intercept_decay
        if use_l1:
            u += l1_ratio * eta * alpha
            for k in range(nnz):
                j = row_col(x, k)
                z = w[j]
                if wscale * z > 0.0:
                    w[j] = max(0.0, w[j] - (u + q[j]) / wscale)
                elif wscale * z < 0.0:
                    w[j] = min(0.0, w[j] + (u - q[j]) / wscale)
                q[j] += wscale * (w[j] - z)
        t += 1.0
    finite = math.isfinite(intercept)
    for j in range(w.shape[0]):
        if not math.isfinite(w[j]):
            finite = False
    state[0], state[1], state[2], state[3], state[4], state[5], state[6] = (
        intercept, wscale, t, u, eta, sq_norm, l1_norm)
    return sumloss, objective, finite


@jit
def unscale(w, wscale):
    """``w *= wscale`` (the weights as a plain vector again, ``wscale`` back to 1)."""
    for j in range(w.shape[0]):
        w[j] *= wscale
