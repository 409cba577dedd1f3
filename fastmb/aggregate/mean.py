"""Server-side aggregation: FedAvg over a stack of updates, and a streaming weighted mean."""

from __future__ import annotations

import numpy as np

from .. import _device
from .. import _validation as V
from ..compress import QuantizedUpdate, SparseUpdate
from ..kernels import aggregation as KA
from ..kernels import compress as KC
from ..kernels import quantize as KQ


def nonfinite_rows(U):
    """Boolean mask of the rows of a (K, P) stack that hold a NaN or Inf: the one test every
    rule, the streaming mean and the simulation use to find (and name) broken updates."""
    bad = np.empty(U.shape[0], np.bool_)
    KA.rows_nonfinite(U, bad)
    return bad


def check_finite_rows(U, name="updates"):
    """Raise, naming the clients, if a row of U holds a NaN or Inf."""
    bad = np.flatnonzero(nonfinite_rows(U))
    if bad.size:
        raise ValueError(f"{name} contains NaN or Inf (clients {bad.tolist()})")


def fedavg(updates, weights=None, device="cpu"):
    """Weighted mean of K client updates (FedAvg; McMahan et al. 2017).

    ``result[j] = sum_k w_k U[k, j] / sum_k w_k``, accumulated in float64 and cast
    back to the dtype of ``updates``. Coordinates are processed in parallel blocks,
    each summing the clients in order: the same bits on any number of threads.

    Parameters
    ----------
    updates : (K, P) array
        One row per client; float32 and float64 are kept, other dtypes become float64.
    weights : (K,) array, optional
        Non-negative, not all zero (e.g. each client's number of samples). Equal
        weights by default.
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"``: one GPU thread per coordinate, the same float64 sums in the same
        grouping. ``updates`` may be a GPU array (numba, CuPy, PyTorch CUDA: used in place);
        the result then stays on the GPU.

    Returns
    -------
    (P,) array

    Raises
    ------
    ValueError
        On NaN or Inf in ``updates`` (naming the clients), bad weights or shapes.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> fastmb.fedavg(np.array([[1.0, 2.0], [3.0, 6.0]]), weights=[3, 1])
    array([1.5, 3. ])
    """
    gpu = _device.gpu(device)
    if gpu:
        U, on_device = gpu.as_updates(updates)
        return gpu.finish(gpu.weighted_mean(U, _client_weights(weights, U.shape[0])), on_device)
    U = V.as_updates(updates)
    w = _client_weights(weights, U.shape[0])
    out = np.empty(U.shape[1], U.dtype)
    if KA.weighted_mean(U, *V.relative_weights(w), out):
        check_finite_rows(U)
        raise ValueError("the weighted mean overflows the dtype of updates")
    return out


def _client_weights(weights, K):
    return np.ones(K) if weights is None else V.as_weights(weights, K, "weights", "client")


def _pow2_above(w):
    """The smallest power of two >= ``w`` (w > 0, finite), or 2**1023 for a weight above it
    (then weight / scale lies in (1, 2): still far from overflowing)."""
    frac, exp = np.frexp(w)
    return float(np.ldexp(1.0, min(1023, int(exp) - (frac == 0.5))))


