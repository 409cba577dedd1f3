"""Loss, gradients, per-sample gradients and predictions: one kernel call each."""

from __future__ import annotations

import numpy as np

from .. import _device
from .. import _validation as V
from ..kernels import gradients as K


class Batch:
    """Validated, converted arguments of one call: params, X, labels, weights."""

    __slots__ = ("X", "model", "n", "params", "sw", "yc", "yr")

    def __init__(self, model, params, X, y=None, sample_weight=None, labels=True):
        self.model = V.check_model(model)
        self.params = V.as_params(model, params)
        self.X = V.as_X(model, X, self.params.dtype)
        self.n = V.n_samples(self.X)
        if labels:
            self.yc, self.yr = V.as_y(model, y, self.n, self.params.dtype)
        self.sw = V.as_sample_weight(sample_weight, self.n)

    def check(self, row):
        """Raise for the row a kernel flagged (-1: none)."""
        if row >= 0:
            V.raise_bad_row(self.X, row)


def _n_chunks(n, P):
    """Row chunks for float64 partial sums: a function of the problem size only.

    At least 256 rows a chunk, at most 64 chunks, and at most 2**23 float64 partial
    sums in all (64 MiB) unless that leaves fewer than 2 chunks.
    """
    by_rows = -(-n // 256)
    by_memory = max(2, min(64, (1 << 23) // max(P, 1)))
    return max(1, min(by_rows, by_memory))


def loss_grad_batch(b, want_grad):
    m = b.model
    nc = _n_chunks(b.n, m.n_params)
    acc = np.empty((nc, m.n_params if want_grad else 0), np.float64)
    totals = np.empty((nc, 2), np.float64)
    g = np.empty(m.n_params if want_grad else 0, b.params.dtype)
    value, row = K.loss_grad(b.params, b.X, b.yc, b.yr, b.sw, m.layout, want_grad, acc, totals, g)
    b.check(row)
    V.finite_result(np.float64(value), "the mean loss")
    return float(value), V.finite_result(g, "the mean gradient")


def loss_blocks_batch(b):
    """The mean loss of a model with hidden layers, its rows through the layers in blocks
    (matrix products; ``kernels.gradients.loss_blocks``)."""
    totals = np.empty((-(-b.n // K.ROWS_PER_TASK), 2), np.float64)
    value, row = K.loss_blocks(b.params, b.X, b.yc, b.yr, b.sw, b.model.layout, totals)
    b.check(row)
    V.finite_result(np.float64(value), "the mean loss")
    return float(value)


def evaluate_batch(b):
    totals = np.empty((_n_chunks(b.n, 0), 2), np.float64)
    lsum, right = K.loss_correct(b.params, b.X, b.yc, b.yr, b.model.layout, totals)
    return {"loss": lsum / b.n, "accuracy": right / b.n if b.model.is_classifier else None}


def evaluate(model, params, X, y):
    """Mean loss and accuracy of ``model`` on ``(X, y)`` in one pass over the rows.

    Returns
    -------
    dict
        ``{"loss": mean loss (float64 sum), "accuracy": share of correct predictions}``;
        accuracy is None for regression. Predictions are as in :func:`predict`.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> model = fastmb.Linear(1, loss="logistic")
    >>> fastmb.evaluate(model, np.array([2.0, -1.0]), [[0.0], [1.0]], [0, 0])["accuracy"]
    0.5
    """
    b = Batch(model, params, X, y)
    if b.n == 0:
        raise ValueError("X is empty: nothing to evaluate")
    rows = V.nonfinite_rows(b.X)
    if rows.size:  # checked first: a NaN need not reach every loss (hinge's max(0, .))
        V.raise_bad_row(b.X, int(rows[0]))
    res = evaluate_batch(b)
    if not np.isfinite(res["loss"]):
        raise ValueError("the loss overflowed: the parameters or inputs are too large")
    return res


def loss(model, params, X, y, sample_weight=None, device="cpu"):
    """Mean loss of ``model`` with ``params`` on ``(X, y)``.

    Per sample: squared ``0.5 * sum((f - y)**2)``; Huber with threshold ``delta``;
    logistic ``log(1 + exp(f)) - y f`` (y in {0, 1}); hinge ``max(0, 1 - s f)`` with
    ``s = 2y - 1``; softmax cross-entropy. With ``sample_weight`` the mean is weighted:
    ``sum(w_i l_i) / sum(w_i)``. Summed in float64.

    Parameters
    ----------
    model : fastmb.Linear or fastmb.MLP
    params : (P,) array, float32 or float64
    X : (n, n_features) array
        Converted to the dtype of ``params`` (once, without touching the caller's array).
    y : (n,) class indices, or (n,) / (n, n_outputs) regression targets
    sample_weight : (n,) non-negative array, optional
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"`` runs the kernel on the GPU (numba-cuda, ``pip install "fastmb[cuda]"``).
        Arguments may then be NumPy arrays (copied to the GPU) or GPU arrays (numba device
        arrays, CuPy, PyTorch CUDA tensors: anything with ``__cuda_array_interface__``, used
        without a copy); array results stay on the GPU when ``X`` or ``params`` was there.
        On the GPU the per-block sums are float64 as here, merged in block order; results
        agree with the CPU to float32 rounding of the per-sample terms.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> model = fastmb.Linear(2, loss="logistic")
    >>> round(fastmb.loss(model, model.init(), np.ones((3, 2)), [0, 1, 1]), 4)  # log(2)
    0.6931
    """
    gpu = _device.gpu(device)
    if gpu:
        return gpu.loss_grad(model, params, X, y, sample_weight, want_grad=False)[0]
    b = Batch(model, params, X, y, sample_weight)
    if b.model.n_layers > 1:
        return loss_blocks_batch(b)
    value, _ = loss_grad_batch(b, want_grad=False)
    return value


def grad(model, params, X, y, sample_weight=None, device="cpu"):
    """Gradient of :func:`loss` with respect to ``params``: shape ``(P,)``, dtype of params.

    Per-sample gradients are summed in float64 over fixed row chunks and the chunks
    merged in order, so the result does not depend on the number of threads.
    ``device`` as in :func:`loss`.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> model = fastmb.Linear(2, loss="squared")
    >>> fastmb.grad(model, model.init(dtype=np.float64), [[1.0, 2.0]], [3.0])
    array([-3., -6., -3.])
    """
    return loss_and_grad(model, params, X, y, sample_weight, device)[1]


def loss_and_grad(model, params, X, y, sample_weight=None, device="cpu"):
    """:func:`loss` and :func:`grad` from one pass over the data: ``(float, (P,) array)``."""
    gpu = _device.gpu(device)
    if gpu:
        return gpu.loss_grad(model, params, X, y, sample_weight, want_grad=True)
    return loss_grad_batch(Batch(model, params, X, y, sample_weight), want_grad=True)


def per_sample_grad(model, params, X, y, microbatch=1, out=None, device="cpu"):
    """Gradients of each sample's loss (or each micro-batch's mean loss).

    Parameters
    ----------
    model, params, X, y
        As in :func:`loss`.
    microbatch : int, default 1
        Row g of the result is the mean gradient of samples ``g*m : (g+1)*m``; the last
        group may be shorter.
    out : (ceil(n / m), P) array, optional
        C-contiguous, of the dtype of ``params``; written in place and returned (a GPU
        array with ``device="cuda"``).
    device : {"cpu", "cuda"}, default "cpu"
        As in :func:`loss`. On the GPU a block of threads computes each sample (a group of
        up to 32 threads each row for one-output linear models).

    Returns
    -------
    (ceil(n / microbatch), P) array

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> model = fastmb.Linear(2, loss="squared")
    >>> fastmb.per_sample_grad(model, model.init(dtype=np.float64), np.eye(2), [1.0, 2.0])
    array([[-1., -0., -1.],
           [-0., -2., -2.]])
    """
    gpu = _device.gpu(device)
    m = V.check_number("microbatch", microbatch, low=1, integer=True)
    if gpu:
        return gpu.per_sample_grad(model, params, X, y, m, out)
    b = Batch(model, params, X, y)
    rows = -(-b.n // m)
    shape = (rows, model.n_params)
    if out is None:
        out = np.empty(shape, b.params.dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {out.shape}")
        if out.dtype != b.params.dtype:
            raise TypeError(f"out must have the dtype of params ({b.params.dtype}), got "
                            f"{out.dtype}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
        V.no_overlap("out", out, params=b.params, X=b.X, y=b.yr)
    b.check(K.per_sample_grad(b.params, b.X, b.yc, b.yr, model.layout, m, out))
    return out


def per_sample_grad_norm(model, params, X, y, device="cpu"):
    """L2 norm of each sample's gradient, without forming the ``(n, P)`` gradients.

    Each layer contributes ``(|a|^2 + 1) * |delta|^2`` (``|a|^2`` alone without a
    bias): the gradient of a dense layer is the outer product of its input ``a`` and
    its output delta, and the norm of an outer product is the product of the norms.
    ``device`` as in :func:`loss`.

    Returns
    -------
    (n,) array of the dtype of ``params``

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> model = fastmb.Linear(2, loss="squared")
    >>> fastmb.per_sample_grad_norm(model, model.init(dtype=np.float64), [[3.0, 4.0]], [1.0])
    array([5.09901951])
    """
    gpu = _device.gpu(device)
    if gpu:
        return gpu.per_sample_grad_norm(model, params, X, y)
    b = Batch(model, params, X, y)
    out = np.empty(b.n, b.params.dtype)
    b.check(K.per_sample_norm(b.params, b.X, b.yc, b.yr, model.layout, out))
    return out


def decision_function(model, params, X):
    """Raw model outputs (scores before the loss' link): ``(n,)`` for one output, else ``(n, k)``.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> model = fastmb.Linear(2)
    >>> fastmb.decision_function(model, np.array([1.0, 2.0, 0.5]), [[1.0, 1.0]])
    array([3.5])
    """
    b = Batch(model, params, X, labels=False)
    out = np.empty((b.n, model.n_outputs), b.params.dtype)
    b.check(K.decision(b.params, b.X, model.layout, out))
    return out[:, 0] if model.n_outputs == 1 else out


def predict(model, params, X):
    """Class indices (int64) for classifiers, predicted values for regressors.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> model = fastmb.Linear(1, loss="logistic")
    >>> fastmb.predict(model, np.array([2.0, -1.0]), [[0.0], [1.0]])
    array([0, 1])
    """
    f = decision_function(model, params, X)
    if model.loss == "softmax":
        return np.argmax(f, axis=1)
    if model.is_classifier:
        return (f > 0).astype(np.int64)
    return f


def predict_proba(model, params, X):
    """Class probabilities, ``(n, n_classes)``: sigmoid for logistic, softmax for softmax.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> model = fastmb.Linear(1, loss="logistic")
    >>> fastmb.predict_proba(model, np.array([0.0, 0.0]), [[5.0]])
    array([[0.5, 0.5]])
    """
    V.check_model(model)
    if model.loss not in ("logistic", "softmax"):
        raise ValueError(f"predict_proba needs loss 'logistic' or 'softmax', the model has "
                         f"{model.loss!r}")
    f = decision_function(model, params, X)
    if model.loss == "logistic":
        # sigmoid through exp(-|f|), which never overflows
        e = np.exp(-np.abs(f))
        p1 = np.where(f >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(f.dtype)
        return np.stack([1 - p1, p1], axis=1)
    f = f - f.max(axis=1, keepdims=True)
    e = np.exp(f)
    return e / e.sum(axis=1, keepdims=True)
