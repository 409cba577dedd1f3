"""Host side of ``kernels/cuda/compress.py``: top-k with error feedback on the GPU."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from ..kernels import compress as KC0
from .arrays import blocks_for, device_view, empty, is_device_array, threads, to_device, zeros

# ----------------------------------------------------------------------------- compression


def topk(update, k, residual):
    """Top-k with error feedback on the GPU: ``(idx, val, P, on_device)``."""
    from ..kernels.cuda import compress as KC

    on_device = is_device_array(update)
    if on_device:
        u = device_view("update", update, V.FLOATS, ndim=1)
        if u.shape[0] == 0:
            raise ValueError("update must be a non-empty 1-D array, got shape (0,)")
    else:
        u = to_device(V.as_vector(update))
    dt = np.dtype(u.dtype)
    P = u.shape[0]
    k = V.check_number("k", k, low=1, high=P, integer=True)
    r_user = r_host = None
    if residual is None:
        work = zeros(P, dt)
    elif is_device_array(residual):
        r_user = device_view("residual", residual, [dt], ndim=1)
        if r_user.shape[0] != P:
            raise TypeError(f"residual must have shape ({P},), got {tuple(r_user.shape)}")
        work = empty(P, dt)
        work.copy_to_device(r_user)  # the caller's residual changes only on success
    elif on_device:
        raise TypeError("residual must be a GPU array when update is one (it is updated in "
                        "place)")
    else:
        r_host = V.as_residual(residual, np.empty(P, dt))
        work = to_device(r_host)
    T = threads()
    nb = blocks_for(P, T, cap=4096)
    nbad = empty(nb * T, np.int64)
    KC.add_residual[nb, T](u, work, nbad)
    if nbad.copy_to_host().sum():
        raise ValueError("update + residual contains NaN or Inf")
    ity = np.int32 if dt.itemsize == 4 else np.int64
    width = dt.itemsize * 8
    shift = width - 1 - KC0.BITS
    mask = (1 << (width - 1)) - 1
    bits = work.view(ity)
    hist = zeros(KC0.NBINS, np.int64)
    KC.histogram[nb, T](bits, ity(mask), ity(shift), hist)
    counts = hist.copy_to_host()
    above_incl = np.cumsum(counts[::-1])          # how many lie in bucket >= b, from the top
    tb = KC0.NBINS - 1 - int(np.searchsorted(above_incl, k))
    above = int(counts[tb + 1:].sum())
    need = k - above
    cand = empty(int(counts[tb]), dt)
    fill = zeros(1, np.int64)
    KC.gather[nb, T](work, bits, ity(mask), ity(shift), ity(tb), cand, fill)
    thr = np.sort(cand.copy_to_host())[-need]
    n_seg = -(-P // KC.SEGMENT)
    gt, eq = empty(n_seg, np.int64), empty(n_seg, np.int64)
    KC.count[blocks_for(n_seg, T, cap=1 << 30), T](work, dt.type(thr), gt, eq)
    gt, eq = gt.copy_to_host(), eq.copy_to_host()
    ties = k - int(gt.sum())
    tie_start = np.concatenate([[0], np.cumsum(eq)[:-1]]).astype(np.int64)
    taken = np.minimum(eq, np.maximum(0, ties - tie_start))
    start = np.concatenate([[0], np.cumsum(gt + taken)[:-1]]).astype(np.int64)
    idx, val = empty(k, np.int64), empty(k, dt)
    KC.select[blocks_for(n_seg, T, cap=1 << 30), T](work, dt.type(thr), ties, to_device(start),
                                                     to_device(tie_start), idx, val)
    if r_user is not None:
        r_user.copy_to_device(work)
    elif r_host is not None:
        work.copy_to_host(r_host)
    return idx, val, P, on_device
