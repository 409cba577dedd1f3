"""The model's input as the kernels read it: a dense 2-D array, or sparse rows (CSR).

Every read of the model's input goes through the helpers here (the input seam of
``_model`` and ``_layers``). Each helper is a Numba overload with one implementation per
input type, inlined into the kernel, so a kernel's source serves both types and each
type compiles its own specialization:

* dense: ``X`` is a C-ordered ``(n, n_features)`` array, a row is ``X[r]``, and a row's
  entries are ``(k, x[k])`` for every feature k (the helpers reduce to the plain loops
  the kernels always had);
* sparse: ``X`` is :class:`SparseRows` (the CSR arrays of a SciPy matrix, validated by
  ``fastmb._validation``), a row is :class:`SparseRow` (views of its stored values and
  column indices), and a row's entries are its stored ``(col, value)`` pairs, so every
  loop over a row costs its stored entries, not ``n_features``.

A block of rows (the batched path's ``A0``) is a dense ``(b, n_features)`` copy, or for
sparse input a :class:`SparseRows` of the same arrays with the block's own ``starts`` and
``ends`` (no values copied). Layers past the first read dense activations only; a pass
that selects "the input of layer l" calls :func:`layer_rows`/:func:`layer_row`, which for
sparse input only ever return the activations (a sparse input feeds layer 0 alone, and
the layer-0 branches call the helpers here instead).

Sums over a sparse row's entries run in index order (SciPy's canonical CSR: sorted,
no duplicates, as the validation makes it), the same order as the dense loop skipping
zeros; the results match the dense computation to rounding (the dense loops vectorize,
which reorders their sums).
"""

from typing import NamedTuple

import numpy as np
from numba import types
from numba.extending import overload

from ._intrinsics import prefetch
from ._jit import OVERLOAD_OPTIONS, jit


class SparseRows(NamedTuple):
    """Rows ``i`` of a CSR matrix: entries ``starts[i]:ends[i]`` of ``data``/``indices``."""

    data: np.ndarray
    indices: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    n_cols: int


class SparseRow(NamedTuple):
    """One sparse row: its stored values and their (sorted) column indices."""

    vals: np.ndarray
    cols: np.ndarray


def sparse_rows(data, indices, indptr, n_cols):
    """The kernels' form of a CSR matrix (views, no copies)."""
    return SparseRows(data, indices, indptr[:-1], indptr[1:], np.int64(n_cols))


def _is(t, cls):
    return isinstance(t, types.BaseNamedTuple) and t.instance_class is cls


def sparse_type(t):
    """True for the Numba type of :class:`SparseRows` (for overloads elsewhere)."""
    return _is(t, SparseRows)


def _only_in_kernels():
    raise NotImplementedError("fastmb's input helpers run inside Numba kernels only")


def input_overload(func):
    """``numba.extending.overload`` as the input seam uses it: inlined, fastmb's options."""
    return overload(func, inline="always", jit_options=OVERLOAD_OPTIONS)


_overload = input_overload


# -- the matrix -------------------------------------------------------------------------

def n_rows(X):
    """Number of rows of X (or of a block)."""
    _only_in_kernels()


def is_sparse(X):
    """True for sparse rows (a constant of the input's type)."""
    _only_in_kernels()


@_overload(is_sparse)
def _is_sparse(X):
    if _is(X, SparseRows):
        return lambda X: True
    return lambda X: False


def n_cols(X):
    """Number of features of X."""
    _only_in_kernels()


def input_row(X, r):
    """Sample r's features: ``X[r]`` or a :class:`SparseRow` (of X, or of a block)."""
    _only_in_kernels()


@_overload(n_rows)
def _n_rows(X):
    if _is(X, SparseRows):
        return lambda X: X.starts.shape[0]
    return lambda X: X.shape[0]


@_overload(n_cols)
def _n_cols(X):
    if _is(X, SparseRows):
        return lambda X: X.n_cols
    return lambda X: X.shape[1]


@_overload(input_row)
def _input_row(X, r):
    if _is(X, SparseRows):
        def impl(X, r):
            a = X.starts[r]
            b = X.ends[r]
            return SparseRow(X.data[a:b], X.indices[a:b])
        return impl
    return lambda X, r: X[r]


# -- a row's entries --------------------------------------------------------------------

def row_nnz(x):
    """How many entries a row has (its stored ones, if sparse)."""
    _only_in_kernels()


def row_col(x, k):
    """The feature index of a row's k-th entry."""
    _only_in_kernels()


def row_val(x, k):
    """The value of a row's k-th entry."""
    _only_in_kernels()


def clear_unstored(x, out):
    """Zero ``out`` (n_features long) when the row is sparse, before its entries are
    written: the entries a sparse row does not store are zeros. Nothing for a dense row."""
    _only_in_kernels()


@_overload(row_nnz)
def _row_nnz(x):
    if _is(x, SparseRow):
        return lambda x: x.vals.shape[0]
    return lambda x: x.shape[0]


@_overload(row_col)
def _row_col(x, k):
    if _is(x, SparseRow):
        return lambda x, k: x.cols[k]
    return lambda x, k: k


@_overload(row_val)
def _row_val(x, k):
    if _is(x, SparseRow):
        return lambda x, k: x.vals[k]
    return lambda x, k: x[k]


@_overload(clear_unstored)
def _clear_unstored(x, out):
    if _is(x, SparseRow):
        def impl(x, out):
            for j in range(out.shape[0]):
                out[j] = 0
        return impl
    return lambda x, out: None


# -- blocks of rows (the batched path) ---------------------------------------------------

def block_like(X, b, like):
    """An empty block of b rows of X, in dtype ``like``: ``(b, n_features)`` dense, or
    sparse rows sharing X's arrays."""
    _only_in_kernels()


