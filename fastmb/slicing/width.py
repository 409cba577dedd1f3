"""Width slices: sub-models for weaker devices (HeteroFL, FedRolex), and their aggregation.

A device of capacity ``rate`` (in (0, 1]) holds a sub-model that keeps ``ceil(rate * n)``
units of every hidden layer of width n; the inputs and outputs stay full width. Its
parameters are a subset of the full model's flat vector, given by an integer index map
(:class:`WidthSlice`), so a sub-model is trained with every fastmb function (it is a
plain :class:`fastmb.MLP`) and its update is scattered back through the map.

* HeteroFL (Diao et al. 2021): the first ``ceil(rate * n)`` units (``shift=0``).
* FedRolex (Alam et al. 2022): a window of ``ceil(rate * n)`` consecutive units starting at
  ``shift`` and wrapping around; the server moves it each round (``shift = round``), so
  every unit is trained by the small devices in turn.

:class:`WidthMean` aggregates sub-model updates per parameter over the clients that hold
it (weighted by their examples); parameters no client held keep their value. With every
rate 1 it is FedAvg.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from .. import _validation as V
from ..learn import gradients as G
from ..learn.training import train_clients
from ..models import MLP


class WidthSlice(NamedTuple):
    """A sub-model of a model: ``model`` (an :class:`fastmb.MLP` of the kept widths),
    ``index`` (its parameters are ``params[index]`` of the full model, in its own order),
    the ``rate`` and the window's ``shift``, and ``units``: the full model's unit numbers
    kept in each layer (all of them for the input and output layers)."""

    model: MLP
    index: np.ndarray
    rate: float
    shift: int
    units: tuple


def check_rate(rate, name="rate"):
    """A width rate: a number in (0, 1]."""
    r = V.check_number(name, rate, low=0, low_open=True)
    if r > 1:
        raise ValueError(f"{name} must be in (0, 1] (the share of each hidden layer's units "
                         f"a device keeps), got {r}")
    return float(r)


def kept_units(n, rate, shift=0):
    """The ``ceil(rate * n)`` units a slice keeps of a layer of n: ``shift``, ``shift + 1``,
    ... (modulo n)."""
    k = max(1, math.ceil(check_rate(rate) * n - 1e-9))
    return (int(shift) + np.arange(k, dtype=np.int64)) % n


def width_slice(model, rate, *, shift=0):
    """The sub-model of ``model`` at width ``rate`` (HeteroFL for ``shift=0``, a FedRolex
    window otherwise).

    Parameters
    ----------
    model : fastmb.MLP or fastmb.Linear
        A Linear model has no hidden layer: its slice is the whole model.
    rate : float in (0, 1]
    shift : int >= 0
        Where the window of kept units starts in each hidden layer.

    Returns
    -------
    WidthSlice

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import width_slice
    >>> model = fastmb.MLP([4, 10, 6, 3])
    >>> s = width_slice(model, 0.5)
    >>> s.model.sizes, s.index.shape[0] == s.model.n_params
    ((4, 5, 3, 3), True)
    >>> p = model.init(seed=0)
    >>> X = np.ones((2, 4), np.float32)
    >>> fastmb.predict(s.model, p[s.index], X).shape      # elastic inference at rate 0.5
    (2,)
    """
    V.check_model(model)
    rate = check_rate(rate)
    shift = V.check_number("shift", shift, low=0, integer=True)
    sizes = model.sizes
    L = model.n_layers
    units = [np.arange(sizes[0], dtype=np.int64)]
    for h in sizes[1:L]:
        units.append(kept_units(h, rate, shift))
    units.append(np.arange(sizes[L], dtype=np.int64))
    lay = model.layout
    parts = []
    for l in range(L):
        ins, outs = units[l], units[l + 1]
        nout = sizes[l + 1]
        parts.append((lay.w_off[l] + ins[:, None] * nout + outs[None, :]).ravel())
        if lay.b_off[l] >= 0:
            parts.append(lay.b_off[l] + outs)
    index = np.ascontiguousarray(np.concatenate(parts), dtype=np.int64)
    sub_sizes = [int(u.shape[0]) for u in units]
    if L == 1:
        sub = model
    else:
        sub = MLP(sub_sizes, activation=model.activation, loss=model.loss,
                  fit_intercept=model.fit_intercept, huber_delta=model.huber_delta)
    return WidthSlice(sub, index, rate, shift, tuple(units))


def check_slice(model, sl, name="slice"):
    """``sl`` checked against ``model``: its index map must be a set of distinct positions
    of ``model``'s vector, one per parameter of its sub-model (the map reaches kernels)."""
    if not isinstance(sl, WidthSlice):
        raise TypeError(f"{name} must be a WidthSlice (fastmb.slicing.width_slice), got "
                        f"{type(sl).__name__}")
    V.check_model(sl.model)
    idx = V.as_index_array(f"{name}.index", sl.index, high=model.n_params,
                           length=sl.model.n_params)
    if np.unique(idx).shape[0] != idx.shape[0]:
        raise ValueError(f"{name}.index repeats positions: it does not map a sub-model of "
                         "this model")
    if sl.model.sizes[0] != model.sizes[0] or sl.model.sizes[-1] != model.sizes[-1]:
        raise ValueError(f"{name}: its inputs and outputs ({sl.model.sizes[0]}, "
                         f"{sl.model.sizes[-1]}) must be the model's ({model.sizes[0]}, "
                         f"{model.sizes[-1]})")
    return idx


