"""The one registry of aggregation rules: what a round can aggregate its updates with.

A :class:`Rule` is a name, its options (defaults; the rule checks the values), what it needs
from a round, and how to run it. The simulation, ``fastmb simulate`` (its choices, help and
config checks) and the Dask executor read this registry, and nothing else lists rule names:
a new rule is registered once, here, or by the module that defines it (central DP registers
itself from :mod:`fastmb.privacy`, a layer above this one).

What a rule needs decides how an executor computes it:

* ``WEIGHTED_SUM``: a weighted sum of the updates, so each shard of clients adds its own
  partial sum and the partials merge (FedAvg). No process holds the whole stack.
* ``COORDINATES``: every coordinate is computed from that coordinate alone, so coordinate
  blocks of the stack can be aggregated apart (median, trimmed mean).
* ``ALL_UPDATES``: the rule needs every update at once (distances, norms, noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import _validation as V
from . import robust as R
from .mean import nonfinite_rows

WEIGHTED_SUM, COORDINATES, ALL_UPDATES = "weighted_sum", "coordinates", "all_updates"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One aggregation rule of the registry.

    Attributes
    ----------
    name : str
    needs : {"weighted_sum", "coordinates", "all_updates"}
        What it reads from a round (module notes).
    options : mapping
        Option name -> default; other names are refused.
    run : callable, optional
        ``run(updates, weights=..., **options)`` returning a :class:`RobustAggregate` (the
        weights only when ``weighted``). None for FedAvg, which the engine sums itself.
    weighted : bool
        Takes the clients' weights (their example counts).
    make : callable, optional
        For a rule with state across rounds: ``make(options, expected_clients, seed)``
        returns an object whose ``aggregate(updates)`` runs one round (central DP).
    summary : str
        One line, for help texts.
    """

    name: str
    needs: str
    options: Mapping[str, Any]
    run: Callable | None = None
    weighted: bool = False
    make: Callable | None = None
    summary: str = ""


_REGISTRY: dict[str, Rule] = {}


def register(rule):
    """Add ``rule`` to the registry (its name must be new)."""
    if rule.needs not in (WEIGHTED_SUM, COORDINATES, ALL_UPDATES):
        raise ValueError(f"rule {rule.name!r}: needs must be weighted_sum, coordinates or "
                         f"all_updates, got {rule.needs!r}")
    if rule.name in _REGISTRY:
        raise ValueError(f"a rule named {rule.name!r} is registered already")
    _REGISTRY[rule.name] = rule
    return rule


def names():
    """The registered rule names, in registration order."""
    return tuple(_REGISTRY)


def get(name):
    """The rule registered as ``name``; a ValueError lists the valid names."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown aggregator {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def options(name, given):
    """``given`` (a mapping or None) over the rule's defaults; unknown option names raise."""
    defaults = get(name).options
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ValueError(f"unknown option(s) {unknown} for aggregator {name!r}; valid: {valid}")
    return {**defaults, **given}


def check(name, opts, n_clients, dtype):
    """Run the rule once on zeros of a round's shape (``n_clients`` updates): a bad option (a
    type, a range) or a rule that needs more clients than a round has raises now, not in
    every round. Rules with state (``make``) are checked by building that state instead."""
    rule = get(name)
    if rule.run is None:
        return
    kw = dict(opts)
    if rule.weighted:
        kw["weights"] = np.ones(n_clients)
    try:
        rule.run(np.zeros((n_clients, 1), dtype), **kw)
    except R.TooFewClients as exc:
        raise ValueError(f"aggregator {name!r} cannot run on the {n_clients} clients of a "
                         f"round: {exc}") from None


def apply(name, opts, D, weights, state=None):
    """The rule on a stack of updates: ``(delta, used, rejected)``, rows of ``D``.

    ``D`` may hold NaN/Inf rows (rejected and reported). If no update is usable, or the
    rule has too few clients this round, or its aggregate overflows, the delta is None and
    the round keeps its parameters. ``state`` is the rule's :attr:`Rule.make` object.
    """
    bad = nonfinite_rows(D)
    if bad.all():
        return None, np.empty(0, np.int64), np.arange(D.shape[0])
    rule = get(name)
    if rule.make is not None:
        res = state.aggregate(D)
        used = np.setdiff1d(np.arange(D.shape[0]), res.rejected)
        return res.aggregate, used, res.rejected
    kw = dict(opts)
    if rule.weighted:
        kw["weights"] = weights
    try:
        res = rule.run(D, **kw)
    except (R.TooFewClients, V.ResultOverflow):
        # too few usable clients this round for the rule, or an aggregate beyond the dtype
        # (rejected as a whole, as an overflowing FedAvg is): the round keeps the parameters
        return None, np.empty(0, np.int64), np.flatnonzero(bad)
    return res.aggregate, np.asarray(res.used), np.asarray(res.rejected)


register(Rule("fedavg", WEIGHTED_SUM, {}, summary="weighted mean by example counts (FedAvg)"))
register(Rule("median", COORDINATES, {}, R.coordinate_median,
              summary="coordinate-wise median"))
register(Rule("trimmed_mean", COORDINATES, {"beta": 0.1}, R.trimmed_mean,
              summary="coordinate-wise trimmed mean"))
register(Rule("krum", ALL_UPDATES, {"n_byzantine": 1}, R.krum, summary="Krum"))
register(Rule("multi_krum", ALL_UPDATES, {"n_byzantine": 1, "m": None}, R.multi_krum,
              summary="Multi-Krum"))
register(Rule("bulyan", ALL_UPDATES, {"n_byzantine": 1}, R.bulyan, summary="Bulyan"))
register(Rule("geometric_median", ALL_UPDATES, {"nu": 1e-6, "max_iter": 100, "tol": 1e-6},
              R.geometric_median, weighted=True, summary="geometric median (RFA)"))
register(Rule("centered_clipping", ALL_UPDATES, {"tau": 1.0, "n_iter": 1}, R.centered_clipping,
              weighted=True, summary="centered clipping"))
register(Rule("norm_bounded", ALL_UPDATES, {"max_norm": 1.0}, R.norm_bounded_mean,
              weighted=True, summary="norm-bounded mean"))
