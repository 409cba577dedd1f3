"""Argument checks and conversions shared by the public API.

Every check raises a ``ValueError`` or ``TypeError`` that names the argument and what
was expected. Conversions (dtype, contiguity) happen once here; arrays that need
none are passed through without a copy, and nothing here writes to a caller's array.
"""

from __future__ import annotations

import numbers

import numpy as np

from .kernels._input import SparseRows, sparse_rows
from .models import _Model

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_model(model):
    if not isinstance(model, _Model):
        raise TypeError(f"model must be a fastmb.Linear or fastmb.MLP, got {type(model).__name__}")
    return model


def on_gpu(a):
    """True for numba device arrays and anything with ``__cuda_array_interface__``."""
    return bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__")


def _as_numeric(name, a):
    if on_gpu(a):
        raise TypeError(f"{name} is on the GPU: pass device='cuda' to use it there, or copy it "
                        "to the host first")
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like of numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def kernel_array(a, dtype):
    """``a`` as a C-contiguous, writeable array of ``dtype``: the one form every kernel
    argument takes (copied only when ``a`` is not that already).

    A read-only array (``Partition.rows``, a memory-mapped file, ``np.broadcast_to``) is
    copied even though no kernel writes into its inputs: Numba compiles a separate
    specialization for read-only arrays, which would cost a first call its compile time
    again (seconds) for every kernel that ever sees one.
    """
    out = np.ascontiguousarray(a, dtype=dtype)
    if not out.flags.writeable:
        out = out.copy()
    return out


def as_updates(updates, name="updates"):
    """A (K, P) stack of client updates, K, P >= 1, as a contiguous float array."""
    U = _as_numeric(name, updates)
    if U.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_clients, n_params), got shape {U.shape}")
    if U.shape[0] == 0 or U.shape[1] == 0:
        raise ValueError(f"{name} is empty: got shape {U.shape}")
    return kernel_array(U, dtype=float_dtype(U))


def as_vector(update, name="update"):
    """A non-empty 1-D update as a contiguous float array."""
    u = _as_numeric(name, update)
    if u.ndim != 1 or u.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {u.shape}")
    return kernel_array(u, dtype=float_dtype(u))


def as_residual(residual, u):
    """An error-feedback residual for the update ``u``, used (and written) in place: the
    caller's own C-contiguous, writeable array of u's shape and dtype; None stays None."""
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


def float_dtype(arr):
    """float32 and float64 are kept; every other numeric dtype computes in float64."""
    return arr.dtype if arr.dtype in FLOATS else np.dtype(np.float64)


def as_params(model, params, name="params"):
    p = _as_numeric(name, params)
    if p.ndim != 1 or p.shape[0] != model.n_params:
        raise ValueError(f"{name} must be a 1-D array of length model.n_params={model.n_params}, "
                         f"got shape {p.shape}")
    p = kernel_array(p, dtype=float_dtype(p))
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return p


def is_sparse(X):
    """True for SciPy sparse matrices and arrays (any format), without importing SciPy."""
    return type(X).__module__.startswith("scipy.sparse") and hasattr(X, "tocsr")


def n_samples(X):
    """Rows of X as a caller passed it (an array, a list, a SciPy sparse matrix), or of
    the kernels' form of it; 0 for a scalar."""
    if is_sparse(X):
        return X.shape[0]
    if isinstance(X, SparseRows):
        return X.starts.shape[0]
    return len(X) if np.ndim(X) >= 1 else 0


def nonfinite_rows(X):
    """Rows of the kernels' X (dense, or :class:`SparseRows`) holding a NaN or Inf."""
    if isinstance(X, SparseRows):
        bad = np.flatnonzero(~np.isfinite(X.data))
        return np.unique(np.searchsorted(X.ends, bad, side="right"))
    return np.flatnonzero(~np.isfinite(X).all(1))


