"""Compression of updates: top-k and random-k sparsification (:mod:`.sparse`), int8, QSGD
and fp16/bf16 quantization (:mod:`.quantize`), and their byte formats (:mod:`.wire`)."""

from .quantize import SCALE_MAX, QuantizedUpdate, mean_compressed, qsgd, quantize_int8, to_half
from .sparse import SparseUpdate, randk, topk

__all__ = [
                       "SCALE_MAX",
                       "QuantizedUpdate",
                       "SparseUpdate",
                       "mean_compressed",
                       "qsgd",
                       "quantize_int8",
                       "randk",
                       "to_half",
                       "topk",
]
