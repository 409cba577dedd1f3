"""Central differential privacy at the server: DP-FedAvg with a fixed or adaptive clipping
norm (McMahan et al. 2018; Andrew et al. 2021)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _validation as V
from ..aggregate import rules
from ..aggregate.mean import nonfinite_rows
from ..aggregate.norms import clip_factors, row_distances
from ..kernels import _rng
from ..kernels import aggregation as KA
from ..kernels import privacy as KP


class DPAggregate(NamedTuple):
    """What :meth:`CentralDP.aggregate` returns.

    aggregate : (P,) array
        ``(sum_k clip(u_k) + N(0, noise_std^2 I) * n_expected) / n_expected``.
    clip_norm : float
        The clipping norm used this round (before any adaptive update).
    clipped : (k,) int array
        Indices of the updates that were scaled down.
    rejected : (r,) int array
        Indices of the updates with NaN or Inf: they contribute nothing (as if clipped
        to zero, which keeps the privacy guarantee) and are reported here.
    noise_std : float
        Standard deviation of the noise added to each coordinate of the mean.
    """

    aggregate: np.ndarray
    clip_norm: float
    clipped: np.ndarray
    rejected: np.ndarray
    noise_std: float


class CentralDP:
    """DP-FedAvg at the server: clip every client update, add Gaussian noise to the mean.

    Each round, update ``u_k`` is scaled to L2 norm at most ``C``
    (``u_k min(1, C / |u_k|)``), the clipped updates are summed in float64, Gaussian
    noise of standard deviation ``z C`` is added to each coordinate of the sum, and the
    sum is divided by ``expected_clients`` (or the number of updates): McMahan et al.
    2018. With a ``target_quantile`` the norm adapts each round by Andrew et al. 2021:
    the fraction of clients with ``|u_k| <= C`` is estimated with its own noise
    (``count_noise_multiplier``, sigma_b) and ``C <- C exp(-clip_lr (b - gamma))``;
    the sum's noise multiplier is then raised to
    ``z_sum = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` so that the round as a whole is the
    Gaussian mechanism with multiplier ``z`` (what :func:`epsilon` should be given).

    Noise comes from a counter-based stream keyed by ``(seed, round)``: the same seed
    gives the same bits on any number of threads, and :meth:`state_dict` /
    :meth:`from_state_dict` resume a run exactly. A round that raises leaves the state
    as it was.

    Parameters
    ----------
    clip_norm : float > 0, default 1.0
        The clipping norm, or the initial one when adaptive.
    noise_multiplier : float >= 0, default 1.0
        z; 0 clips without noise.
    target_quantile : float in [0, 1], optional
        gamma: adapt the clipping norm towards this quantile of the update norms.
    clip_lr : float > 0, default 0.2
        eta_C, the geometric step of the adaptive norm.
    count_noise_multiplier : float, optional
        sigma_b; defaults to ``expected_clients / 20`` as the paper recommends. Must be
        more than ``z / 2``.
    expected_clients : int, optional
        Fixed denominator of the mean (the expected number of clients per round under
        Poisson client sampling); defaults to the number of updates given each round.
    seed : int, default 0

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> dp = fastmb.CentralDP(clip_norm=1.0, noise_multiplier=0.0)
    >>> res = dp.aggregate(np.array([[3.0, 4.0], [0.3, 0.4]]))
    >>> res.aggregate, res.clipped
    (array([0.45, 0.6 ]), array([0]))
    >>> dp = fastmb.CentralDP(clip_norm=0.1, noise_multiplier=1.0, target_quantile=0.5,
    ...                       expected_clients=100)
    >>> for r in range(60):
    ...     _ = dp.aggregate(np.random.default_rng(r).normal(size=(100, 10)))
    >>> 2.5 < dp.clip_norm < 3.7      # the median norm of 10 standard normals is 3.1
    True
    """

    def __init__(self, clip_norm=1.0, noise_multiplier=1.0, *, target_quantile=None,
                 clip_lr=0.2, count_noise_multiplier=None, expected_clients=None, seed=0):
        self._clip = V.check_number("clip_norm", clip_norm, low=0, low_open=True)
        self.noise_multiplier = V.check_number("noise_multiplier", noise_multiplier, low=0)
        self.expected_clients = (None if expected_clients is None else
                                 V.check_number("expected_clients", expected_clients, low=1,
                                                integer=True))
        self.seed = V.check_number("seed", seed, low=0, high=2**64 - 1, integer=True)
        self.adaptive = target_quantile is not None
        self.target_quantile = (None if target_quantile is None else
                                V.check_number("target_quantile", target_quantile, low=0,
                                               high=1))
        self.clip_lr = V.check_number("clip_lr", clip_lr, low=0, low_open=True)
        if count_noise_multiplier is None:
            if self.adaptive and self.noise_multiplier > 0 and self.expected_clients is None:
                raise ValueError("adaptive clipping with noise needs expected_clients (for "
                                 "the default count_noise_multiplier = expected_clients / 20) "
                                 "or an explicit count_noise_multiplier")
            count_noise_multiplier = (self.expected_clients or 0) / 20.0
        self.count_noise_multiplier = V.check_number("count_noise_multiplier",
                                                     count_noise_multiplier, low=0)
        z, sb = self.noise_multiplier, self.count_noise_multiplier
        if self.adaptive and z > 0 and not 2.0 * sb > z:
            raise ValueError(f"count_noise_multiplier must exceed noise_multiplier / 2 = {z / 2} "
                             f"(Andrew et al.: z_sum = (z^-2 - (2 sigma_b)^-2)^-1/2), got {sb}")
        self.round = 0

    def __repr__(self):
        mode = f"target_quantile={self.target_quantile}" if self.adaptive else "fixed"
        return (f"CentralDP(clip_norm={self._clip:.6g}, noise_multiplier="
                f"{self.noise_multiplier}, {mode}, round={self.round})")

    @property
    def clip_norm(self):
        """The clipping norm the next round will use."""
        return self._clip

    @property
    def sum_noise_multiplier(self):
        """Noise multiplier of the sum: z, or z_sum when the norm adapts."""
        z = self.noise_multiplier
        if not self.adaptive or z == 0:
            return z
        # (z^-2 - (2 sigma_b)^-2)^(-1/2) written as z / sqrt(1 - (z / 2 sigma_b)^2): the same
        # number, without z^-2 overflowing for a tiny z (2 sigma_b > z is checked).
        return z / math.sqrt(1.0 - (z / (2.0 * self.count_noise_multiplier)) ** 2)

    def aggregate(self, updates):
        """One round: clip, sum, add noise, divide; then adapt the norm if asked.

        Parameters
        ----------
        updates : (K, P) array of float32 or float64

        Returns
        -------
        DPAggregate
        """
        U = V.as_updates(updates)
        K, P = U.shape
        m = self.expected_clients or K
        bad = nonfinite_rows(U)
        ok = np.flatnonzero(~bad)
        # Rows with NaN/Inf contribute nothing (0 * NaN would still be NaN): the finite
        # rows are taken once and serve both the norms and the sum.
        Uf = U if ok.size == K else np.ascontiguousarray(U[ok])
        norms = np.zeros(K)
        if ok.size:
            norms[ok] = row_distances(Uf, np.zeros(P))
        C = self._clip
        w = np.where(bad, 0.0, clip_factors(norms, C))
        out = np.empty(P, U.dtype)
        KA.weighted_mean(Uf, np.ascontiguousarray(w[ok]), 1.0 / m, out)
        def stream(a, b):  # the counter-based key hash2(a, b), as the kernels take it
            return np.uint64(_rng.hash2(np.uint64(a), np.uint64(b)))

        key = stream(self.seed, self.round)
        sigma = self.sum_noise_multiplier * C / m
        if not math.isfinite(sigma):
            raise ValueError(f"the noise standard deviation noise_multiplier * clip_norm / "
                             f"{m} overflows float64; lower clip_norm")
        if sigma > 0:
            KP.add_gaussian(out, stream(key, 0), sigma)
        V.finite_result(out, "the noisy mean")
        new_clip = C
        if self.adaptive:
            below = float(np.count_nonzero((norms <= C) & ~bad))
            if self.noise_multiplier > 0 and self.count_noise_multiplier > 0:
                noise = np.zeros(1)
                KP.add_gaussian(noise, stream(key, 1), self.count_noise_multiplier)
                below += float(noise[0])
            step = -self.clip_lr * (below / m - self.target_quantile)
            new_clip = C * math.exp(step) if step < 709.0 else math.inf
            if not (0.0 < new_clip < math.inf):
                raise ValueError(f"the adaptive clipping norm left the float64 range "
                                 f"({C:.6g} * exp({step:.6g})); lower clip_lr")
        clipped = np.flatnonzero((w < 1.0) & ~bad)
        res = DPAggregate(out, C, clipped, np.flatnonzero(bad), float(sigma))
        self._clip = new_clip
        self.round += 1
        return res

    def state_dict(self):
        """The state that changes between rounds, as plain numbers."""
        return {"clip_norm": self._clip, "round": self.round}

    def load_state_dict(self, state):
        """Resume from :meth:`state_dict` (validated before anything changes)."""
        if not isinstance(state, dict) or set(state) != {"clip_norm", "round"}:
            raise ValueError("state must be a dict with keys 'clip_norm' and 'round'")
        c = V.check_number("state['clip_norm']", state["clip_norm"], low=0, low_open=True)
        r = V.check_number("state['round']", state["round"], low=0, integer=True)
        self._clip, self.round = c, r
        return self


def _make(options, expected_clients, seed):
    """Central DP as a rule of the registry: its state lives across rounds."""
    return CentralDP(options["clip_norm"], options["noise_multiplier"],
                     target_quantile=options["target_quantile"], clip_lr=options["clip_lr"],
                     count_noise_multiplier=options["count_noise_multiplier"],
                     expected_clients=expected_clients, seed=seed)


rules.register(rules.Rule(
    "central_dp", rules.ALL_UPDATES,
    {"clip_norm": 1.0, "noise_multiplier": 1.0, "target_quantile": None, "clip_lr": 0.2,
     "count_noise_multiplier": None},
    make=_make, summary="DP-FedAvg: clipped mean plus Gaussian noise (CentralDP)"))
