"""Privacy accounting through Google's ``dp-accounting`` library (RDP or privacy-loss
distribution accountant); fastmb has no accountant of its own. Install it with
``pip install "fastmb[privacy]"``; it is imported only when an accounting function runs."""

from __future__ import annotations

import math

import numpy as np

from .. import _validation as V

_ACCOUNTANTS = ("rdp", "pld")


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("privacy accounting needs the dp-accounting package: "
                          "pip install 'fastmb[privacy]'") from e
    return dp_accounting


def _accounting_args(sample_rate, steps, delta, accountant):
    q = V.check_number("sample_rate", sample_rate, low=0, high=1, low_open=True)
    t = V.check_number("steps", steps, low=0, integer=True)
    d = V.check_number("delta", delta, low=0, high=1, low_open=True)
    if d >= 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if accountant not in _ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {_ACCOUNTANTS}, got {accountant!r}")
    return q, t, d


def _event(dpa, z, q, t):
    gauss = dpa.GaussianDpEvent(z)
    step = gauss if q == 1.0 else dpa.PoissonSampledDpEvent(q, gauss)
    return dpa.SelfComposedDpEvent(step, t)


def _fresh(dpa, accountant):
    return dpa.rdp.RdpAccountant() if accountant == "rdp" else dpa.pld.PLDAccountant()


def epsilon(noise_multiplier, sample_rate, steps, delta, accountant="rdp"):
    """Privacy spent, ε for the given δ, by ``steps`` subsampled Gaussian steps.

    Each step samples each record (a sample in DP-SGD, a client in central DP) with
    probability ``sample_rate`` (Poisson sampling) and adds Gaussian noise of standard
    deviation ``noise_multiplier`` times the clipping norm. The accountant is
    ``dp-accounting``'s: Rényi DP (``"rdp"``, as Opacus and TensorFlow Privacy report),
    or the tighter privacy loss distribution (``"pld"``).

    fastmb's :func:`~fastmb.sgd` walks through shuffled fixed-size batches rather than
    Poisson samples; taking ``sample_rate = batch_size / n`` for it is the usual
    approximation (Opacus makes the same one when ``poisson_sampling=False``).

    Parameters
    ----------
    noise_multiplier : float >= 0
        0 means no noise: ε is infinite.
    sample_rate : float in (0, 1]
    steps : int >= 0
    delta : float in (0, 1)
    accountant : {"rdp", "pld"}, default "rdp"

    Returns
    -------
    float

    Examples
    --------
    >>> import fastmb.privacy as P
    >>> round(P.epsilon(1.1, 0.01, 10_000, 1e-5), 2)   # 100 epochs of batch 1% (RDP)
    5.63
    """
    z = V.check_number("noise_multiplier", noise_multiplier, low=0)
    q, t, d = _accounting_args(sample_rate, steps, delta, accountant)
    if t == 0:
        return 0.0
    if z == 0:
        return math.inf
    dpa = _dp_accounting()
    acc = _fresh(dpa, accountant)
    try:
        with np.errstate(all="ignore"):
            acc.compose(_event(dpa, z, q, t))
            eps = float(acc.get_epsilon(d))
    except (OverflowError, ZeroDivisionError, FloatingPointError) as exc:
        raise ValueError(f"the {accountant} accountant cannot compute epsilon for "
                         f"noise_multiplier={z}, sample_rate={q}, steps={t}: {exc}") from None
    if math.isnan(eps):
        raise ValueError(f"the {accountant} accountant returned NaN for noise_multiplier={z}, "
                         f"sample_rate={q}, steps={t}")
    return eps


def noise_multiplier_for(target_epsilon, sample_rate, steps, delta, accountant="rdp"):
    """The smallest noise multiplier whose :func:`epsilon` is at most ``target_epsilon``.

    Found by ``dp_accounting.calibrate_dp_mechanism`` (a bracketed search over the
    accountant); see :func:`epsilon` for the arguments.

    Examples
    --------
    >>> import fastmb.privacy as P
    >>> z = P.noise_multiplier_for(8.0, 0.01, 10_000, 1e-5)
    >>> P.epsilon(z, 0.01, 10_000, 1e-5) <= 8.0
    True
    """
    eps = V.check_number("target_epsilon", target_epsilon, low=0, low_open=True)
    q, t, d = _accounting_args(sample_rate, steps, delta, accountant)
    if t == 0:
        return 0.0
    dpa = _dp_accounting()
    bracket = dpa.LowerEndpointAndGuess(1e-3, 1.0)
    try:
        with np.errstate(all="ignore"):
            z = dpa.calibrate_dp_mechanism(lambda: _fresh(dpa, accountant),
                                           lambda s: _event(dpa, s, q, t), eps, d, bracket,
                                           tol=1e-4)
    except (OverflowError, ZeroDivisionError, FloatingPointError) as exc:
        raise ValueError(f"the {accountant} accountant cannot calibrate a noise multiplier "
                         f"for target_epsilon={eps}, sample_rate={q}, steps={t}: {exc}") from None
    return float(z)
