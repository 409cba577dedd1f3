"""Compression of updates: top-k and random-k sparsification (:mod:`.sparse`), int8, QSGD
and fp16/bf16 quantization (:mod:`.quantize`), and their byte formats (:mod:`.wire`)."""

from .quantize import (SCALE_MAX, QuantizedUpdate, mean_compressed, qsgd, quantize_int8,
                       to_half)
from .sparse import SparseUpdate, randk, topk

__all__ = ["SparseUpdate", "topk", "randk", "QuantizedUpdate", "quantize_int8", "qsgd", "to_half",
           "mean_compressed", "SCALE_MAX"]
