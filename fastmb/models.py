"""Model descriptions: small immutable objects that know the flat parameter layout.

A model is not a trainer. Functions take ``(model, params, X, y)`` where ``params`` is
one contiguous 1-D array. The layout, layer by layer, is ``W_l`` (row-major,
shape ``(n_in, n_out)``) followed by ``b_l`` (``n_out``) when the model has biases.
"""

from __future__ import annotations

import numpy as np

from .kernels._layout import Layout

LOSSES = {"squared": 0, "huber": 1, "logistic": 2, "hinge": 3, "softmax": 4}
ACTIVATIONS = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3}
CLASSIFICATION_LOSSES = ("logistic", "hinge", "softmax")


#: The widest layer a model may have; with it, ``n_params`` stays far inside int64.
MAX_UNITS = 2**31 - 1


def _check_int(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > MAX_UNITS:
        raise ValueError(f"{name} must be <= {MAX_UNITS}, got {value}")
    return int(value)


class _Model:
    """Shared machinery of Linear and MLP; subclasses set the layer sizes."""

    __slots__ = (
        "_activation",
        "_b_off",
        "_fit_intercept",
        "_huber_delta",
        "_layout",
        "_loss",
        "_n_params",
        "_sizes",
        "_w_off",
    )

    def _build(self, sizes, loss, activation, fit_intercept, huber_delta):
        if not isinstance(loss, str) or loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not isinstance(fit_intercept, (bool, np.bool_)):
            raise TypeError(f"fit_intercept must be a bool, got {type(fit_intercept).__name__}")
        huber_delta = float(huber_delta)
        if not (np.isfinite(huber_delta) and huber_delta > 0):
            raise ValueError(f"huber_delta must be a positive finite number, got {huber_delta}")
        if loss in ("logistic", "hinge") and sizes[-1] != 1:
            raise ValueError(f"loss {loss!r} is binary and needs 1 output, got {sizes[-1]}; "
                             "use loss='softmax' for several classes")
        if loss == "softmax" and sizes[-1] < 2:
            raise ValueError(f"loss 'softmax' needs at least 2 outputs (classes), got {sizes[-1]}")
        self._sizes = tuple(int(s) for s in sizes)
        self._loss = loss
        self._activation = activation
        self._fit_intercept = bool(fit_intercept)
        self._huber_delta = huber_delta
        w_off, b_off, pos = [], [], 0
        for nin, nout in zip(self._sizes[:-1], self._sizes[1:]):
            w_off.append(pos)
            pos += nin * nout
            if self._fit_intercept:
                b_off.append(pos)
                pos += nout
            else:
                b_off.append(-1)
        self._w_off = tuple(w_off)
        self._b_off = tuple(b_off)
        self._n_params = pos
        u_off = np.concatenate([[0], np.cumsum(self._sizes[1:])]).astype(np.int64)
        self._layout = Layout(np.asarray(self._sizes, np.int64), np.asarray(w_off, np.int64),
                              np.asarray(b_off, np.int64), u_off,
                              np.int64(ACTIVATIONS[activation]), np.int64(LOSSES[loss]),
                              np.float64(huber_delta))

    def __setattr__(self, name, value):
        if hasattr(self, "_layout"):
            raise AttributeError(f"{type(self).__name__} is immutable")
        object.__setattr__(self, name, value)

    # -- description -------------------------------------------------------
    @property
    def layout(self):
        """The model as the kernels take it: a :class:`Layout` record."""
        return self._layout

    @property
    def sizes(self):
        """Units per layer: ``(n_features, hidden..., n_outputs)``."""
        return self._sizes

    @property
    def n_features(self):
        return self._sizes[0]

    @property
    def n_outputs(self):
        return self._sizes[-1]

    @property
    def loss(self):
        return self._loss

    @property
    def activation(self):
        return self._activation

    @property
    def fit_intercept(self):
        return self._fit_intercept

    @property
    def huber_delta(self):
        return self._huber_delta

    @property
    def n_params(self):
        """Length of the flat parameter vector."""
        return self._n_params

    @property
    def n_layers(self):
        return len(self._sizes) - 1

    @property
    def is_classifier(self):
        return self._loss in CLASSIFICATION_LOSSES

    @property
    def n_classes(self):
        """Number of classes (2 for the binary losses), or None for regression."""
        if self._loss == "softmax":
            return self._sizes[-1]
        return 2 if self.is_classifier else None

    def __eq__(self, other):
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self):
        return hash((type(self).__name__, *self._key()))

    def _key(self):
        return (self._sizes, self._loss, self._activation, self._fit_intercept, self._huber_delta)

    def __reduce__(self):
        # Pickled by its description (for Dask workers and checkpoints): rebuilt through the
        # checked constructor, never by setting the slots of an immutable object.
        return (_rebuild, (type(self).__name__, *self._key()))

    # -- parameters --------------------------------------------------------
    def layers(self, params):
        """Views ``[(W_0, b_0), (W_1, b_1), ...]`` into ``params``; ``b_l`` is None without biases.

        ``W_l`` has shape ``(n_in, n_out)``, so a layer computes ``a @ W_l + b_l``.
        The views share memory with ``params``: writing to them changes ``params``.
        """
        params = np.asarray(params)
        if params.ndim != 1 or params.shape[0] != self._n_params:
            raise ValueError(f"params must be a 1-D array of length {self._n_params}, "
                             f"got shape {params.shape}")
        out = []
        for (nin, nout), wo, bo in zip(zip(self._sizes[:-1], self._sizes[1:]), self._w_off,
                                       self._b_off):
            W = params[wo:wo + nin * nout].reshape(nin, nout)
            b = params[bo:bo + nout] if bo >= 0 else None
            out.append((W, b))
        return out

    def init(self, seed=0, dtype=np.float32):
        """A new flat parameter vector.

        Linear models start at zero (the convex problem needs no symmetry breaking).
        MLP weights are drawn uniformly from ``±sqrt(6 / fan_in)`` for ReLU (He) and
        ``±sqrt(6 / (fan_in + fan_out))`` otherwise (Glorot); biases start at zero.

        Parameters
        ----------
        seed : int
            Seed of ``numpy.random.default_rng``.
        dtype : float32 or float64
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        params = np.zeros(self._n_params, dtype=dtype)
        if self.n_layers == 1:
            return params
        rng = np.random.default_rng(seed)
        for W, _ in self.layers(params):
            fan_in, fan_out = W.shape
            if self._activation == "relu":
                a = np.sqrt(6.0 / fan_in)
            else:
                a = np.sqrt(6.0 / (fan_in + fan_out))
            W[...] = rng.uniform(-a, a, size=W.shape)
        return params


class Linear(_Model):
    """A linear model ``f(x) = x @ W + b`` with one of fastmb's losses.

    Parameters
    ----------
    n_features : int
    n_outputs : int, default 1
        1 for ``"logistic"``/``"hinge"`` (binary, labels 0/1) and scalar regression;
        the number of classes for ``"softmax"``; targets per sample for regression.
    loss : {"squared", "huber", "logistic", "hinge", "softmax"}
    fit_intercept : bool, default True
    huber_delta : float, default 1.0
        Threshold between the quadratic and linear parts of the Huber loss.

    Examples
    --------
    >>> import fastmb
    >>> model = fastmb.Linear(4, loss="logistic")
    >>> model.n_params
    5
    >>> [w.shape for w, b in model.layers(model.init())]
    [(4, 1)]
    """

    __slots__ = ()

    def __init__(self, n_features, n_outputs=1, loss="squared", *, fit_intercept=True,
                 huber_delta=1.0):
        n_features = _check_int("n_features", n_features)
        n_outputs = _check_int("n_outputs", n_outputs)
        self._build((n_features, n_outputs), loss, "identity", fit_intercept, huber_delta)

    def __repr__(self):
        return (f"Linear({self.n_features}, {self.n_outputs}, loss={self.loss!r}, "
                f"fit_intercept={self.fit_intercept})")


class MLP(_Model):
    """A fully connected network with an affine output layer and one of fastmb's losses.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``(n_features, hidden_1, ..., hidden_m, n_outputs)``; at least two entries.
    activation : {"relu", "tanh", "sigmoid", "identity"}, default "relu"
        Applied after every hidden layer.
    loss : {"squared", "huber", "logistic", "hinge", "softmax"}, default "softmax"
    fit_intercept : bool, default True
        Whether every layer has a bias.
    huber_delta : float, default 1.0

    Examples
    --------
    >>> import fastmb
    >>> model = fastmb.MLP([64, 32, 10])
    >>> model.n_params
    2410
    >>> params = model.init(seed=0)
    >>> params.dtype
    dtype('float32')
    """

    __slots__ = ()

    def __init__(self, layer_sizes, activation="relu", loss="softmax", *, fit_intercept=True,
                 huber_delta=1.0):
        if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
            raise TypeError("layer_sizes must be a sequence of integers such as [64, 32, 10]")
        if len(layer_sizes) < 2:
            raise ValueError(f"layer_sizes needs at least 2 entries (inputs, outputs), "
                             f"got {list(layer_sizes)}")
        sizes = [_check_int(f"layer_sizes[{i}]", s) for i, s in enumerate(layer_sizes)]
        self._build(sizes, loss, activation, fit_intercept, huber_delta)

    def __repr__(self):
        return (f"MLP({list(self.sizes)}, activation={self.activation!r}, loss={self.loss!r}, "
                f"fit_intercept={self.fit_intercept})")


def _rebuild(kind, sizes, loss, activation, fit_intercept, huber_delta):
    if kind == "Linear":
        return Linear(sizes[0], sizes[1], loss, fit_intercept=fit_intercept,
                      huber_delta=huber_delta)
    return MLP(list(sizes), activation, loss, fit_intercept=fit_intercept, huber_delta=huber_delta)
