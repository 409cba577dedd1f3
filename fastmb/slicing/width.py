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
from ..kernels import slicing as KS
from ..learn import gradients as G
from ..learn import training as T
from ..learn.options import TrainOptions
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
    marks = np.zeros(model.n_params, np.bool_)   # (a marking pass: np.unique sorts)
    marks[idx] = True
    if np.count_nonzero(marks) != idx.shape[0]:
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
        self.add_all([(update, sl)], [weight])

    def add_all(self, updates, weights):
        """Add clients' ``(update, slice)`` pairs (as :func:`train_width_clients` returns
        them) with their ``weights``, in one kernel call (``kernels/slicing.py``); the same
        sums as adding them one by one. Each distinct slice is checked once, and nothing is
        added unless every update is valid."""
        pairs = list(updates)
        w = V._as_numeric("weights", weights).astype(np.float64, copy=False).ravel()
        if w.shape[0] != len(pairs):
            raise ValueError(f"weights must have one weight per update ({len(pairs)}), got "
                             f"{w.shape[0]}")
        for k, wk in enumerate(w.tolist()):
            V.check_number(f"weights[{k}]", wk, low=0)
        maps, which, seen, parts = [], [], {}, []
        for k, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(f"updates[{k}] must be an (update, WidthSlice) pair")
            u, sl = pair
            key = id(sl)
            if key not in seen:
                seen[key] = len(maps)
                maps.append(check_slice(self.model, sl, "slice" if len(pairs) == 1
                                        else f"updates[{k}]'s slice"))
            s = seen[key]
            name = "update" if len(pairs) == 1 else f"updates[{k}]"
            u = V._as_numeric(name, u)
            if u.shape != (maps[s].shape[0],):
                raise ValueError(f"{name} must have the slice's {maps[s].shape[0]} parameters, "
                                 f"got shape {u.shape}")
            if not np.isfinite(u).all():
                raise ValueError(f"{name} contains NaN or Inf")
            which.append(s)
            parts.append(u)
        if not pairs:
            return
        KS.width_scatter(self._sum, self._weight, np.concatenate(parts, dtype=np.float64),
                         _offsets([p.shape[0] for p in parts]), np.concatenate(maps),
                         _offsets([m.shape[0] for m in maps]), np.array(which, np.int64), w)
        self.count += len(pairs)

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


