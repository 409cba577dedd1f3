"""Byzantine-robust aggregation of a (K, P) stack of client updates.

Every rule returns a :class:`RobustAggregate` ``(aggregate, used, rejected)``:
``used`` lists the clients whose updates entered the aggregate (for Krum and
Bulyan, the ones the rule selected) and ``rejected`` the clients dropped because
their update held NaN or Inf. That is the policy for non-finite updates in every
rule here: such a client is rejected and reported, never averaged in, and the
rule runs on the others. A rule that cannot run on what is left (too few clients
for the number of attackers it must tolerate) raises a ``ValueError`` that says
what it needs.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from .. import _device
from .. import _validation as V
from ..kernels import aggregation as KA
from ..kernels import robust as KR
from .mean import nonfinite_rows
from .norms import clip_factors, row_distances


class RobustAggregate(NamedTuple):
    """The result of a robust rule: unpacks as ``agg, used, rejected = rule(U, ...)``."""

    aggregate: np.ndarray
    """(P,) array in the dtype of the updates."""
    used: np.ndarray
    """Indices (into the rows of ``updates``) of the clients that entered the aggregate."""
    rejected: np.ndarray
    """Indices of the clients rejected for NaN or Inf in their update."""


# ----------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=64)
def sorting_network(n):
    """Comparators ``(a, b)``, a < b, of Batcher's odd-even merge sort for n inputs.

    Applying ``x[a], x[b] = min, max`` for each pair in order sorts any n values
    (checked for every 0/1 input up to n = 16 in the tests: the 0-1 principle).
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(pairs, np.int64).reshape(-1, 2)


@functools.lru_cache(maxsize=256)
def _network_for_ranks(n, r_lo, r_hi):
    """The comparators of :func:`sorting_network` that ranks ``r_lo:r_hi`` depend on.

    Walking the network backwards, a comparator is kept when it writes a wire still
    needed; its two inputs are then needed too. The median of 64 values needs 85% of
    the 543 comparators of the full sort.
    """
    live = set(range(r_lo, r_hi))
    keep = []
    for a, b in sorting_network(n)[::-1].tolist():
        if a in live or b in live:
            keep.append((a, b))
            live.update((a, b))
    return np.array(keep[::-1], np.int64).reshape(-1, 2)


def _finite_rows(updates, name="updates"):
    """Validated updates without their non-finite rows: ``(U, kept, rejected)``."""
    U = V.as_updates(updates, name)
    bad = nonfinite_rows(U)
    if not bad.any():
        return U, np.arange(U.shape[0]), np.empty(0, np.int64)
    kept = np.flatnonzero(~bad)
    if kept.size == 0:
        raise ValueError(f"every client's update in {name} contains NaN or Inf")
    return np.ascontiguousarray(U[kept]), kept, np.flatnonzero(bad)


class TooFewClients(ValueError):
    """A rule got fewer usable updates than it needs (a ValueError; a simulation's round
    catches exactly this one and keeps its parameters)."""


def _result(agg, kept, rejected):
    """The rule's RobustAggregate, after checking that the aggregate is finite (float64
    updates near the top of their range can overflow a sum)."""
    return RobustAggregate(V.finite_result(agg, "the aggregate"), kept, rejected)


def _need_clients(rule, n, need, rejected, why):
    if n < need:
        extra = f" after rejecting {rejected.size} client(s) with NaN/Inf" if rejected.size else ""
        raise TooFewClients(f"{rule} needs at least {need} clients ({why}); got {n}{extra}")


def _check_f(n_byzantine):
    return V.check_number("n_byzantine", n_byzantine, low=0, integer=True)


def _weighted_mean(U, w, dtype=None):
    """sum_k w_k U_k / sum_k w_k with the fedavg kernel (float64 sums)."""
    out = np.empty(U.shape[1], U.dtype if dtype is None else dtype)
    KA.weighted_mean(U, *V.relative_weights(w), out)
    return out


def _rank_mean(U, r_lo, r_hi):
    out = np.empty(U.shape[1], U.dtype)
    KR.rank_mean(U, _network_for_ranks(U.shape[0], r_lo, r_hi), r_lo, r_hi, out)
    return out


# ----------------------------------------------------------------------------- coordinate-wise


def _rank_rule(updates, device, ranks):
    """A coordinate-wise rule: the mean of the ranks ``ranks(K)`` of each coordinate."""
    gpu = _device.gpu(device)
    if gpu:
        U, on_device = gpu.as_updates(updates)
        U, kept, rejected = gpu.finite_rows(U)
        r_lo, r_hi = ranks(U.shape[0])
        agg = gpu.rank_mean(U, _network_for_ranks(U.shape[0], r_lo, r_hi), r_lo, r_hi)
        return RobustAggregate(gpu.finish(agg, on_device), kept, rejected)
    U, kept, rejected = _finite_rows(updates)
    return _result(_rank_mean(U, *ranks(U.shape[0])), kept, rejected)