def multiply_adds(model, rate=1.0, *, shift=0):
    """Multiply-adds of one prediction of ``model`` at width ``rate`` (the weights' count):
    what elastic inference saves is ``multiply_adds(model) - multiply_adds(model, rate)``.

    Examples
    --------
    >>> import fastmb
    >>> from fastmb.slicing import multiply_adds
    >>> m = fastmb.MLP([64, 64, 10])
    >>> multiply_adds(m), multiply_adds(m, 0.25)
    (4736, 1184)
    """
    sizes = width_slice(model, rate, shift=shift).model.sizes
    return int(sum(a * b for a, b in itertools.pairwise(sizes)))


class WidthMean:
    """A streaming weighted mean of sub-model updates, per parameter over the clients that
    hold it: ``out[j] = sum_k w_k u_k[j] / sum_k w_k`` over the clients k whose slice holds
    j; a parameter no client held keeps its value in :meth:`result`.

    Sums are float64, clients added in order (each slice's positions are distinct, so an
    update adds to each of its parameters once). With every slice the whole model it is
    the FedAvg mean (to rounding: the fedavg kernel groups the clients by four).

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import WidthMean, width_slice
    >>> model = fastmb.MLP([2, 4, 1], loss="squared"); p = np.zeros(model.n_params)
    >>> full, half = width_slice(model, 1.0), width_slice(model, 0.5)
    >>> agg = WidthMean(model)
    >>> agg.add(np.ones(full.model.n_params), full, weight=1)
    >>> agg.add(np.full(half.model.n_params, 3.0), half, weight=1)
    >>> out = agg.result(p)
    >>> sorted(set(out.tolist()))    # 2 where both hold a parameter, 1 where only one does
    [1.0, 2.0]
    """

    def __init__(self, model):
        self.model = V.check_model(model)
        self._sum = np.zeros(model.n_params, np.float64)
        self._weight = np.zeros(model.n_params, np.float64)
        self.count = 0

    def add(self, update, sl, weight=1.0):
        """Add one client's sub-model parameters ``update`` (its slice ``sl``)."""
        idx = check_slice(self.model, sl)
        u = V._as_numeric("update", update)
        if u.shape != (idx.shape[0],):
            raise ValueError(f"update must have the slice's {idx.shape[0]} parameters, got "
                             f"shape {u.shape}")
        if not np.isfinite(u).all():
            raise ValueError("update contains NaN or Inf")
        w = V.check_number("weight", weight, low=0)
        self._sum[idx] += w * u.astype(np.float64)
        self._weight[idx] += w
        self.count += 1

    def held(self):
        """Boolean mask of the parameters some client added."""
        return self._weight > 0

    def result(self, params):
        """``params`` (copied) with every held parameter replaced by its mean."""
        p = V.as_params(self.model, params)
        out = p.copy()
        held = self.held()
        out[held] = (self._sum[held] / self._weight[held]).astype(p.dtype)
        return V.finite_result(out, "the width mean")


def train_width_clients(model, params, X, y, client_offsets, rates, *, shift=0, clients=None,
                        **options):
    """Local training of clients at different widths, from the global ``params``.

    Client k trains the sub-model ``width_slice(model, rates[k], shift=shift)`` on its rows
    (as :func:`fastmb.train_clients`; each client shuffles with its own stream). The
    clients of one rate train in one kernel call (their sub-model is one model); the
    rates' calls run one after the other.

    Parameters
    ----------
    model, params, X, y, client_offsets, clients, **options
        As in :func:`fastmb.train_clients`.
    rates : sequence of float (n_clients,)
        Each client's width rate in (0, 1].
    shift : int
        The window's start (FedRolex: the round number), as in :func:`width_slice`.

    Returns
    -------
    list of (sub-model parameters, WidthSlice), one per trained client, in ``clients``
    order.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import WidthMean, train_width_clients
    >>> model = fastmb.MLP([6, 16, 3]); p = model.init()
    >>> X = np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32)
    >>> y = np.arange(60) % 3
    >>> out = train_width_clients(model, p, X, y, [0, 20, 40, 60], [1.0, 0.5, 0.25], lr=0.1)
    >>> [s.model.sizes[1] for _, s in out]
    [16, 8, 4]
    >>> agg = WidthMean(model)
    >>> for (u, s), n in zip(out, [20, 20, 20]):
    ...     agg.add(u, s, weight=n)
    >>> agg.result(p).shape == p.shape
    True
    """
    V.check_model(model)
    p = V.as_params(model, params)
    off = V.as_offsets("client_offsets", client_offsets, V.n_samples(X), "rows of X")
    K = off.shape[0] - 1
    r = V._as_numeric("rates", rates)
    if r.shape != (K,):
        raise ValueError(f"rates must have one rate per client ({K}), got shape {r.shape}")
    rates = [check_rate(v, f"rates[{k}]") for k, v in enumerate(r.tolist())]
    ids = np.arange(K) if clients is None else V.as_index_array("clients", clients, high=K)
    out = [None] * ids.shape[0]
    for rate in sorted({rates[k] for k in ids}, reverse=True):
        pos = np.flatnonzero(np.array([rates[k] == rate for k in ids]))
        sl = width_slice(model, rate, shift=shift)
        U = train_clients(sl.model, p[sl.index], X, y, off, clients=ids[pos], **options)
        for i, row in zip(pos, U):
            out[i] = (row, sl)
    return out


def evaluate_width(model, params, X, y, rate, *, shift=0):
    """:func:`fastmb.evaluate` of ``model``'s sub-model at ``rate`` (elastic inference)."""
    sl = width_slice(model, rate, shift=shift)
    return G.evaluate(sl.model, V.as_params(model, params)[sl.index], X, y)
