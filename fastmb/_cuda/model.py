"""A call's model inputs on the GPU (:class:`Batch`, the counterpart of the CPU's), and the
model geometry the kernels of ``kernels/cuda`` are launched with."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .aggregation import rows_nonfinite
from .arrays import SHARED_LIMIT, device_view, empty, is_device_array, summary, to_device

# ----------------------------------------------------------------------------- model inputs


class Batch:
    """``(params, X, y, sample_weight)`` on the GPU, the CUDA counterpart of ``Batch``."""

    __slots__ = ("X", "dtype", "meta", "model", "n", "on_device", "params", "sw", "yc", "yr")

    def __init__(self, model, params, X, y=None, sample_weight=None):
        self.model = V.check_model(model)
        x_dev = is_device_array(X)
        p_dev = is_device_array(params)
        self.on_device = x_dev or p_dev
        if x_dev:
            X = device_view("X", X, V.FLOATS, ndim=2)
            self.dtype = np.dtype(X.dtype)
        if p_dev:
            params = device_view("params", params, V.FLOATS, ndim=1)
            if params.shape[0] != model.n_params:
                raise ValueError(f"params must be a 1-D array of length model.n_params="
                                 f"{model.n_params}, got shape {tuple(params.shape)}")
            if x_dev and np.dtype(params.dtype) != self.dtype:
                raise TypeError(f"params ({params.dtype}) and X ({X.dtype}) on the GPU must "
                                "have the same dtype")
            self.dtype = np.dtype(params.dtype)
            if summary(params)[2]:
                raise ValueError("params contains NaN or Inf")
        else:
            p = V.as_params(model, params)
            self.dtype = self.dtype if x_dev else p.dtype
            params = to_device(p.astype(self.dtype, copy=False))
        if x_dev:
            if X.shape[0] == 0:
                raise ValueError("X is empty: it needs at least one sample")
            if X.shape[1] != model.n_features:
                raise ValueError(f"X has {X.shape[1]} features but the model expects "
                                 f"{model.n_features}")
        else:
            X = to_device(V.as_X(model, X, self.dtype, sparse=False))
        self.params, self.X, self.n = params, X, X.shape[0]
        self.meta = to_device(_meta(model))
        if y is not None:
            self.yc, self.yr = self._labels(y)
        self.sw = self._weights(sample_weight)

    def _labels(self, y):
        model, n, k = self.model, self.n, self.model.n_outputs
        if not is_device_array(y):
            yc, yr = V.as_y(model, y, n, self.dtype)
            return to_device(yc), to_device(yr)
        if model.is_classifier:
            yc = device_view("y", y, [np.int64], ndim=1)
            if yc.shape[0] != n:
                raise ValueError(f"y must be a 1-D array of {n} class indices, got shape "
                                 f"{tuple(yc.shape)}")
            lo, hi, _ = summary(yc)
            if lo < 0 or hi >= model.n_classes:
                raise ValueError(f"y must hold class indices in [0, {model.n_classes}) for loss "
                                 f"{model.loss!r}; got values in [{int(lo)}, {int(hi)}]")
            return yc, empty((0, k), self.dtype)
        yr = device_view("y", y, [self.dtype])
        if len(yr.shape) == 1 and k == 1:
            yr = yr.reshape(yr.shape[0], 1)
        if tuple(yr.shape) != (n, k):
            raise ValueError(f"y must have shape ({n}, {k}) for a model with {k} output(s), "
                             f"got {tuple(yr.shape)}")
        if summary(yr.reshape(n * k))[2]:
            raise ValueError("y contains NaN or Inf")
        return empty(0, np.int64), yr

    def _weights(self, sample_weight):
        if sample_weight is None:
            return empty(0, np.float64)
        if is_device_array(sample_weight):
            w = device_view("sample_weight", sample_weight, [np.float64], ndim=1)
            if w.shape[0] != self.n:
                raise ValueError(f"sample_weight must be a 1-D array of length {self.n}")
            lo, hi, bad = summary(w)
            if bad or lo < 0 or hi <= 0:
                raise ValueError("sample_weight must be finite, non-negative and not all zero")
            # Scaled on the host as on the CPU path (see V.as_sample_weight): n numbers.
            sample_weight = w.copy_to_host()
        return to_device(V.as_sample_weight(sample_weight, self.n))

    def check(self, bad, overflow=None):
        """Raise for the first row a kernel flagged (``bad``: per-slot rows, -1 for none)."""
        row = V.first_bad(bad)
        if row >= 0:
            V.raise_bad_row(self.X, row, overflow)


def _device_span(a):
    """``(first byte, last byte + 1)`` of a device array (C-contiguous views only here)."""
    if hasattr(a, "__cuda_array_interface__"):
        ptr = a.__cuda_array_interface__["data"][0]
    else:  # the simulator's device arrays wrap NumPy arrays
        ptr = a.ctypes.data
    return ptr, ptr + a.size * a.dtype.itemsize


def _check_overlap(name, out, **inputs):
    """Refuse a device output that shares memory with a device input the kernel reads."""
    lo, hi = _device_span(out)
    for other, arr in inputs.items():
        if arr is not None and arr.size and out.size:
            a_lo, a_hi = _device_span(arr)
            if a_lo < hi and lo < a_hi:
                raise ValueError(f"{name} shares memory with {other}: the kernel would "
                                 f"overwrite its own input; pass a separate array")


def _first_bad_row(b, out, rows_per_item=1):
    """Raise for the first row of ``out`` (a device result) that is not finite: an overflow
    the kernel did not flag (its inputs were finite). Row g of ``out`` stands for rows
    ``g * rows_per_item ...`` of X."""
    flags = rows_nonfinite(out)
    if flags.any():
        V.raise_bad_row(b.X, int(np.argmax(flags)) * rows_per_item)


def _meta(model):
    from ..kernels.cuda._model import pack

    return pack(model.layout)


def _linear1(model):
    return model.n_layers == 1 and model.n_outputs == 1


def _units(model):
    return int(model.layout.u_off[-1])


def _shared(model, nbytes):
    """``nbytes`` of dynamic shared memory for a kernel's per-sample workspace, or a clear
    error when the model is too wide for it."""
    U = _units(model)
    if nbytes > SHARED_LIMIT:
        raise ValueError(f"the model has {U} units: its CUDA workspace needs {nbytes} bytes of "
                         f"shared memory, more than the {SHARED_LIMIT} every GPU grants; use "
                         "device='cpu' for models this wide")
    return nbytes
