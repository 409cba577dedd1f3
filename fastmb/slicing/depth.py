"""Depth slices: layers ``[start, stop)`` of a model, forward and backward, on their own.

A model of L layers cut at ``c`` (``1 <= c < L``) is two slices, ``[0, c)`` (the model's
input to the activations at the cut) and ``[c, L)`` (those activations to the model's raw
outputs). Every function takes the whole model and its whole flat parameter vector, and
the slice's range; a slice's own parameters are one contiguous block of that vector
(:func:`param_range`), so a device that holds only a slice holds only that block.

What crosses a cut, each way, is an explicit (n, width) array: the activations at the cut
going up, the loss's gradient with respect to them coming down. The slices compute what
the unsplit model computes, operation for operation (``kernels/slicing.py``): a forward
pass split at any cut gives :func:`fastmb.predict`'s outputs bit for bit, and gradients
joined across a cut are the whole model's per-row gradients (the range ``[0, L)``: the
arithmetic of SGD's sample-by-sample path) bit for bit. :func:`fastmb.per_sample_grad`
runs a block of rows through matrix products, another summation order: the joined
gradients equal its results to rounding (1e-12 in float64, 1e-5 in float32).
"""

from __future__ import annotations

import numpy as np

from .. import _device
from .. import _validation as V
from ..kernels import slicing as KS


def check_range(model, start, stop, name="slice"):
    """``(start, stop)`` checked: integers with ``0 <= start < stop <= model.n_layers``."""
    V.check_model(model)
    L = model.n_layers
    start = V.check_number(f"{name} start", start, low=0, integer=True)
    stop = L if stop is None else V.check_number(f"{name} stop", stop, low=1, integer=True)
    if not start < stop <= L:
        raise ValueError(f"{name} [{start}, {stop}) must satisfy 0 <= start < stop <= "
                         f"{L} (the model's layers)")
    return start, stop


def check_cut(model, cut, name="cut"):
    """A cut between two layers: an integer in ``[1, n_layers)``."""
    V.check_model(model)
    L = model.n_layers
    c = V.check_number(name, cut, low=1, integer=True)
    if c >= L:
        raise ValueError(f"{name} must be in [1, {L}) for a model of {L} layers (a cut lies "
                         f"between two layers), got {c}")
    return c


def param_range(model, start, stop=None):
    """``(p0, p1)``: the slice's parameters are ``params[p0:p1]`` (weights then bias, layer
    after layer).

    Examples
    --------
    >>> import fastmb
    >>> from fastmb.slicing import param_range
    >>> param_range(fastmb.MLP([4, 3, 2]), 1, 2)   # 4*3 + 3 parameters come first
    (15, 23)
    """
    start, stop = check_range(model, start, stop)
    lay = model.layout
    p0 = int(lay.w_off[start])
    p1 = model.n_params if stop == model.n_layers else int(lay.w_off[stop])
    return p0, p1


def _inputs(model, params, A, start, name, dense=False):
    """The slice's input rows as the kernels read them: the model's input (dense or
    sparse; ``dense``: dense only, for the GPU) for ``start = 0``, a dense (n, width) float
    array at a cut."""
    if start == 0:
        return V.as_X(model, A, params.dtype, name, sparse=not dense)
    if V.is_sparse(A):
        raise TypeError(f"{name}: the activations at cut {start} must be a dense array")
    A = V._as_numeric(name, A)
    width = model.sizes[start]
    if A.ndim != 2 or A.shape[1] != width or A.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, {width}) array (the activations "
                         f"at cut {start}), got shape {A.shape}")
    return V.kernel_array(A, params.dtype)


def forward(model, params, A, start=0, stop=None, *, device="cpu"):
    """Outputs of layers ``[start, stop)`` for the input rows ``A``.

    Parameters
    ----------
    model : fastmb.Linear or fastmb.MLP
    params : (P,) array
        The whole model's parameters (only the slice's block is read).
    A : array (n, model.sizes[start])
        The model's input X when ``start = 0`` (dense or SciPy sparse), else the
        activations at the cut ``start``.
    start, stop : int
        ``0 <= start < stop <= n_layers``; ``stop`` defaults to the last layer.
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"``: one thread block per row on the GPU (``kernels/cuda/slicing.py``),
        NumPy arrays in and out, dense inputs only; results agree with the CPU to float32
        rounding.

    Returns
    -------
    (n, model.sizes[stop]) array
        The activations leaving layer ``stop - 1`` (after the hidden activation), or the
        raw outputs (:func:`fastmb.decision_function`'s values) when ``stop`` is the last
        layer.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import forward
    >>> model = fastmb.MLP([4, 8, 6, 3]); p = model.init(seed=0)
    >>> X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    >>> H = forward(model, p, X, 0, 2)          # the client's slice: activations at cut 2
    >>> bool((forward(model, p, H, 2) == fastmb.decision_function(model, p, X)).all())
    True
    """
    start, stop = check_range(model, start, stop)
    params = V.as_params(model, params)
    gpu = _device.gpu(device)
    X = _inputs(model, params, A, start, "A", dense=gpu is not None)
    if gpu is not None:
        out = gpu.slice_forward(model, params, X, start, stop)
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            V.raise_bad_row(X, int(bad[0]), overflow="the slice's outputs")
        return out
    out = np.empty((V.n_samples(X), model.sizes[stop]), params.dtype)
    row = KS.slice_forward(params, X, start, stop, model.layout, out)
    if row >= 0:
        V.raise_bad_row(X, row, overflow="the slice's outputs")
    return out


