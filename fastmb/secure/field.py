"""Updates as vectors of a finite group, and masks from keystreams.

Secure aggregation adds integers modulo ``2**32`` or ``2**64``: :class:`FieldQuantizer`
turns a float update into such a vector (clip, scale, stochastic rounding, times the
client's integer weight, with the weight appended), and :func:`add_mask` adds or subtracts
a mask expanded from a 32-byte seed by a keystream of the ``cryptography`` package
(AES-256-CTR or ChaCha20), chunk by chunk into one preallocated buffer, each chunk added
by a Numba kernel (``kernels/secure.py``) while it is still in cache.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from .. import _validation as V
from ..kernels import secure as KS
from . import _crypto as C

#: Bytes of keystream per chunk: the buffer stays in the core's L2 cache while the kernel
#: adds it (measured on the development VM: 1 MiB chunks ran at the keystream's speed).
CHUNK_BYTES = 1 << 20
_LOCAL = threading.local()   # one chunk buffer per thread, made on its first mask


def _buffers():
    """This thread's ``(keystream buffer, zero plaintext)`` (the keystream is the
    encryption of zeros)."""
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        # cryptography's update_into wants room for a block beyond the data
        bufs = _LOCAL.bufs = (np.empty(CHUNK_BYTES + 64, np.uint8),
                              memoryview(bytes(CHUNK_BYTES)))
    return bufs


def add_mask(out, seed, *, negate=False, cipher="aes-ctr"):
    """``out += mask`` (``-=`` with ``negate``) modulo ``2**bits``: the mask is the first
    ``out.nbytes`` bytes of the keystream of ``seed`` (32 bytes), read as words of
    ``out``'s type (uint32 or uint64, little-endian as the machine reads them).

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.secure import add_mask
    >>> y = np.arange(5, dtype=np.uint32)
    >>> add_mask(y, bytes(32)); add_mask(y, bytes(32), negate=True)
    >>> y.tolist()
    [0, 1, 2, 3, 4]
    """
    if not isinstance(out, np.ndarray) or out.dtype not in (np.uint32, np.uint64) \
            or out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise TypeError("out must be a writable contiguous 1-D uint32 or uint64 array")
    seed = bytes(seed)
    if len(seed) != C.KEY_BYTES:
        raise ValueError(f"seed must be {C.KEY_BYTES} bytes, got {len(seed)}")
    C.check_choice("cipher", cipher, C.CIPHERS)
    enc = C.keystream(seed, cipher)
    buf, zeros = _buffers()
    words = buf[:CHUNK_BYTES].view(out.dtype)
    per = words.shape[0]
    n = out.shape[0]
    for lo in range(0, n, per):
        hi = min(n, lo + per)
        enc.update_into(zeros[:(hi - lo) * out.dtype.itemsize], buf)
        KS.add_words(out[lo:hi], words[:hi - lo], negate)


def mask_words(seed, n, dtype=np.uint32, cipher="aes-ctr"):
    """The mask of ``seed`` as ``n`` words (the whole keystream at once: for tests and
    reference code)."""
    out = np.zeros(n, dtype)
    add_mask(out, seed, cipher=cipher)
    return out


@dataclasses.dataclass(frozen=True)
class FieldQuantizer:
    """Float updates as integers modulo ``2**modulus_bits``.

    A coordinate is clipped to ``[-clip, clip]`` and mapped to ``q = floor((x + clip) *
    scale + xi)`` with ``scale = (2**bits - 1) / (2 clip)`` and ``xi`` uniform in [0, 1)
    (stochastic rounding: ``E[q] = (x + clip) * scale``), so ``0 <= q <= 2**bits - 1``.
    A client sends ``w * q`` and, as one more coordinate, ``w`` (its integer weight, at
    most ``max_weight``). The sum over n clients is exact while ``n * max_weight *
    (2**bits - 1) < 2**modulus_bits``; :meth:`check_clients` refuses more clients before
    anything is sent. :meth:`dequantize` turns the sum back into the weighted mean of the
    clipped updates, within :attr:`error` (one step) of it in every coordinate.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.secure import FieldQuantizer
    >>> fq = FieldQuantizer(clip=1.0, bits=16, max_weight=10)
    >>> fq.largest_safe_clients()
    6553
    >>> a = fq.quantize(np.array([0.5, -0.25]), 3, key=1)
    >>> b = fq.quantize(np.array([0.1, 0.0]), 1, key=2)
    >>> mean = fq.dequantize(a + b)      # (3 * u_a + u_b) / 4, within one step
    >>> bool(np.abs(mean - [0.4, -0.1875]).max() <= fq.error)
    True
    """

    clip: float = 1.0
    bits: int = 16
    modulus_bits: int = 32
    max_weight: int = 1

    def __post_init__(self):
        V.check_number("clip", self.clip, low=0, low_open=True)
        if not self.clip < 1e300:
            raise ValueError(f"clip must be a finite range, got {self.clip}")
        V.check_number("bits", self.bits, low=1, high=32, integer=True)
        if self.modulus_bits not in (32, 64):
            raise ValueError(f"modulus_bits must be 32 or 64, got {self.modulus_bits!r}")
        V.check_number("max_weight", self.max_weight, low=1, integer=True)
        if self.largest_safe_clients() < 1:
            raise ValueError(f"max_weight * (2**bits - 1) = {self.max_weight * self.levels} "
                             f"does not fit modulo 2**{self.modulus_bits}: lower bits or "
                             "max_weight, or use modulus_bits=64")

    @property
    def levels(self):
        """The largest quantized value, ``2**bits - 1``."""
        return (1 << self.bits) - 1

    @property
    def dtype(self):
        return np.dtype(np.uint32 if self.modulus_bits == 32 else np.uint64)

    @property
    def scale(self):
        return self.levels / (2.0 * self.clip)

    @property
    def error(self):
        """The most a coordinate of :meth:`dequantize`'s mean can differ from the weighted
        mean of the clipped updates: one quantization step, ``2 clip / (2**bits - 1)``."""
        return 2.0 * self.clip / self.levels

    def largest_safe_clients(self):
        """The most clients whose sum cannot wrap around the modulus."""
        top = (1 << self.modulus_bits) - 1
        return min(top // (self.max_weight * self.levels), top // self.max_weight)

    def check_clients(self, n):
        """Refuse ``n`` clients when their sum could wrap (before anything is sent)."""
        n = V.check_number("n_clients", n, low=0, integer=True)
        safe = self.largest_safe_clients()
        if n > safe:
            raise ValueError(
                f"{n} clients can overflow the group: the sum of up to {n} x max_weight "
                f"{self.max_weight} x {self.levels} does not fit modulo 2**"
                f"{self.modulus_bits}; at most {safe} clients are safe (lower bits, "
                "lower max_weight or use modulus_bits=64)")
        return n

    def check_weight(self, weight, name="weight"):
        return V.check_number(name, weight, low=0, high=self.max_weight, integer=True)

    def quantize(self, update, weight, key, out=None):
        """``w * q`` of the update, then ``w``: a ``(P + 1,)`` vector of :attr:`dtype`
        (written into ``out`` when given). ``key`` seeds the stochastic rounding
        (reproducible); NaN or Inf in ``update`` raises."""
        u = V._as_numeric("update", update)
        if u.ndim != 1 or u.shape[0] == 0:
            raise ValueError(f"update must be a non-empty 1-D array, got shape {u.shape}")
        if u.dtype.kind != "f":
            u = u.astype(np.float64)
        w = self.check_weight(weight)
        P = u.shape[0]
        if out is None:
            out = np.empty(P + 1, self.dtype)
        elif out.shape != (P + 1,) or out.dtype != self.dtype:
            raise ValueError(f"out must be a ({P + 1},) {self.dtype} array")
        key = np.uint64(V.check_number("key", key, integer=True, low=-(1 << 63),
                                       high=(1 << 64) - 1) % (1 << 64))
        nbad = KS.quantize_field(np.ascontiguousarray(u), float(self.clip), self.scale,
                                 np.uint64(w), key, out[:P])
        if nbad:
            raise ValueError(f"update contains {nbad} NaN or Inf values")
        out[P] = w
        return out

    def dequantize(self, total):
        """The weighted mean of the clipped updates, float64, from the exact sum ``total``
        (``(P + 1,)``, the summed weight last)."""
        t = np.asarray(total)
        if t.dtype != self.dtype or t.ndim != 1 or t.shape[0] < 2:
            raise ValueError(f"total must be a (P + 1,) {self.dtype} vector")
        W = int(t[-1])
        if W == 0:
            raise ValueError("the summed weight is 0: no client's update is in the sum")
        return t[:-1].astype(np.float64) * (self.error / W) - self.clip
