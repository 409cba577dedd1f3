"""Compression of updates: top-k and random-k sparsification, int8, QSGD, fp16/bf16.

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
        idx, val, n = self.checked()
        code = 0 if val.dtype == np.float32 else 1
        ity = "<u4" if n <= 2**32 else "<u8"
        return (_HEADER.pack(_MAGIC, code, n, len(idx))
                + idx.astype(ity).tobytes() + val.astype(_DTYPES[code]).tobytes())

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
        idx = np.frombuffer(data, f"<u{isz}", k, off)
        val = np.frombuffer(data, vdt, k, off + k * isz).astype(vdt.newbyteorder("="))
        return cls(idx, val, int(n)).checked("data")

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
    magnitude (ties at the threshold go to the lower index) by radix selection:
    three streaming passes instead of a partition.

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
    gpu = V.gpu(device)
    if gpu:
        idx, val, P, on_device = gpu.topk(update, k, residual)
        return SparseUpdate(gpu.finish(idx, on_device), gpu.finish(val, on_device), P)
    u = _as_vector(update)
    P = u.shape[0]
    k = V.check_number("k", k, low=1, high=P, integer=True)
    r = _as_residual(residual, u)
    if r is None:
        r = np.zeros(P, u.dtype)
    from .kernels import compress as KC

    work = r.copy()  # the caller's residual changes only once the selection succeeded
    idx = np.empty(k, np.int64)
    val = np.empty(k, u.dtype)
    if KC.topk_error_feedback(u, work, k, idx, val):
        raise ValueError("update + residual contains NaN or Inf")
    r[:] = work
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
    u = _as_vector(update)
    P = u.shape[0]
    k = V.check_number("k", k, low=1, high=P, integer=True)
    seed = V.check_number("seed", seed, low=0, integer=True)
    r = _as_residual(residual, u)
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


def _as_vector(update):
    u = V._as_numeric("update", update)
    if u.ndim != 1 or u.shape[0] == 0:
        raise ValueError(f"update must be a non-empty 1-D array, got shape {u.shape}")
    return np.ascontiguousarray(u, dtype=V.float_dtype(u))


def _as_residual(residual, u):
    if residual is None:
        return None
    P = u.shape[0]
    if not isinstance(residual, np.ndarray) or residual.shape != (P,) \
            or residual.dtype != u.dtype or not residual.flags.c_contiguous:
        raise TypeError(f"residual must be a C-contiguous {u.dtype} array of shape ({P},) "
                        "(it is updated in place)")
    if not residual.flags.writeable:
        raise ValueError("residual is read-only; it must be writeable (it is updated in place)")
    return residual


# ----------------------------------------------------------------------------- quantization

def _largest_scale():
    """The largest float32 scale whose product with any int8 code (computed in float64,
    rounded once) is still a finite float32: then every dequantized value of an int8 or
    QSGD update is, whatever its codes, and the codes need no check of their own."""
    f32max = float(np.finfo(np.float32).max)
    s = np.float32(f32max / 128)
    while float(s) * 128 > f32max:
        s = np.nextafter(s, np.float32(0))
    return s


SCALE_MAX = _largest_scale()
_QMAGIC = b"FMBQ"
_QHEADER = struct.Struct("<4sBQI")  # magic, scheme code, n_params, block
_SCHEMES = {"int8": 0, "qsgd": 1, "fp16": 2, "bf16": 3}
_CODE_DTYPES = {"int8": np.int8, "qsgd": np.int8, "fp16": np.float16, "bf16": np.uint16}


class QuantizedUpdate(NamedTuple):
    """A quantized length-``n_params`` update.

    ``int8`` and ``qsgd``: int8 ``codes`` and one float32 ``scales`` entry per ``block``
    coordinates, ``value = codes[j] * scales[j // block]``. ``fp16``: float16 codes;
    ``bf16``: the top 16 bits of each float32 (uint16); neither has scales.
    """

    codes: np.ndarray
    scales: np.ndarray
    n_params: int
    block: int
    scheme: str

    @property
    def nbytes(self):
        """Size of the payload: codes plus scales (what :meth:`to_bytes` adds to its header)."""
        return self.codes.nbytes + self.scales.nbytes

    def dequantize(self, dtype=np.float32):
        """The dense (n_params,) update (checked first, see :meth:`checked`)."""
        dtype = np.dtype(dtype)
        if dtype not in V.FLOATS:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        q = self.checked()
        if q.scheme == "fp16":
            return q.codes.astype(dtype)
        if q.scheme == "bf16":
            return (q.codes.astype(np.uint32) << 16).view(np.float32).astype(dtype)
        from .kernels import quantize as KQ

        out = np.empty(q.n_params, dtype)
        KQ.dequantize_int8(q.codes, q.scales, q.block, out)
        return out

    def to_bytes(self):
        """Little-endian bytes: a 17-byte header, the codes, then the float32 scales."""
        q = self.checked()
        return (_QHEADER.pack(_QMAGIC, _SCHEMES[q.scheme], q.n_params, q.block)
                + q.codes.astype(np.dtype(_CODE_DTYPES[q.scheme]).newbyteorder("<"))
                .tobytes() + q.scales.astype("<f4").tobytes())

    @classmethod
    def from_bytes(cls, data):
        """Decode :meth:`to_bytes`; raises ``ValueError`` on anything malformed."""
        data = bytes(data)
        if len(data) < _QHEADER.size:
            raise ValueError("data is too short to be a QuantizedUpdate")
        magic, code, n, block = _QHEADER.unpack_from(data)
        names = {v: k for k, v in _SCHEMES.items()}
        if magic != _QMAGIC or code not in names or n == 0 or block == 0:
            raise ValueError("data is not an encoded QuantizedUpdate")
        scheme = names[code]
        cdt = np.dtype(_CODE_DTYPES[scheme]).newbyteorder("<")
        nb = -(-n // block) if scheme in ("int8", "qsgd") else 0
        need = _QHEADER.size + n * cdt.itemsize + 4 * nb
        if len(data) != need:
            raise ValueError(f"data has {len(data)} bytes; a {scheme} update of {n} "
                             f"parameters needs {need}")
        codes = np.frombuffer(data, cdt, n, _QHEADER.size).astype(cdt.newbyteorder("="))
        scales = np.frombuffer(data, "<f4", nb, _QHEADER.size + n * cdt.itemsize)
        return cls(codes, scales.astype(np.float32), int(n), int(block), scheme).checked("data")

    def checked(self, name="quantized"):
        """This update with contiguous arrays, after checking every field a kernel relies on:
        the scheme; ``n_params`` and ``block`` positive integers; codes of the scheme's dtype
        and of shape ``(n_params,)``; float32 scales, one per block, finite, non-negative and
        at most :data:`SCALE_MAX` (so every dequantized value is a finite float32, whatever
        the int8 codes); 16-bit codes finite."""
        if not isinstance(self.scheme, str) or self.scheme not in _SCHEMES:
            raise ValueError(f"{name}: scheme must be one of {sorted(_SCHEMES)}, got "
                             f"{self.scheme!r}")
        n = V.check_number(f"{name}.n_params", self.n_params, low=1, integer=True)
        block = V.check_number(f"{name}.block", self.block, low=1, high=2**31 - 1, integer=True)
        codes = np.ascontiguousarray(self.codes)
        scales = np.ascontiguousarray(self.scales)
        if codes.dtype != _CODE_DTYPES[self.scheme] or codes.shape != (n,):
            raise ValueError(f"{name}: codes must be {np.dtype(_CODE_DTYPES[self.scheme])} of "
                             f"shape ({n},)")
        nb = -(-n // block) if self.scheme in ("int8", "qsgd") else 0
        if scales.dtype != np.float32 or scales.shape != (nb,):
            raise ValueError(f"{name}: scales must be float32 of shape ({nb},)")
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise ValueError(f"{name}: scales must be finite and non-negative")
        if nb and scales.max() > SCALE_MAX:
            raise ValueError(f"{name}: scales must be at most {SCALE_MAX:.6g} (128 times a "
                             f"scale must be a finite float32), got {scales.max():.6g}")
        if self.scheme == "fp16" and not np.isfinite(codes).all():
            raise ValueError(f"{name}: codes contain NaN or Inf")
        if self.scheme == "bf16" and ((codes & 0x7F80) == 0x7F80).any():
            raise ValueError(f"{name}: codes contain NaN or Inf")
        return QuantizedUpdate(codes, scales, n, block, self.scheme)


def _check_scales(scales, scheme):
    """Refuse an update too large for float32 scales (the kernels leave an oversized scale,
    possibly Inf, for a block beyond the range)."""
    if scales.size and not scales.max() <= SCALE_MAX:
        limit = ("|u| must stay below 3.37e38" if scheme == "int8" else
                 "each block's L2 norm must stay below levels * 2.66e36")
        raise ValueError(f"update is too large for {scheme}'s float32 scales ({limit}); "
                         "scale it down before quantizing")


def _check_block(block):
    return V.check_number("block", block, low=1, high=2**31 - 1, integer=True)


def quantize_int8(update, block=256, stochastic=False, seed=0):
    """int8 linear quantization with one scale per block: ``scale = max|u| / 127``.

    Each coordinate becomes ``round(u / scale)`` (nearest, or stochastic rounding,
    which is unbiased), so the error per coordinate is at most ``scale / 2`` (or
    ``scale``). A payload of ``P + 4 P / block`` bytes: 3.9x smaller than float32 at
    the default block.

    Parameters
    ----------
    update : (P,) array
    block : int, default 256
    stochastic : bool, default False
    seed : int, default 0
        Stream of the stochastic rounding (counter-based: the same bits on any thread).

    Returns
    -------
    QuantizedUpdate

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> q = fastmb.quantize_int8(np.array([0.5, -1.27, 0.01]), block=2)
    >>> q.codes, q.scales * 127
    (array([  50, -127,  127], dtype=int8), array([1.27, 0.01], dtype=float32))
    >>> np.round(q.dequantize(), 3)
    array([ 0.5 , -1.27,  0.01], dtype=float32)
    """
    u = _as_vector(update)
    block = _check_block(block)
    if not isinstance(stochastic, (bool, np.bool_)):
        raise TypeError(f"stochastic must be a bool, got {type(stochastic).__name__}")
    key = _stream(seed)
    from .kernels import quantize as KQ

    codes = np.empty(u.shape[0], np.int8)
    scales = np.empty(-(-u.shape[0] // block), np.float32)
    if KQ.quantize_int8(u, block, bool(stochastic), key, codes, scales):
        raise ValueError("update contains NaN or Inf")
    _check_scales(scales, "int8")
    return QuantizedUpdate(codes, scales, u.shape[0], block, "int8")


def qsgd(update, levels=16, block=512, seed=0):
    """QSGD stochastic quantization (Alistarh et al. 2017) with ``levels`` levels per block.

    In each block of ``block`` coordinates, ``|u_j| / |u_block|`` is rounded at random to
    one of ``0, 1/s, ..., 1`` (up with probability equal to the remainder), keeping the
    sign: an unbiased estimate of the update. Stored as int8 codes ``sign * level`` and
    one float32 scale ``|u_block| / s`` per block, so ``levels`` is at most 127.

    Parameters
    ----------
    update : (P,) array
    levels : int in [1, 127], default 16
    block : int, default 512
        The paper's bucket size d.
    seed : int, default 0

    Returns
    -------
    QuantizedUpdate

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> u = np.random.default_rng(0).normal(size=1000)
    >>> est = np.mean([fastmb.qsgd(u, levels=16, seed=s).dequantize() for s in range(400)], 0)
    >>> bool(np.abs(est - u).max() < 0.2)     # unbiased: the average converges to u
    True
    """
    u = _as_vector(update)
    s = V.check_number("levels", levels, low=1, high=127, integer=True)
    block = _check_block(block)
    key = _stream(seed)
    from .kernels import quantize as KQ

    codes = np.empty(u.shape[0], np.int8)
    scales = np.empty(-(-u.shape[0] // block), np.float32)
    if KQ.quantize_qsgd(u, block, s, key, codes, scales):
        raise ValueError("update contains NaN or Inf")
    _check_scales(scales, "qsgd")
    return QuantizedUpdate(codes, scales, u.shape[0], block, "qsgd")


def to_half(update, fmt="fp16"):
    """Cast an update to 16 bits: IEEE ``"fp16"`` or ``"bf16"`` (bfloat16), nearest-even.

    fp16 keeps 11 significant bits over a narrow range (values above 65504 raise);
    bf16 keeps float32's range with 8 significant bits.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> fastmb.to_half(np.array([1.0, 3.14159]), "bf16").dequantize()
    array([1.    , 3.140625], dtype=float32)
    """
    u = _as_vector(update)
    if fmt not in ("fp16", "bf16"):
        raise ValueError(f"fmt must be 'fp16' or 'bf16', got {fmt!r}")
    if not np.isfinite(u).all():
        raise ValueError("update contains NaN or Inf")
    if fmt == "fp16":
        if np.abs(u).max() > np.finfo(np.float16).max:
            raise ValueError("update exceeds the float16 range (65504); use bf16")
        codes = u.astype(np.float16)
    else:
        bits = u.astype(np.float32).view(np.uint32)
        codes = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
        if ((codes & 0x7F80) == 0x7F80).any():
            raise ValueError("update rounds to Inf in bfloat16")
    return QuantizedUpdate(codes, np.empty(0, np.float32), u.shape[0], 1, fmt)


def _stream(seed):
    from .kernels import _rng

    s = V.check_number("seed", seed, low=0, high=2**64 - 1, integer=True)
    return np.uint64(_rng.hash2(np.uint64(s), np.uint64(0x51ED)))


def mean_compressed(updates, weights=None, dtype=np.float32):
    """Weighted mean of K compressed updates, read straight from their codes.

    int8 and QSGD updates (same length and block) are aggregated in one pass over
    their codes, coordinate blocks in parallel with a float64 accumulator in cache,
    without densifying any of them: the memory traffic is the compressed bytes.

    Parameters
    ----------
    updates : sequence of QuantizedUpdate (scheme int8 or qsgd, equal n_params and block)
    weights : (K,) array, optional
    dtype : float32 or float64, default float32

    Returns
    -------
    (P,) array

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> qs = [fastmb.quantize_int8(np.full(3, v)) for v in (1.0, 2.0, 6.0)]
    >>> fastmb.mean_compressed(qs, weights=[1, 1, 2])
    array([3.75, 3.75, 3.75], dtype=float32)
    """
    if isinstance(updates, QuantizedUpdate) or not hasattr(updates, "__len__") \
            or len(updates) == 0:
        raise TypeError("updates must be a non-empty sequence of QuantizedUpdate")
    qs = []
    for i, q in enumerate(updates):
        if not isinstance(q, QuantizedUpdate):
            raise TypeError(f"updates[{i}] must be a QuantizedUpdate, got {type(q).__name__}")
        if q.scheme not in ("int8", "qsgd"):
            raise ValueError(f"updates[{i}] has scheme {q.scheme!r}; mean_compressed reads "
                             "int8 and qsgd codes (dequantize 16-bit updates, or use "
                             "WeightedMean.add_quantized)")
        qs.append(q.checked(f"updates[{i}]"))
    n, block = qs[0].n_params, qs[0].block
    for i, q in enumerate(qs):
        if (q.n_params, q.block) != (n, block):
            raise ValueError(f"updates[{i}] has n_params={q.n_params}, block={q.block}; "
                             f"updates[0] has {n}, {block}")
    K = len(qs)
    w = np.ones(K) if weights is None else V.as_weights(weights, K, "weights", "update")
    dtype = np.dtype(dtype)
    if dtype not in V.FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    from numba.typed import List

    from .kernels import quantize as KQ

    out = np.empty(n, dtype)
    KQ.mean_int8(List([q.codes for q in qs]), List([q.scales for q in qs]),
                 w / w.max(), block, w.max() / float(w.sum()), out)
    return out