class WeightedMean:
    """A streaming, mergeable weighted mean of P-vectors: one client at a time, O(P) memory.

    ``add`` accumulates ``weight * update`` into a float64 sum; ``merge`` combines two
    partial means (from threads, processes or machines); ``result`` returns the mean.
    The answer equals :func:`fedavg` up to float rounding (the summation order differs
    when merging).

    Weights are relative, as in :func:`fedavg`: the sum holds ``weight / scale * update``
    with ``scale`` the smallest power of two at or above the largest weight seen so far
    (the sum is rescaled, exactly, when a larger weight arrives). Any positive finite
    weight works, from subnormal to 1e308, without the sum or its reciprocal leaving the
    float64 range; for ordinary weights the bits are those of the unscaled sum.

    Parameters
    ----------
    n_params : int
    dtype : float32 or float64, default float32
        Dtype of :meth:`result`; the running sum is always float64.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> a, b = fastmb.WeightedMean(2), fastmb.WeightedMean(2)
    >>> a.add(np.array([1.0, 2.0]), weight=3)
    >>> b.add(np.array([3.0, 6.0]))
    >>> a.merge(b)
    >>> a.result()
    array([1.5, 3. ], dtype=float32)
    """

    def __init__(self, n_params, dtype=np.float32):
        self.n_params = V.check_number("n_params", n_params, low=1, integer=True)
        self.dtype = np.dtype(dtype)
        if self.dtype not in V.FLOATS:
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self._sum = np.zeros(self.n_params, np.float64)
        self._scale = 1.0   # a power of two; the sum and total are in its units
        self._total = 0.0
        self.count = 0

    def __repr__(self):
        return (f"WeightedMean(n_params={self.n_params}, count={self.count}, "
                f"total_weight={self.total_weight})")

    @property
    def total_weight(self):
        """The sum of the weights added so far."""
        return self._total * self._scale

    def weighted_sum(self, divisor=1.0):
        """``sum_k weight_k * update_k / divisor`` so far, as a new float64 array.

        Divided before the power-of-two scale is applied, so only a quotient beyond the
        float64 range is Inf (not a sum that the division would have brought back)."""
        with np.errstate(over="ignore"):
            return (self._sum / divisor) * self._scale

    def _fit(self, w_max):
        """Make the scale cover a new largest weight; returns the scale to divide weights by.

        The first positive weight sets the scale (so a stream of tiny weights keeps full
        precision); a later larger one rescales the sum and total by a power of two."""
        if w_max > 0 and (self._total == 0 or w_max > self._scale):
            new = _pow2_above(w_max)
            if self._total:  # else the sum is zero: only zero weights were added
                KA.scale_inplace(self._sum, self._scale / new)
                self._total *= self._scale / new
            self._scale = new
        return self._scale

    def add(self, update, weight=1.0):
        """Add one update with a non-negative weight. A bad update changes nothing."""
        u = V._as_numeric("update", update)
        if u.ndim != 1 or u.shape[0] != self.n_params:
            raise ValueError(f"update must be a 1-D array of length {self.n_params}, "
                             f"got shape {u.shape}")
        w = V.check_number("weight", weight, low=0)
        u = np.ascontiguousarray(u, dtype=V.float_dtype(u))
        # Check first, then accumulate: the state is never left half-updated.
        if KA.count_nonfinite(u):
            raise ValueError("update contains NaN or Inf")
        scale = self._fit(w)
        KA.axpy(self._sum, w / scale, u)
        self._total += w / scale
        self.count += 1

    def add_many(self, updates, weights=None):
        """Add K updates at once, a (K, P) stack, with K non-negative weights (default 1).

        One pass over the stack, clients summed in order into the float64 sum: the same
        bits whatever the thread count, which is what makes a sharded mean (shards added
        here, then merged in a fixed tree) reproducible across processes. Rows with NaN
        or Inf raise, naming them, and nothing is added.

        Examples
        --------
        >>> import numpy as np, fastmb
        >>> wm = fastmb.WeightedMean(2)
        >>> wm.add_many(np.array([[1.0, 2.0], [3.0, 6.0]]), weights=[3, 1])
        >>> wm.result()
        array([1.5, 3. ], dtype=float32)
        """
        U = V.as_updates(updates)
        if U.shape[1] != self.n_params:
            raise ValueError(f"updates must have {self.n_params} columns, got shape {U.shape}")
        K = U.shape[0]
        w = (np.ones(K) if weights is None
             else V.as_weights(weights, K, "weights", "client", allow_zero_sum=True))
        check_finite_rows(U)
        w = np.ascontiguousarray(w / self._fit(float(w.max())), np.float64)
        KA.accumulate_rows(self._sum, U, w)
        self._total += float(np.sum(w))
        self.count += K

    def add_sparse(self, sparse, weight=1.0):
        """Add a :class:`fastmb.SparseUpdate` (e.g. from :func:`fastmb.topk`) without densifying it.

        Costs O(k), not O(P): only the sent coordinates are touched.
        """
        if not isinstance(sparse, SparseUpdate):
            raise TypeError(f"sparse must be a fastmb.SparseUpdate, got {type(sparse).__name__}")
        w = V.check_number("weight", weight, low=0)
        idx, val, n = sparse.checked("sparse")
        if n != self.n_params:
            raise ValueError(f"sparse has n_params={n}, expected {self.n_params}")
        scale = self._fit(w)
        KC.sparse_axpy(self._sum, w / scale, idx, val)
        self._total += w / scale
        self.count += 1

    def add_quantized(self, quantized, weight=1.0):
        """Add a :class:`fastmb.QuantizedUpdate` (int8, QSGD, fp16 or bf16) from its codes.

        int8/QSGD and bf16 are decoded on the fly inside the accumulation (no dense
        copy); fp16 is widened first.
        """
        if not isinstance(quantized, QuantizedUpdate):
            raise TypeError(f"quantized must be a fastmb.QuantizedUpdate, got "
                            f"{type(quantized).__name__}")
        w = V.check_number("weight", weight, low=0)
        q = quantized.checked("quantized")
        if q.n_params != self.n_params:
            raise ValueError(f"quantized has n_params={q.n_params}, expected {self.n_params}")
        ws = w / self._fit(w)
        if q.scheme in ("int8", "qsgd"):
            KQ.axpy_int8(self._sum, ws, q.codes, q.scales, q.block)
        elif q.scheme == "bf16":
            KQ.axpy_bf16(self._sum, ws, q.codes)
        else:
            KA.axpy(self._sum, ws, q.codes.astype(np.float32))
        self._total += ws
        self.count += 1

    def merge(self, other):
        """Fold another WeightedMean of the same length into this one."""
        if not isinstance(other, WeightedMean):
            raise TypeError(f"other must be a WeightedMean, got {type(other).__name__}")
        if other.n_params != self.n_params:
            raise ValueError(f"other has n_params={other.n_params}, expected {self.n_params}")
        if other._total:
            # Both sums in the larger of the two scales (a power-of-two ratio: exact).
            scale = self._fit(other._scale)
            KA.axpy(self._sum, other._scale / scale, other._sum)
            self._total += other._total * (other._scale / scale)
        self.count += other.count

    def result(self):
        """The weighted mean so far, in ``dtype``; raises if the total weight is zero or the
        mean does not fit ``dtype``."""
        if self._total <= 0:
            raise ValueError("the mean is undefined: no update with a positive weight was added")
        out = np.empty(self.n_params, self.dtype)
        KA.divide_into(self._sum, self._total, out)
        return V.finite_result(out, "the weighted mean")

    def state_dict(self):
        """The state as plain arrays and numbers (for checkpoints and for shipping): the
        scaled sum, its power-of-two scale, the scaled total weight, the count, the dtype."""
        return {"sum": self._sum.copy(), "scale": self._scale, "total": self._total,
                "count": self.count, "dtype": self.dtype.name}

    @classmethod
    def from_state_dict(cls, state):
        """Rebuild a WeightedMean from :meth:`state_dict`; every field is checked first."""
        keys = {"sum", "scale", "total", "count", "dtype"}
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError(f"state must be a dict with keys {sorted(keys)}")
        s = V._as_numeric("state['sum']", state["sum"])
        if s.ndim != 1 or s.shape[0] == 0 or not np.isfinite(s).all():
            raise ValueError("state['sum'] must be a non-empty finite 1-D array")
        scale = V.check_number("state['scale']", state["scale"], low=0, low_open=True)
        if _pow2_above(scale) != scale:
            raise ValueError(f"state['scale'] must be a power of two, got {scale}")
        total = V.check_number("state['total']", state["total"], low=0)
        count = V.check_number("state['count']", state["count"], low=0, integer=True)
        wm = cls(s.shape[0], state["dtype"])
        wm._sum[:] = s
        wm._scale, wm._total, wm.count = scale, total, count
        return wm
