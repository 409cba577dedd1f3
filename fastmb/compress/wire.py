"""The byte formats of compressed updates (what travels), decoded with every length checked.

Both are little-endian: a fixed header (a 4-byte magic, a code, sizes) and then the arrays.
Decoding checks the framing only (the magic, the code, that the byte count matches the
header's sizes) and returns the raw fields; the update's own ``checked()`` then validates
every value a kernel relies on, as it does for an update built any other way.
"""

from __future__ import annotations

import struct

import numpy as np

SPARSE_MAGIC = b"FMBK"
SPARSE_HEADER = struct.Struct("<4sBQQ")  # magic, dtype code, n_params, k
SPARSE_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f8")}

QUANT_MAGIC = b"FMBQ"
QUANT_HEADER = struct.Struct("<4sBQI")  # magic, scheme code, n_params, block
SCHEMES = {"int8": 0, "qsgd": 1, "fp16": 2, "bf16": 3}
CODE_DTYPES = {"int8": np.int8, "qsgd": np.int8, "fp16": np.float16, "bf16": np.uint16}
BLOCKED = ("int8", "qsgd")  # the schemes with one float32 scale per block


def n_blocks(scheme, n, block):
    """Scales of a quantized update: one per block for int8/QSGD, none for 16-bit codes."""
    return -(-n // block) if scheme in BLOCKED else 0


def encode_sparse(idx, val, n):
    """A 21-byte header, uint32 (or uint64 past 2**32 parameters) indices, then the values."""
    code = 0 if val.dtype == np.float32 else 1
    ity = "<u4" if n <= 2**32 else "<u8"
    return (SPARSE_HEADER.pack(SPARSE_MAGIC, code, n, len(idx))
            + idx.astype(ity).tobytes() + val.astype(SPARSE_DTYPES[code]).tobytes())


def decode_sparse(data):
    """``(indices, values, n_params)`` of :func:`encode_sparse`'s bytes (unchecked values)."""
    data = bytes(data)
    if len(data) < SPARSE_HEADER.size:
        raise ValueError("data is too short to be a SparseUpdate")
    magic, code, n, k = SPARSE_HEADER.unpack_from(data)
    if magic != SPARSE_MAGIC or code not in SPARSE_DTYPES:
        raise ValueError("data is not an encoded SparseUpdate")
    isz = 4 if n <= 2**32 else 8
    vdt = SPARSE_DTYPES[code]
    need = SPARSE_HEADER.size + k * (isz + vdt.itemsize)
    if len(data) != need:
        raise ValueError(f"data has {len(data)} bytes; a SparseUpdate with k={k} needs {need}")
    off = SPARSE_HEADER.size
    idx = np.frombuffer(data, f"<u{isz}", k, off)
    val = np.frombuffer(data, vdt, k, off + k * isz).astype(vdt.newbyteorder("="))
    return idx, val, int(n)


def encode_quantized(scheme, codes, scales, n, block):
    """A 17-byte header, the codes, then the float32 scales."""
    return (QUANT_HEADER.pack(QUANT_MAGIC, SCHEMES[scheme], n, block)
            + codes.astype(np.dtype(CODE_DTYPES[scheme]).newbyteorder("<")).tobytes()
            + scales.astype("<f4").tobytes())


def decode_quantized(data):
    """``(codes, scales, n_params, block, scheme)`` of :func:`encode_quantized`'s bytes."""
    data = bytes(data)
    if len(data) < QUANT_HEADER.size:
        raise ValueError("data is too short to be a QuantizedUpdate")
    magic, code, n, block = QUANT_HEADER.unpack_from(data)
    names = {v: k for k, v in SCHEMES.items()}
    if magic != QUANT_MAGIC or code not in names or n == 0 or block == 0:
        raise ValueError("data is not an encoded QuantizedUpdate")
    scheme = names[code]
    cdt = np.dtype(CODE_DTYPES[scheme]).newbyteorder("<")
    nb = n_blocks(scheme, n, block)
    need = QUANT_HEADER.size + n * cdt.itemsize + 4 * nb
    if len(data) != need:
        raise ValueError(f"data has {len(data)} bytes; a {scheme} update of {n} parameters "
                         f"needs {need}")
    codes = np.frombuffer(data, cdt, n, QUANT_HEADER.size).astype(cdt.newbyteorder("="))
    scales = np.frombuffer(data, "<f4", nb, QUANT_HEADER.size + n * cdt.itemsize)
    return codes, scales.astype(np.float32), int(n), int(block), scheme
