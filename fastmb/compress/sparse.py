"""Sparse updates: top-k (with error feedback) and random-k sparsification.

A client sends only the k largest-magnitude coordinates of ``update + residual``
and keeps the rest as its residual for the next round (error feedback; Stich et al.
2018, "Sparsified SGD with memory"), so nothing is lost, only delayed. The server
adds the sparse updates straight into a :class:`fastmb.WeightedMean` with
:meth:`~fastmb.WeightedMean.add_sparse`, without densifying each one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _device
from .. import _validation as V
from ..kernels import compress as KC
from . import wire


class SparseUpdate(NamedTuple):
    """k (index, value) pairs of a length-``n_params`` update; indices ascending."""

    indices: np.ndarray
    values: np.ndarray
    n_params: int

    def to_bytes(self):
        """Compact little-endian bytes (:func:`fastmb.compress.wire.encode_sparse`)."""
        return wire.encode_sparse(*self.checked())

    @classmethod
    def from_bytes(cls, data):
        """Decode :meth:`to_bytes`; raises ``ValueError`` on anything malformed."""
        return cls(*wire.decode_sparse(data)).checked("data")

    def checked(self, name="sparse"):
        """This update with contiguous int64 indices and float values, after checking that
        ``n_params`` is a positive integer, the indices integers strictly increasing in
        ``[0, n_params)`` and the values real and finite. Every door into a kernel passes
        here: a sparse index is written to without bounds checks."""
        n = V.check_number(f"{name}.n_params", self.n_params, low=1, integer=True)
        val = V._as_numeric(f"{name}.values", self.values)
        if val.ndim != 1:
            raise ValueError(f"{name}: values must be 1-D, got shape {val.shape}")
        idx = V.as_index_array(f"{name}.indices", self.indices, high=n, length=val.shape[0])
        if (idx[1:] <= idx[:-1]).any():
            raise ValueError(f"{name}: indices must be strictly increasing")
        val = np.ascontiguousarray(val, V.float_dtype(val))
        if not np.isfinite(val).all():
            raise ValueError(f"{name}: values contain NaN or Inf")
        return SparseUpdate(idx, val, n)

    def densify(self):
        """The dense (n_params,) update."""
        idx, val, n = self.checked()
        out = np.zeros(n, val.dtype)
        out[idx] = val
        return out


def topk(update, k, residual=None, device="cpu"):
    """Top-k sparsification with error feedback.

    Selects the ``k`` coordinates of ``c = update + residual`` with the largest
    magnitude (ties at the threshold go to the lower index) in streaming passes instead
    of a partition: from 65,536 coordinates on, a sample brackets the k-th largest
    magnitude, one pass keeps the coordinates inside or above the bracket and a partition
    of those settles the threshold (two passes over the vector); when the bracket misses,
    and for smaller vectors, an exact radix histogram decides (three passes). The result
    is the same either way.

    Parameters
    ----------
    update : (P,) array
    k : int in [1, P]
    residual : (P,) float array of the update's dtype, optional
        The client's error-feedback memory. **Written in place**: on return it holds
        ``c`` with the k sent coordinates set to zero. Without it, plain top-k.
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"``: the same radix selection in five launches (integer counts between
        them), the same indices, values and residual as the CPU. ``update`` may be a GPU
        array (then ``indices`` and ``values`` stay on the GPU); ``residual`` must then be
        a GPU array too (it is updated in place there).

    Returns
    -------
    SparseUpdate

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> res = np.zeros(4)
    >>> s = fastmb.topk(np.array([0.1, -3.0, 2.0, 0.5]), 2, residual=res)
    >>> s.indices, s.values, res
    (array([1, 2]), array([-3.,  2.]), array([0.1, 0. , 0. , 0.5]))
    """
    gpu = _device.gpu(device)
    if gpu:
        idx, val, P, on_device = gpu.topk(update, k, residual)
        return SparseUpdate(gpu.finish(idx, on_device), gpu.finish(val, on_device), P)
    u = V.as_vector(update)
    P = u.shape[0]
    k = V.check_number("k", k, low=1, high=P, integer=True)
    r = V.as_residual(residual, u)
    if r is None:
        r = np.zeros(P, u.dtype)
    elif np.may_share_memory(r, u):
        raise ValueError("residual must not share memory with update (it is updated in place)")
    idx = np.empty(k, np.int64)
    val = np.empty(k, u.dtype)
    # the kernels write the residual only once they know update + residual is finite; a
    # large vector first tries the sampled bracket (-1: it missed, nothing written)
    nbad = KC.topk_bracket(u, r, k, idx, val) if P >= KC.SAMPLE_MIN else -1
    if nbad < 0:
        nbad = KC.topk_error_feedback(u, r, k, idx, val)
    if nbad:
        raise ValueError("update + residual contains NaN or Inf")
    return SparseUpdate(idx, val, P)


# ----------------------------------------------------------------------------- random-k


def randk(update, k, seed=0, residual=None, scale=None):
    """Random-k sparsification: k coordinates chosen uniformly without replacement.

    With error feedback (a ``residual``, written in place as in :func:`topk`) the sent
    values are ``c[idx]`` for ``c = update + residual`` and the rest stays in the
    residual. Without it the values are scaled by ``P / k`` by default, which makes
    the sparse update an unbiased estimate of the update (Wangni et al. 2018,
    "Gradient sparsification for communication-efficient distributed optimization").

    Parameters
    ----------
    update : (P,) array
    k : int in [1, P]
    seed : int, default 0
        Choose a new seed each round (e.g. ``hash((round, client))``): the indices are
        ``np.random.default_rng(seed).choice(P, k, replace=False)``, sorted.
    residual : (P,) array, optional
    scale : float, optional
        Multiplies the sent values; default ``P / k`` without a residual, 1 with one.

    Returns
    -------
    SparseUpdate

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> s = fastmb.randk(np.arange(10.0), 2, seed=1)
    >>> len(s.indices), bool(np.all(s.values == 5 * s.indices))
    (2, True)
    """
    u = V.as_vector(update)
    P = u.shape[0]
    k = V.check_number("k", k, low=1, high=P, integer=True)
    seed = V.check_number("seed", seed, low=0, integer=True)
    r = V.as_residual(residual, u)
    f = (1.0 if r is not None else P / k) if scale is None else V.check_number("scale", scale)
    c = u if r is None else u + r
    if not np.isfinite(c).all():
        raise ValueError("update + residual contains NaN or Inf" if r is not None
                         else "update contains NaN or Inf")
    idx = np.sort(np.random.default_rng(seed).choice(P, k, replace=False)).astype(np.int64)
    val = V.finite_result((c[idx] * f).astype(u.dtype), "the scaled values")
    if r is not None:
        r[:] = c
        r[idx] = 0
    return SparseUpdate(idx, val, P)
