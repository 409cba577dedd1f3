"""Host side of ``kernels/cuda/aggregation.py``: stacks of updates on the GPU, their non-finite
rows, the weighted mean."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from . import arrays as A
from .arrays import blocks_for, device_view, empty, is_device_array, threads, to_device, zeros

# ----------------------------------------------------------------------------- aggregation


def as_updates(updates, name="updates"):
    """``(U on the GPU, on_device)`` for a (K, P) stack of updates."""
    if is_device_array(updates):
        U = device_view(name, updates, V.FLOATS, ndim=2)
        if U.shape[0] == 0 or U.shape[1] == 0:
            raise ValueError(f"{name} is empty: got shape {tuple(U.shape)}")
        return U, True
    return to_device(V.as_updates(updates, name)), False


def rows_nonfinite(U):
    """Boolean (K,) NumPy mask of the rows of a device stack that hold NaN or Inf."""
    from ..kernels.cuda import aggregation as KA

    K, P = U.shape
    T = threads()
    flags = zeros(K, np.int32)
    KA.rows_nonfinite[(blocks_for(P, T, cap=64), min(K, A.MAX_GRID_Y)), T](U, flags)
    return flags.copy_to_host().astype(bool)


def weighted_mean(U, w):
    """``sum_k w_k U_k / sum_k w_k`` (w NumPy float64, already checked); NaN-free or raises."""
    from ..kernels.cuda import aggregation as KA

    P = U.shape[1]
    T = threads()
    rel, inv_total = V.relative_weights(w)
    out = empty(P, U.dtype)
    nb = blocks_for(P, T)
    nbad = empty(nb * T, np.int64)
    KA.weighted_mean[nb, T](U, to_device(rel), inv_total, out, nbad)
    if nbad.copy_to_host().sum():
        bad = np.flatnonzero(rows_nonfinite(U)).tolist()
        if bad:
            raise ValueError(f"updates contains NaN or Inf (clients {bad})")
        raise ValueError("the weighted mean overflows the dtype of updates")
    return out


def finite_rows(U):
    """``(U without its non-finite rows, kept, rejected)``, kept rows copied on the GPU."""
    from ..kernels.cuda import aggregation as KA

    bad = rows_nonfinite(U)
    if not bad.any():
        return U, np.arange(U.shape[0]), np.empty(0, np.int64)
    kept = np.flatnonzero(~bad)
    if kept.size == 0:
        raise ValueError("every client's update in updates contains NaN or Inf")
    T = threads()
    out = empty((kept.size, U.shape[1]), U.dtype)
    KA.take_rows[(blocks_for(U.shape[1], T, cap=64), min(kept.size, A.MAX_GRID_Y)), T](
        U, to_device(kept), out)
    return out, kept, np.flatnonzero(bad)
