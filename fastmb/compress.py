"""Compression of updates: top-k sparsification with error feedback.

A client sends only the k largest-magnitude coordinates of ``update + residual``
and keeps the rest as its residual for the next round (error feedback; Stich et al.
2018, "Sparsified SGD with memory"), so nothing is lost, only delayed. The server
adds the sparse updates straight into a :class:`fastmb.WeightedMean` with
:meth:`~fastmb.WeightedMean.add_sparse`, without densifying each one.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from . import _validation as V

_MAGIC = b"FMBK"
_HEADER = struct.Struct("<4sBQQ")  # magic, dtype code, n_params, k
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f8")}


class SparseUpdate(NamedTuple):
    """k (index, value) pairs of a length-``n_params`` update; indices ascending."""

    indices: np.ndarray
    values: np.ndarray
    n_params: int

    def to_bytes(self):
        """Compact little-endian bytes: a 21-byte header, uint32 (or uint64) indices, values."""
        code = 0 if self.values.dtype == np.float32 else 1
        ity = "<u4" if self.n_params <= 2**32 else "<u8"
        return (_HEADER.pack(_MAGIC, code, self.n_params, len(self.indices))
                + self.indices.astype(ity).tobytes() + self.values.astype(_DTYPES[code]).tobytes())

    @classmethod
    def from_bytes(cls, data):
        """Decode :meth:`to_bytes`; raises ``ValueError`` on anything malformed."""
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise ValueError("data is too short to be a SparseUpdate")
        magic, code, n, k = _HEADER.unpack_from(data)
        if magic != _MAGIC or code not in _DTYPES:
            raise ValueError("data is not an encoded SparseUpdate")
        isz = 4 if n <= 2**32 else 8
        vdt = _DTYPES[code]
        if len(data) != _HEADER.size + k * (isz + vdt.itemsize):
            raise ValueError(f"data has {len(data)} bytes; a SparseUpdate with k={k} needs "
                             f"{_HEADER.size + k * (isz + vdt.itemsize)}")
        off = _HEADER.size
        idx = np.frombuffer(data, f"<u{isz}", k, off).astype(np.int64)
        val = np.frombuffer(data, vdt, k, off + k * isz).astype(vdt.newbyteorder("="))
        return cls(idx, val, int(n)).checked("data")

    def checked(self, name="sparse"):
        """This update with contiguous int64 indices and float values, after checking that
        the indices are strictly increasing and in range and the values finite."""
        idx = np.ascontiguousarray(self.indices, np.int64)
        val = np.asarray(self.values)
        val = np.ascontiguousarray(val, V.float_dtype(val))
        if idx.shape != val.shape or idx.ndim != 1:
            raise ValueError(f"{name}: indices and values must be 1-D of equal length")
        if idx.size and (idx[0] < 0 or idx[-1] >= self.n_params or (np.diff(idx) <= 0).any()):
            raise ValueError(f"{name}: indices must be strictly increasing and in range")
        if not np.isfinite(val).all():
            raise ValueError(f"{name}: values contain NaN or Inf")
        return SparseUpdate(idx, val, int(self.n_params))

    def densify(self):
        """The dense (n_params,) update."""
        out = np.zeros(self.n_params, self.values.dtype)
        out[self.indices] = self.values
        return out


def topk(update, k, residual=None):
    """Top-k sparsification with error feedback.

    Selects the ``k`` coordinates of ``c = update + residual`` with the largest
    magnitude (ties at the threshold go to the lower index) by radix selection:
    three streaming passes instead of a partition.

    Parameters
    ----------
    update : (P,) array
    k : int in [1, P]
    residual : (P,) float array of the update's dtype, optional
        The client's error-feedback memory. **Written in place**: on return it holds
        ``c`` with the k sent coordinates set to zero. Without it, plain top-k.

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
    u = V._as_numeric("update", update)
    if u.ndim != 1 or u.shape[0] == 0:
        raise ValueError(f"update must be a non-empty 1-D array, got shape {u.shape}")
    u = np.ascontiguousarray(u, dtype=V.float_dtype(u))
    P = u.shape[0]
    k = V.check_number("k", k, low=1, high=P, integer=True)
    if residual is None:
        r = np.zeros(P, u.dtype)
    else:
        if not isinstance(residual, np.ndarray) or residual.shape != (P,) \
                or residual.dtype != u.dtype or not residual.flags.c_contiguous:
            raise TypeError(f"residual must be a C-contiguous {u.dtype} array of shape ({P},) "
                            "(it is updated in place)")
        r = residual
    from .kernels import compress as KC

    work = r.copy()  # the caller's residual changes only once the selection succeeded
    idx = np.empty(k, np.int64)
    val = np.empty(k, u.dtype)
    if KC.topk_error_feedback(u, work, k, idx, val):
        raise ValueError("update + residual contains NaN or Inf")
    r[:] = work
    return SparseUpdate(idx, val, P)