def as_X(model, X, dtype, name="X", sparse=True):
    """The model's input as the kernels read it: a C-ordered array of ``dtype``, or for a
    SciPy sparse matrix (``sparse=True``) the :class:`SparseRows` of its CSR form."""
    if is_sparse(X):
        if not sparse:
            raise TypeError(f"{name} is a SciPy sparse matrix, which runs on the CPU only "
                            "(device='cpu'); densify it with X.toarray() for the GPU")
        return as_sparse_rows(model, X, dtype, name)
    X = _as_numeric(name, X)
    if X.ndim != 2:
        hint = " (reshape a single sample with X.reshape(1, -1))" if X.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}{hint}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample")
    if X.shape[1] != model.n_features:
        raise ValueError(f"{name} has {X.shape[1]} features but the model expects "
                         f"{model.n_features}")
    return kernel_array(X, dtype=dtype)


def as_sparse_rows(model, X, dtype, name="X"):
    """A SciPy sparse matrix or array as the kernels' :class:`SparseRows` (CSR), checked.

    Converted once: another format to CSR, the values to ``dtype``, duplicate entries
    summed and indices sorted (what scikit-learn's estimators also do on input), the
    index arrays to int32 when every index fits (int64 otherwise). The caller's matrix
    is never modified: a conversion works on a copy. Structural errors (index out of
    range, a bad ``indptr``) raise before any kernel runs, since kernels do not check
    bounds; NaN or Inf among the stored values is reported by the kernels' usual check,
    naming the row.
    """
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    n, d = X.shape
    if n == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample")
    if d != model.n_features:
        raise ValueError(f"{name} has {d} features but the model expects {model.n_features}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if X.format != "csr":
        X = X.tocsr()  # a new matrix: the caller's is untouched
    data, indices, indptr = X.data, X.indices, X.indptr
    if indptr.ndim != 1 or indptr.shape[0] != n + 1:
        raise ValueError(f"{name}.indptr must have n_samples + 1 = {n + 1} entries, got "
                         f"{indptr.shape}")
    nnz = int(indptr[-1]) if indptr.shape[0] else 0
    if indptr[0] != 0 or nnz > min(data.shape[0], indices.shape[0]) \
            or (n and np.any(np.diff(indptr) < 0)):
        raise ValueError(f"{name}.indptr must start at 0, never decrease and end at most at "
                         f"the number of stored values ({data.shape[0]})")
    indices = indices[:nnz]
    if nnz and (indices.min() < 0 or indices.max() >= d):
        raise ValueError(f"{name}.indices must lie in [0, {d}) (n_features); got values in "
                         f"[{indices.min()}, {indices.max()}]")
    if not _canonical(indices, indptr):
        X = X.copy()
        X.sum_duplicates()  # sorts the indices of each row and sums repeated ones
        data, indices, indptr = X.data, X.indices, X.indptr
        nnz = int(indptr[-1])
    idx_dtype = np.int32 if max(nnz, d) < 2**31 else np.int64
    return sparse_rows(kernel_array(data[:nnz], dtype=dtype),
                       kernel_array(indices[:nnz], dtype=idx_dtype),
                       kernel_array(indptr, dtype=idx_dtype), d)


def _canonical(indices, indptr):
    """Indices strictly increasing within every row (sorted, no duplicates): vectorized,
    not SciPy's cached flag (which a caller who edits ``indices`` can leave stale)."""
    if indices.shape[0] < 2:
        return True
    rising = indices[1:] > indices[:-1]
    # a position where a new row starts may go down
    starts = indptr[1:-1]
    starts = starts[(starts > 0) & (starts < indices.shape[0])]
    rising[starts - 1] = True
    return bool(rising.all())


def as_y(model, y, n, dtype, name="y"):
    """Labels as the kernels want them: ``(yc, yr)``, class indices or regression targets."""
    y = _as_numeric(name, y)
    k = model.n_outputs
    if model.is_classifier:
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"{name} must be a 1-D array of {n} class indices, got shape "
                             f"{y.shape}")
        if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
            raise ValueError(f"{name} must hold integer class indices; got non-integer values")
        C = model.n_classes
        if n and (y.min() < 0 or y.max() >= C):
            raise ValueError(f"{name} must hold class indices in [0, {C}) for loss "
                             f"{model.loss!r}; got values in [{y.min()}, {y.max()}]")
        yc = kernel_array(y, dtype=np.int64)
        return yc, np.empty((0, k), dtype)
    if y.ndim == 1 and k == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape != (n, k):
        want = f"({n},) or ({n}, 1)" if k == 1 else f"({n}, {k})"
        raise ValueError(f"{name} must have shape {want} for a model with {k} output(s), "
                         f"got {y.shape}")
    yr = kernel_array(y, dtype=dtype)
    if not np.isfinite(yr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return np.empty(0, np.int64), yr


def as_weights(weights, n, name, unit, allow_zero_sum=False):
    """Non-negative float64 weights, one per ``unit`` (sample, client), not all zero
    (unless ``allow_zero_sum``: a partial sum may carry no weight yet)."""
    w = _as_numeric(name, weights)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array of length {n} (one per {unit}), "
                         f"got shape {w.shape}")
    w = kernel_array(w, dtype=np.float64)
    if not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if (w < 0).any():
        raise ValueError(f"{name} must be non-negative; {unit} {int(np.argmin(w))} has "
                         f"weight {w.min()}")
    if not allow_zero_sum and not w.any():
        verb = "are" if name.endswith("s") else "is"
        raise ValueError(f"{name} {verb} all zero: at least one {unit} needs a positive weight")
    return w