def backward(model, params, A, G_out, start=0, stop=None, *, per_sample=False, device="cpu"):
    """The backward pass of layers ``[start, stop)``.

    Parameters
    ----------
    model, params, A, start, stop
        As in :func:`forward` (``A`` is the slice's input, as the forward pass got it).
    G_out : array (n, model.sizes[stop])
        The loss's gradient with respect to the slice's outputs, row by row: what the slice
        above sent down, or for the last layer the output deltas (the loss's derivative
        with respect to the raw outputs).
    per_sample : bool, default False
        Return each row's parameter gradient instead of their sum.
    device : {"cpu", "cuda"}, default "cpu"
        As in :func:`forward`; the sum runs in float64 per block of rows on the GPU.

    Returns
    -------
    grad : (P_slice,) or (n, P_slice) array
        The slice's parameter gradient (``params[p0:p1]``'s coordinates, see
        :func:`param_range`): the sum over the rows (task partial sums merged in float64),
        or per row.
    G_in : (n, model.sizes[start]) array or None
        The gradient with respect to the slice's input (None for ``start = 0``): what this
        slice sends down the cut.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import backward, forward
    >>> model = fastmb.MLP([3, 4, 2]); p = model.init(seed=1)
    >>> X = np.ones((2, 3)); p = p.astype(np.float64)
    >>> H = forward(model, p, X, 0, 1)
    >>> g_top, G_cut = backward(model, p, H, np.ones((2, 2)), 1)
    >>> g_bottom, _ = backward(model, p, X, G_cut, 0, 1)
    >>> g_top.shape, G_cut.shape, g_bottom.shape
    ((10,), (2, 4), (16,))
    """
    start, stop = check_range(model, start, stop)
    params = V.as_params(model, params)
    gpu = _device.gpu(device)
    X = _inputs(model, params, A, start, "A", dense=gpu is not None)
    n = V.n_samples(X)
    G_out = V._as_numeric("G_out", G_out)
    if G_out.shape != (n, model.sizes[stop]):
        raise ValueError(f"G_out must have shape {(n, model.sizes[stop])} (a gradient per "
                         f"output of the slice, per row of A), got {G_out.shape}")
    G_out = V.kernel_array(G_out, params.dtype)
    p0, p1 = param_range(model, start, stop)
    if gpu is not None:
        bad = np.flatnonzero(~np.isfinite(G_out).all(axis=1))
        if bad.size:
            raise ValueError(f"G_out contains NaN or Inf (row {int(bad[0])})")
        if start > 0:
            bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
            if bad.size:
                V.raise_bad_row(X, int(bad[0]))
        return gpu.slice_backward(model, params, X, G_out, start, stop, p0, p1,
                                  bool(per_sample))
    n_tasks = -(-n // KS.ROWS_PER_TASK)
    out = np.empty((n if per_sample else n_tasks, p1 - p0), params.dtype)
    G_in = np.empty((n, model.sizes[start]) if start > 0 else (0, 0), params.dtype)
    row = KS.slice_backward(params, X, G_out, start, stop, model.layout, bool(per_sample),
                            G_in, out)
    if row >= 0:
        if not np.isfinite(G_out[row]).all():
            raise ValueError(f"G_out contains NaN or Inf (row {row})")
        V.raise_bad_row(X, row, overflow="the slice's gradient")
    grad = out if per_sample else out.sum(axis=0, dtype=np.float64).astype(params.dtype)
    return V.finite_result(grad, "the slice's gradient"), (G_in if start > 0 else None)


def loss_head(model, F, y):
    """The loss at the top of the model: ``(mean loss, D)`` for raw outputs ``F``
    (n, n_outputs), where ``D[r]`` is the derivative of row r's loss with respect to
    ``F[r]``: what the last slice's :func:`backward` takes as ``G_out`` (the mean loss's
    gradient is that backward's sum divided by n). Labels as in :func:`fastmb.loss`;
    ``F``'s dtype (float32 or float64) is kept.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import loss_head
    >>> value, D = loss_head(fastmb.Linear(2, 1, loss="squared"), np.array([[3.0]]), [1.0])
    >>> value, D
    (2.0, array([[2.]]))
    """
    V.check_model(model)
    F = V._as_numeric("F", F)
    if F.ndim != 2 or F.shape[1] != model.n_outputs or F.shape[0] == 0:
        raise ValueError(f"F must be a non-empty (n, {model.n_outputs}) array of raw "
                         f"outputs, got shape {F.shape}")
    F = V.kernel_array(F, V.float_dtype(F))
    yc, yr = V.as_y(model, y, F.shape[0], F.dtype)
    D = np.empty_like(F)
    value, row = KS.output_deltas(F, yc, yr, model.layout, D)
    if row >= 0:
        raise ValueError(f"the loss of row {row} is not finite (F or its label)")
    return float(value), D
