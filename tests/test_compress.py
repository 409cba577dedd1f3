"""Top-k with error feedback, its byte encoding, and sparse accumulation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import fastmb


def naive_topk(c, k):
    """Indices of the k largest |c|, ties to the lower index, ascending."""
    return np.sort(sorted(range(len(c)), key=lambda j: (-abs(c[j]), j))[:k])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_topk_matches_naive_with_error_feedback(P, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    u = rng.normal(size=P).astype(dtype)
    if data.draw(st.booleans()):
        u = np.round(u)  # many ties
    k = data.draw(st.integers(1, P))
    res0 = (0.5 * rng.normal(size=P)).astype(dtype)
    res = res0.copy()
    s = fastmb.topk(u, k, residual=res)
    c = u + res0
    ref = naive_topk(c, k)
    assert_array_equal(s.indices, ref)
    assert_array_equal(s.values, c[ref])
    # nothing is lost: what was sent plus what is kept is exactly c
    assert_array_equal(s.densify() + res, c)
    assert_array_equal(res[ref], 0)


def test_error_feedback_delivers_everything_over_rounds():
    rng = np.random.default_rng(1)
    u = rng.normal(size=1000)
    res = np.zeros(1000)
    sent = np.zeros(1000)
    for _ in range(10):
        sent += fastmb.topk(u, 100, residual=res).densify()
    assert_allclose(sent + res, 10 * u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bytes_round_trip_and_size(dtype):
    rng = np.random.default_rng(2)
    s = fastmb.topk(rng.normal(size=10_000).astype(dtype), 100)
    b = s.to_bytes()
    assert len(b) == 21 + 100 * (4 + np.dtype(dtype).itemsize)
    t = fastmb.SparseUpdate.from_bytes(b)
    assert_array_equal(t.indices, s.indices)
    assert_array_equal(t.values, s.values)
    assert t.values.dtype == dtype and t.n_params == 10_000


def test_streaming_mean_from_sparse_equals_dense():
    rng = np.random.default_rng(3)
    U = rng.normal(size=(6, 5000))
    w = rng.uniform(1, 3, 6)
    dense, sparse = fastmb.WeightedMean(5000, np.float64), fastmb.WeightedMean(5000, np.float64)
    for u, wk in zip(U, w):
        s = fastmb.topk(u, 500)
        dense.add(s.densify(), wk)
        sparse.add_sparse(fastmb.SparseUpdate.from_bytes(s.to_bytes()), wk)
    assert_allclose(sparse.result(), dense.result(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("call, exc, match", [
    (lambda u: fastmb.topk(u, 0), ValueError, "k must be >= 1"),
    (lambda u: fastmb.topk(u, 11), ValueError, "k must be <= 10"),
    (lambda u: fastmb.topk(u.reshape(2, 5), 1), ValueError, "update must be a non-empty 1-D"),
    (lambda u: fastmb.topk(u, 2, residual=np.zeros(10, np.float32)), TypeError, "residual must be"),
    (lambda u: fastmb.topk(np.where(u > 0, np.nan, u), 2), ValueError, "NaN or Inf"),
    (lambda u: fastmb.SparseUpdate.from_bytes(b"junk" * 10), ValueError, "not an encoded"),
    (lambda u: fastmb.SparseUpdate.from_bytes(fastmb.topk(u, 3).to_bytes()[:-1]), ValueError,
     "bytes"),
    (lambda u: fastmb.WeightedMean(9).add_sparse(fastmb.topk(u, 3)), ValueError, "n_params=10"),
    (lambda u: fastmb.WeightedMean(10).add_sparse((1, 2)), TypeError, "SparseUpdate"),
])
def test_bad_input(call, exc, match):
    u = np.random.default_rng(4).normal(size=10)
    with pytest.raises(exc, match=match):
        call(u)


def test_nan_leaves_the_residual_untouched():
    res = np.ones(10)
    u = np.zeros(10)
    u[3] = np.inf
    with pytest.raises(ValueError):
        fastmb.topk(u, 2, residual=res)
    assert_array_equal(res, 1)
