"""Quantized updates: int8 per block, QSGD, fp16/bf16; their mean straight from the codes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba.typed import List

from .. import _validation as V
from ..kernels import _rng
from ..kernels import quantize as KQ
from . import wire
from .wire import CODE_DTYPES, SCHEMES


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
        out = np.empty(q.n_params, dtype)
        KQ.dequantize_int8(q.codes, q.scales, q.block, out)
        return out

    def to_bytes(self):
        """Little-endian bytes (:func:`fastmb.compress.wire.encode_quantized`)."""
        q = self.checked()
        return wire.encode_quantized(q.scheme, q.codes, q.scales, q.n_params, q.block)

    @classmethod
    def from_bytes(cls, data):
        """Decode :meth:`to_bytes`; raises ``ValueError`` on anything malformed."""
        return cls(*wire.decode_quantized(data)).checked("data")

    def checked(self, name="quantized"):
        """This update with contiguous arrays, after checking every field a kernel relies on:
        the scheme; ``n_params`` and ``block`` positive integers; codes of the scheme's dtype
        and of shape ``(n_params,)``; float32 scales, one per block, finite, non-negative and
        at most :data:`SCALE_MAX` (so every dequantized value is a finite float32, whatever
        the int8 codes); 16-bit codes finite."""
        if not isinstance(self.scheme, str) or self.scheme not in SCHEMES:
            raise ValueError(f"{name}: scheme must be one of {sorted(SCHEMES)}, got "
                             f"{self.scheme!r}")
        n = V.check_number(f"{name}.n_params", self.n_params, low=1, integer=True)
        block = V.check_number(f"{name}.block", self.block, low=1, high=2**31 - 1, integer=True)
        codes = np.ascontiguousarray(self.codes)
        scales = np.ascontiguousarray(self.scales)
        if codes.dtype != CODE_DTYPES[self.scheme] or codes.shape != (n,):
            raise ValueError(f"{name}: codes must be {np.dtype(CODE_DTYPES[self.scheme])} of "
                             f"shape ({n},)")
        nb = wire.n_blocks(self.scheme, n, block)
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
    u = V.as_vector(update)
    block = _check_block(block)
    if not isinstance(stochastic, (bool, np.bool_)):
        raise TypeError(f"stochastic must be a bool, got {type(stochastic).__name__}")
    key = _stream(seed)
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
    u = V.as_vector(update)
    s = V.check_number("levels", levels, low=1, high=127, integer=True)
    block = _check_block(block)
    key = _stream(seed)
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
    u = V.as_vector(update)
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
    out = np.empty(n, dtype)
    rel, inv_total = V.relative_weights(w)
    KQ.mean_int8(List([q.codes for q in qs]), List([q.scales for q in qs]), rel, block,
                 inv_total, out)
    return out