def relative_weights(w):
    """``(w * 2**-e, 1 / sum(w * 2**-e))``: the weights of a mean ``sum_k w_k u_k / sum_k w_k``
    scaled by the power of two that brings the largest into (0.5, 1], and the reciprocal of
    their total.

    The total then lies in (0.5, K], so its reciprocal is finite for any positive finite
    weights, subnormal or near 1e308, whose raw sum could underflow to zero or overflow.
    Scaling by a power of two is exact: integer weights stay exact, and a mean whose terms
    and total are exact in binary (weights summing to a power of two) is exact too.
    ``w`` is non-negative, not all zero.
    """
    rel = np.ldexp(w, -_weight_exponent(w))
    return rel, 1.0 / float(np.sum(rel))


def as_sample_weight(sample_weight, n, name="sample_weight"):
    """float64 weights scaled so the largest lies in (0.5, 1], or an empty array meaning
    'all ones'.

    Sample weights are relative (every use divides by their sum), so a power-of-two
    scale changes no bit of any result (binary scaling is exact) while keeping
    ``weight * gradient`` in range for float32: weights of 1e-50 would otherwise round
    every product to zero, and 1e39 overflow it. A power of two that is itself a
    weight's maximum (all ones, say) is left as it is.
    """
    if sample_weight is None:
        return np.empty(0, np.float64)
    w = as_weights(sample_weight, n, name, "sample")
    exp = _weight_exponent(w)
    return np.ldexp(w, -exp) if exp else w


def _weight_exponent(w):
    frac, exp = np.frexp(w.max())
    return int(exp) - 1 if frac == 0.5 else int(exp)


def sample_weight_scale(sample_weight):
    """The power of two :func:`as_sample_weight` multiplies (checked) weights by: a term
    that does not scale with the weights (an L2 penalty of the batch's summed loss) is
    multiplied by it too, so that results keep the caller's scale."""
    if sample_weight is None:
        return 1.0
    return float(np.ldexp(1.0, -_weight_exponent(np.asarray(sample_weight, np.float64))))


def check_number(name, value, *, low=None, high=None, low_open=False, integer=False):
    """A real scalar in [low, high] (or (low, high] with ``low_open``).

    Integers are bounded by int64 unless tighter bounds are given: every integer that
    reaches a kernel fits its int64 argument, so none can wrap on the way.
    """
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
        what = "an integer" if integer else "a real number"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    if integer:
        v = int(value)
        low = INT64_MIN if low is None else low
        high = INT64_MAX if high is None else high
    else:
        v = float(value)
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {v}")
    return v