def train_width_clients(model, params, X, y, client_offsets, rates, *, shift=0, rows=None,
                        clients=None, epochs=1, max_steps=None, sample_weight=None, **options):
    """Local training of clients at different widths, from the global ``params``, in one
    kernel call.

    Client k trains the sub-model ``width_slice(model, rates[k], shift=shift)`` on its rows
    as :func:`fastmb.train_clients` trains it (each client shuffles with its own stream),
    and gets the same bits: ``train_clients(sl.model, params[sl.index], ...,
    clients=[k])``. All clients, whatever their widths, train in one call of the width
    kernel (``kernels/slicing.py``): the threads take clients of every width from one
    queue, largest work first, so the small devices' clients fill the time the large
    ones take.

    Parameters
    ----------
    model, params, X, y, client_offsets, rows, clients, epochs, max_steps, sample_weight
        As in :func:`fastmb.train_clients`.
    rates : sequence of float (n_clients,)
        Each client's width rate in (0, 1].
    shift : int
        The window's start (FedRolex: the round number), as in :func:`width_slice`.
    **options
        The training options of :func:`fastmb.train_clients` (``batch_size``, ``lr``,
        ``momentum``, ``optimizer``, ...); the CPU only.

    Returns
    -------
    list of (sub-model parameters, WidthSlice), one per trained client, in ``clients``
    order. The parameter arrays are views of one buffer.

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
    opts = TrainOptions(**options)
    b, plan = T.plan_training(model, params, X, y, client_offsets, rows, opts, sample_weight)
    n_clients = plan.offsets.shape[0] - 1
    ids, ep, steps = T._selection(n_clients, clients, epochs, max_steps)
    T.check_steps(plan.offsets, ids, ep, opts.batch_size)
    r = V._as_numeric("rates", rates)
    if r.shape != (n_clients,):
        raise ValueError(f"rates must have one rate per client ({n_clients}), got shape "
                         f"{r.shape}")
    all_rates = [check_rate(v, f"rates[{k}]") for k, v in enumerate(r.tolist())]
    chosen = [all_rates[k] for k in ids.tolist()]
    distinct = sorted(set(chosen), reverse=True)
    subs = [width_slice(model, rate, shift=shift) for rate in distinct]
    position = {rate: i for i, rate in enumerate(distinct)}
    rate_of = np.array([position[rate] for rate in chosen], np.int64)
    out, out_off, bad = _run_width(plan, b.params, subs, rate_of, ids, ep, steps)
    plan.raise_bad(bad)
    result = []
    for i in range(ids.shape[0]):
        u = out[out_off[i]:out_off[i + 1]]
        if not np.isfinite(u).all():
            raise ValueError(f"training diverged: the parameters of client {int(ids[i])} "
                             f"overflowed {u.dtype}; lower lr or scale the inputs")
        result.append((u, subs[rate_of[i]]))
    return result


def _offsets(counts):
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _run_width(plan, params, subs, rate_of, ids, epochs, max_steps):
    """``TrainPlan.run`` for sub-models: client i trains ``subs[rate_of[i]]`` from its part
    of ``params``; returns the flat ``out`` (client i at ``out[out_off[i]:out_off[i + 1]]``),
    ``out_off`` and ``bad``. The same chunks of work and thread tasks as ``TrainPlan.run``,
    each client's work counted with its own number of parameters."""
    K = ids.shape[0]
    n_params = np.array([s.model.n_params for s in subs], np.int64)
    p0_off = _offsets(n_params)
    P0 = np.ascontiguousarray(np.concatenate([params[s.index] for s in subs]))
    Pk = n_params[rate_of]
    out_off = _offsets(Pk)
    out = np.empty(out_off[-1], params.dtype)
    bad = np.full(K, -1, np.int64)
    lays = [s.model.layout for s in subs]
    # the sub-models' layouts stacked, a row each (same depth, activation and loss)
    stack = lays[0]._replace(**{f: np.stack([getattr(lay, f) for lay in lays])
                                for f in ("sizes", "w_off", "b_off", "u_off")})
    starts, ends, keys = plan.client_rows(ids)
    kernel = KS.WIDTH[plan.record.path]
    per_param = plan.options.state_size(1)   # optimizer state per parameter: 0, 1 or 2
    mom, v_off = None, None
    for g0, g1, e_lo, e_hi, split, order, tasks in plan.calls(starts, ends, epochs,
                                                              max_steps, Pk):
        if e_lo == 0:
            v_off = _offsets(Pk[g0:g1] * (per_param if split else 0))
            mom = np.empty(v_off[-1], params.dtype)
        T.launch(kernel, (P0, p0_off, plan.X, plan.yc, plan.yr, plan.sw, stack,
                          rate_of[g0:g1], plan.idx, starts[g0:g1], ends[g0:g1], keys[g0:g1],
                          epochs[g0:g1], max_steps[g0:g1], e_lo, e_hi, plan.record,
                          out[out_off[g0]:out_off[g1]], out_off[g0:g1 + 1] - out_off[g0],
                          mom, v_off, bad[g0:g1], order), tasks)
    return out, out_off, bad


def evaluate_width(model, params, X, y, rate, *, shift=0):
    """:func:`fastmb.evaluate` of ``model``'s sub-model at ``rate`` (elastic inference)."""
    sl = width_slice(model, rate, shift=shift)
    return G.evaluate(sl.model, V.as_params(model, params)[sl.index], X, y)