def block_set(A, s, X, r):
    """Make row s of block A the row r of X (copied if dense)."""
    _only_in_kernels()


def block_head(A, nb):
    """The first nb rows of a block."""
    _only_in_kernels()


def block_affine(A, W, Z):
    """``Z = A @ W``: the first layer of a block."""
    _only_in_kernels()


def block_outer(A, D, G):
    """``G = A^T D``: the first layer's weight gradient (for sparse rows, only the rows of G
    that the block's columns touch are written; the others must be zero already)."""
    _only_in_kernels()


@_overload(block_like)
def _block_like(X, b, like):
    if _is(X, SparseRows):
        def impl(X, b, like):
            return SparseRows(X.data, X.indices, np.empty(b, X.starts.dtype),
                              np.empty(b, X.ends.dtype), X.n_cols)
        return impl
    return lambda X, b, like: np.empty((b, X.shape[1]), like.dtype)


@jit
def _set_span(starts, ends, s, a, b):
    starts[s] = a
    ends[s] = b


@_overload(block_set)
def _block_set(A, s, X, r):
    if _is(A, SparseRows):
        # The write goes through a compiled (not inlined) helper: Numba's dead-code pass
        # drops a setitem on an array taken from a tuple inside an inlined overload.
        return lambda A, s, X, r: _set_span(A.starts, A.ends, s, X.starts[r], X.ends[r])

    def dense(A, s, X, r):
        x = X[r]
        dst = A[s]
        for i in range(dst.shape[0]):
            dst[i] = x[i]
    return dense


@_overload(block_head)
def _block_head(A, nb):
    if _is(A, SparseRows):
        return lambda A, nb: SparseRows(A.data, A.indices, A.starts[:nb], A.ends[:nb],
                                        A.n_cols)
    return lambda A, nb: A[:nb]


@_overload(block_affine)
def _block_affine(A, W, Z):
    if _is(A, SparseRows):
        def impl(A, W, Z):
            # Row i of Z adds value * W[col, :] over the row's entries, in index order.
            nout = Z.shape[1]
            for i in range(Z.shape[0]):
                z = Z[i]
                for j in range(nout):
                    z[j] = 0
                for k in range(A.starts[i], A.ends[i]):
                    v = A.data[k]
                    w = W[A.indices[k]]
                    for j in range(nout):
                        z[j] += v * w[j]
        return impl
    return lambda A, W, Z: np.dot(A, W, Z)


@_overload(block_outer)
def _block_outer(A, D, G):
    if _is(A, SparseRows):
        def impl(A, D, G):
            # Zero the rows of G that the block's columns touch, then scatter value * D[i, :]
            # into them: rows in block order, so a column's sum runs over the block's rows
            # in order, as A^T D's does. The other rows of G are left alone: the training
            # kernel (the one caller) hands in a zero gradient, and touching all n_features
            # rows would cost a sparse step its whole width.
            nout = G.shape[1]
            for i in range(D.shape[0]):
                for k in range(A.starts[i], A.ends[i]):
                    g = G[A.indices[k]]
                    for j in range(nout):
                        g[j] = 0
            for i in range(D.shape[0]):
                d = D[i]
                for k in range(A.starts[i], A.ends[i]):
                    v = A.data[k]
                    g = G[A.indices[k]]
                    for j in range(nout):
                        g[j] += v * d[j]
        return impl
    return lambda A, D, G: np.dot(A.T, D, G)


# -- the input of layer l ----------------------------------------------------------------

def layer_row(l, lo, x, hs, u_off, nin):
    """The input of layer l for one sample in a pass over layers [lo, ...): x for the
    range's first layer, else the previous layer's activations (always those when x is
    sparse: it feeds layer 0 only)."""
    _only_in_kernels()


def layer_rows(l, lo, A0, Hb, b, u_off):
    """The block form of :func:`layer_row`: A0 for the range's first layer, else the
    previous layer's activations for b rows."""
    _only_in_kernels()


@_overload(layer_row)
def _layer_row(l, lo, x, hs, u_off, nin):
    if _is(x, SparseRow):
        return lambda l, lo, x, hs, u_off, nin: hs[u_off[l - 1]:u_off[l - 1] + nin]

    def dense(l, lo, x, hs, u_off, nin):
        if l == lo:
            return x
        return hs[u_off[l - 1]:u_off[l - 1] + nin]
    return dense


@_overload(layer_rows)
def _layer_rows(l, lo, A0, Hb, b, u_off):
    if _is(A0, SparseRows):
        return lambda l, lo, A0, Hb, b, u_off: Hb[b * u_off[l - 1]:b * u_off[l]].reshape(
            (b, u_off[l] - u_off[l - 1]))

    def dense(l, lo, A0, Hb, b, u_off):
        if l == lo:
            return A0
        return Hb[b * u_off[l - 1]:b * u_off[l]].reshape((b, u_off[l] - u_off[l - 1]))
    return dense


def prefetch_row(X, r):
    """Hint the CPU to bring row r of X into cache (``_intrinsics.prefetch``, one hint per
    64-byte line)."""
    _only_in_kernels()


@_overload(prefetch_row)
def _prefetch_row(X, r):
    if _is(X, SparseRows):
        def impl(X, r):
            a = X.starts[r]
            b = X.ends[r]
            for k in range(a, b, max(1, 64 // X.data.itemsize)):
                prefetch(X.data, k)
            for k in range(a, b, max(1, 64 // X.indices.itemsize)):
                prefetch(X.indices, k)
        return impl

    def dense(X, r):
        x = X[r]
        for j in range(0, x.shape[0], max(1, 64 // X.itemsize)):
            prefetch(x, j)
    return dense