def coordinate_median(updates, device="cpu"):
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-robust distributed learning").

    Each coordinate of the result is the median of that coordinate over the clients
    (the mean of the two middle values for an even count, as ``np.median``). It
    tolerates fewer than half of the clients being Byzantine.

    Parameters
    ----------
    updates : (K, P) array
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"``: one GPU thread per coordinate applies the same sorting network to its
        column; the result equals the CPU's bit for bit. ``updates`` may be a GPU array
        (used in place; the aggregate then stays on the GPU).

    Returns
    -------
    RobustAggregate
        ``used`` is every client with a finite update.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> U = np.array([[1.0, 10.0], [2.0, 20.0], [300.0, -1e9]])
    >>> fastmb.coordinate_median(U).aggregate
    array([ 2., 10.])
    """
    return _rank_rule(updates, device, lambda K: ((K - 1) // 2, K // 2 + 1))


def trimmed_mean(updates, beta=0.1, device="cpu"):
    """Coordinate-wise trimmed mean (Yin et al. 2018).

    For each coordinate, the ``t = floor(beta * K)`` largest and ``t`` smallest values
    are dropped and the rest averaged (in float64). ``beta = 0`` is the plain mean.

    Parameters
    ----------
    updates : (K, P) array
    beta : float in [0, 0.5)
        Fraction trimmed at each end; it should exceed the fraction of attackers.
    device : {"cpu", "cuda"}, default "cpu"
        As in :func:`coordinate_median`.

    Returns
    -------
    RobustAggregate

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> U = np.array([[1.0], [2.0], [3.0], [4.0], [1e6]])
    >>> fastmb.trimmed_mean(U, beta=0.2).aggregate
    array([3.])
    """
    beta = V.check_number("beta", beta, low=0)
    if beta >= 0.5:
        raise ValueError(f"beta must be < 0.5 (a fraction trimmed at each end), got {beta}")
    def ranks(K):
        t = math.floor(beta * K)
        return t, K - t

    return _rank_rule(updates, device, ranks)


# ----------------------------------------------------------------------------- Krum family


def pairwise_sq_distances(updates):
    """(K, K) float64 matrix of squared Euclidean distances between the updates.

    Summed from the coordinate differences in float64 (never through a Gram matrix,
    whose ``|u|^2 + |v|^2 - 2 u.v`` cancels when the updates are far from their centre):
    each distance is accurate to about ``P * 2**-53`` relative, whatever an attacker puts
    in the updates. In parallel over fixed coordinate chunks, the same bits on any
    number of threads. Raises on NaN/Inf in the updates, and when a distance overflows
    float64 (only float64 updates beyond about 1e154 can).

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> fastmb.pairwise_sq_distances(np.array([[0.0, 0.0], [3.0, 4.0]]))
    array([[ 0., 25.],
           [25.,  0.]])
    """
    U, _, rejected = _finite_rows(updates)
    if rejected.size:
        raise ValueError(f"updates contains NaN or Inf (clients {rejected.tolist()})")
    return V.finite_result(_sqdist(U), "a squared distance")


def _sqdist(U):
    D = np.empty((U.shape[0], U.shape[0]), np.float64)
    KR.pairwise_sqdist(U, D)
    return D


def _krum_scores(D, f):
    """Score of each client: the sum of its n - f - 2 smallest distances to the others."""
    n = D.shape[0]
    m = n - f - 2
    off = D + np.diag(np.full(n, np.inf))  # a client is not its own neighbour
    return np.sort(off, axis=1)[:, :m].sum(axis=1)


def _krum_select(D, f, m):
    """Indices of the m clients with the lowest Krum scores (ties: lowest index).

    A distance beyond float64 is infinite, which ranks a far-off attacker last as it
    should; but if a selected score is infinite the ranking is meaningless: raise."""
    scores = _krum_scores(D, f)
    sel = np.argsort(scores, kind="stable")[:m]
    V.finite_result(scores[sel], "a Krum score (a sum of squared distances)")
    return np.sort(sel)


def multi_krum(updates, n_byzantine, m=None):
    """Multi-Krum (Blanchard et al. 2017): the mean of the m updates with the lowest Krum score.

    A client's score is the sum of the squared distances to its ``n - f - 2`` nearest
    neighbours; attackers far from the honest cluster score high. The rule needs
    ``n > 2f + 2`` clients.

    Parameters
    ----------
    updates : (K, P) array
    n_byzantine : int
        f, the number of Byzantine clients to tolerate.
    m : int, optional
        How many updates to average; default ``n - f``. ``m = 1`` is Krum.

    Returns
    -------
    RobustAggregate
        ``used`` holds the m selected clients.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> U = np.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.0], [1.0, 1.1], [50.0, -50.0]])
    >>> agg, used, rejected = fastmb.multi_krum(U, n_byzantine=1, m=2)
    >>> used
    array([0, 2])
    """
    f = _check_f(n_byzantine)
    U, kept, rejected = _finite_rows(updates)
    n = U.shape[0]
    _need_clients("Krum", n, 2 * f + 3, rejected, f"n > 2f + 2 with f={f}")
    m = n - f if m is None else V.check_number("m", m, low=1, high=n, integer=True)
    sel = _krum_select(_sqdist(U), f, m)
    agg = U[sel[0]].copy() if m == 1 else _weighted_mean(np.ascontiguousarray(U[sel]), np.ones(m))
    return _result(agg, kept[sel], rejected)


def krum(updates, n_byzantine):
    """Krum (Blanchard et al. 2017): the single update with the lowest Krum score.

    See :func:`multi_krum` (this is ``m = 1``).

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> U = np.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.0], [1.0, 1.1], [50.0, -50.0]])
    >>> fastmb.krum(U, n_byzantine=1).used
    array([0])
    """
    return multi_krum(updates, n_byzantine, m=1)


def bulyan(updates, n_byzantine):
    """Bulyan (El Mhamdi et al. 2018, "The hidden vulnerability of distributed learning").

    First ``theta = n - 2f`` updates are selected by Krum, one at a time (each time
    Krum runs on the clients not yet selected); then each coordinate is the mean of
    the ``beta = theta - 2f`` selected values closest to that coordinate's median.
    Needs ``n >= 4f + 3``.

    Parameters
    ----------
    updates : (K, P) array
    n_byzantine : int

    Returns
    -------
    RobustAggregate
        ``used`` holds the theta clients Krum selected.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> U = np.array([[1.0], [1.2], [0.8], [1.1], [0.9], [1.05], [-40.0]])
    >>> agg, used, _ = fastmb.bulyan(U, n_byzantine=1)
    >>> used.tolist(), round(float(agg[0]), 3)
    ([0, 2, 3, 4, 5], 0.983)
    """
    f = _check_f(n_byzantine)
    U, kept, rejected = _finite_rows(updates)
    n = U.shape[0]
    _need_clients("Bulyan", n, 4 * f + 3, rejected, f"n >= 4f + 3 with f={f}")
    D = _sqdist(U)
    theta = n - 2 * f
    left = list(range(n))
    chosen = []
    for _ in range(theta):
        sub = np.array(left)
        if len(left) > 2 * f + 2:
            best = int(sub[_krum_select(D[np.ix_(sub, sub)], f, 1)[0]])
        else:  # too few left for Krum's neighbourhood: take the one closest to the rest
            sums = D[np.ix_(sub, sub)].sum(axis=1)
            best = int(sub[np.argmin(sums)])
            V.finite_result(sums.min(), "a sum of squared distances")
        chosen.append(best)
        left.remove(best)
    sel = np.sort(np.array(chosen))
    S = np.ascontiguousarray(U[sel])
    out = np.empty(U.shape[1], U.dtype)
    KR.closest_to_median_mean(S, sorting_network(theta), theta - 2 * f, out)
    return _result(out, kept[sel], rejected)


# ----------------------------------------------------------------------------- norm-based


def _client_weights(weights, n_all, kept):
    if weights is None:
        return np.ones(kept.size)
    w = V.as_weights(weights, n_all, "weights", "client")[kept]
    if not w.any():
        raise ValueError("weights are zero for every client with a finite update")
    return w


def norm_bounded_mean(updates, max_norm, weights=None):
    """Norm bounding (Sun et al. 2019, "Can you really backdoor federated learning?").

    Each update is scaled down to L2 norm at most ``max_norm``
    (``u * min(1, max_norm / |u|)``), then the weighted mean is taken.

    Parameters
    ----------
    updates : (K, P) array
    max_norm : float > 0
    weights : (K,) array, optional

    Returns
    -------
    RobustAggregate

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> fastmb.norm_bounded_mean(np.array([[3.0, 4.0], [0.3, 0.4]]), max_norm=1.0).aggregate
    array([0.45, 0.6 ])
    """
    c = V.check_number("max_norm", max_norm, low=0, low_open=True)
    U, kept, rejected = _finite_rows(updates)
    w = _client_weights(weights, np.shape(updates)[0], kept)
    norms = row_distances(U, np.zeros(U.shape[1]))
    scale = clip_factors(norms, c)
    out = np.empty(U.shape[1], U.dtype)
    rel, inv_total = V.relative_weights(w)
    KA.weighted_mean(U, rel * scale, inv_total, out)
    return _result(out, kept, rejected)


def centered_clipping(updates, tau, center=None, n_iter=1, weights=None):
    """Centered clipping (Karimireddy et al. 2021, "Learning from history for
    Byzantine robust optimization").

    Starting from ``v = center``, each iteration moves ``v`` by the weighted mean of
    the clipped differences ``(u_k - v) * min(1, tau / |u_k - v|)``. The paper runs
    one iteration per round from the previous round's aggregate: pass that as
    ``center`` (default: zeros).

    Parameters
    ----------
    updates : (K, P) array
    tau : float > 0
        Clipping radius.
    center : (P,) array, optional
    n_iter : int >= 1
    weights : (K,) array, optional

    Returns
    -------
    RobustAggregate

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> U = np.array([[1.0, 0.0], [1.0, 0.2], [100.0, 0.0]])
    >>> np.round(fastmb.centered_clipping(U, tau=2.0, center=[1.0, 0.0]).aggregate, 3)
    array([1.667, 0.067])
    """
    tau = V.check_number("tau", tau, low=0, low_open=True)
    n_iter = V.check_number("n_iter", n_iter, low=1, integer=True)
    U, kept, rejected = _finite_rows(updates)
    w = _client_weights(weights, np.shape(updates)[0], kept)
    w = w / w.sum()
    v = _center(center, U.shape[1])
    step = np.empty(U.shape[1], np.float64)
    for _ in range(n_iter):
        d = row_distances(U, v)
        c = w * clip_factors(d, tau)
        # v + sum_k c_k (u_k - v) = sum_k c_k u_k + (1 - sum_k c_k) v
        KA.weighted_mean(U, c, 1.0, step)
        v = step + (1.0 - c.sum()) * v
    return _result(v.astype(U.dtype), kept, rejected)


def _center(center, P):
    if center is None:
        return np.zeros(P)
    v = V._as_numeric("center", center)
    if v.ndim != 1 or v.shape[0] != P:
        raise ValueError(f"center must be a 1-D array of length {P}, got shape {v.shape}")
    v = np.array(v, np.float64)
    if not np.isfinite(v).all():
        raise ValueError("center contains NaN or Inf")
    return v


def geometric_median(updates, weights=None, nu=1e-6, max_iter=100, tol=1e-6):
    """Geometric median by the smoothed Weiszfeld algorithm (RFA; Pillutla et al. 2022).

    Minimizes ``sum_k w_k max(nu, |u_k - v|)`` (the smoothing ``nu`` keeps the step
    finite when v meets an update). Each iteration is one pass computing the K
    distances and one weighted mean with weights ``w_k / max(nu, |u_k - v|)``,
    starting from the weighted mean; it stops when the objective improves by less
    than ``tol`` relative, or after ``max_iter`` iterations. Breakdown point 1/2.

    Parameters
    ----------
    updates : (K, P) array
    weights : (K,) array, optional
    nu : float > 0
    max_iter : int >= 1
    tol : float >= 0

    Returns
    -------
    RobustAggregate

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> U = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    >>> np.round(fastmb.geometric_median(U).aggregate, 2)
    array([0.5, 0.5])
    """
    nu = V.check_number("nu", nu, low=0, low_open=True)
    max_iter = V.check_number("max_iter", max_iter, low=1, integer=True)
    tol = V.check_number("tol", tol, low=0)
    U, kept, rejected = _finite_rows(updates)
    w = _client_weights(weights, np.shape(updates)[0], kept)
    # Weights summing to one make the objective a convex combination of distances: it
    # cannot overflow where the distances themselves do not.
    w = w / w.sum()
    v = _weighted_mean(U, w, np.float64)
    d = np.maximum(nu, row_distances(U, v))
    obj = float(w @ d)
    for _ in range(max_iter):
        v_new = _weighted_mean(U, w / d, np.float64)
        d_new = np.maximum(nu, row_distances(U, v_new))
        obj_new = float(w @ d_new)
        if obj_new > obj:  # cannot happen in exact arithmetic; rounding at the optimum
            break
        v, d, done = v_new, d_new, obj - obj_new <= tol * obj
        obj = obj_new
        if done:
            break
    return _result(v.astype(U.dtype), kept, rejected)