def as_index_array(name, a, *, high, low=0, length=None):
    """A 1-D int64 array of integers in ``[low, high)``.

    The range is checked on the values as given (as Python integers), before any cast:
    a float beyond int64 or a uint64 above 2**63 would otherwise wrap on the way to
    int64 and reach a kernel as a negative index. Floats must be integral; booleans
    are refused (they are masks, not indices).
    """
    arr = _as_numeric(name, a)
    if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
        want = f"{length} " if length is not None else ""
        raise ValueError(f"{name} must be a 1-D array of {want}integers, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} must hold integers, got booleans")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all()
                                      and np.array_equal(arr, np.round(arr))):
        raise TypeError(f"{name} must hold integers, got non-integer values")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < low or hi >= high:
            raise ValueError(f"{name} must lie in [{low}, {high}), got values in [{lo}, {hi}]")
    return kernel_array(arr, dtype=np.int64)


def as_offsets(name, offsets, n_rows, what):
    """Client offsets: K + 1 >= 2 strictly increasing integers in ``[0, n_rows]``.

    ``what`` names the rows the offsets index (for the message). Values are range-checked
    before the cast (see :func:`as_index_array`) and compared pairwise rather than
    differenced, so nothing can wrap around.
    """
    arr = _as_numeric(name, offsets)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of K+1 row offsets (K >= 1), "
                         f"got shape {arr.shape}")
    try:
        off = as_index_array(name, arr, high=n_rows + 1)
    except ValueError:
        raise ValueError(f"{name} must lie in [0, {n_rows}] ({what}), got values in "
                         f"[{arr.min()}, {arr.max()}]") from None
    down = np.flatnonzero(off[1:] <= off[:-1])
    if down.size:
        k = int(down[0])
        raise ValueError(f"{name} must be strictly increasing (each client owns at least one "
                         f"row); client {k} has offsets {off[k]}..{off[k + 1]}")
    return off


def no_overlap(name, out, **inputs):
    """Refuse an output array that shares memory with an input the kernel reads."""
    for other, arr in inputs.items():
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"{name} shares memory with {other}: the kernel would overwrite "
                             f"its own input; pass a separate array")


class ResultOverflow(ValueError):
    """Finite inputs gave a result that the output dtype cannot hold (a ValueError; the
    simulation catches exactly this one and rejects such an aggregate as a whole)."""


def finite_result(a, what):
    """``a`` if it is finite; otherwise a :class:`ResultOverflow` saying what overflowed."""
    if not np.isfinite(a).all():
        dtype = np.asarray(a).dtype
        raise ResultOverflow(f"{what} overflows {dtype} (the inputs are finite, the result is "
                         f"not representable); scale the inputs"
                         + (" or use float64" if dtype == np.float32 else ""))
    return a


def first_bad(bad):
    """The first flagged row of a kernel's per-task ``bad`` array, or -1."""
    flagged = bad[bad >= 0]
    return int(flagged.min()) if flagged.size else -1


def raise_bad_row(X, row, overflow=None):
    """Explain a row a kernel flagged: a NaN/Inf in X, or else an overflow in the model.

    ``X`` may be on the GPU: only the flagged row is copied to the host."""
    x = X.data[X.starts[row]:X.ends[row]] if isinstance(X, SparseRows) else X[row]
    if on_gpu(x):
        x = x.copy_to_host()
    if not np.isfinite(x).all():
        raise ValueError(f"X contains NaN or Inf (first at row {row})")
    raise ValueError(overflow or f"the model's outputs, loss or gradient overflowed "
                     f"{x.dtype} at row {row} of X; scale the inputs"
                     + (" or use float64 parameters" if x.dtype == np.float32 else ""))
