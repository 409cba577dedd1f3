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
    res, ref = check_topk(u, res0, k, naive_topk)
    assert_array_equal(res[ref], 0)


def check_topk(u, res0, k, reference):
    """``topk(u, k)`` with the residual ``res0`` (copied) against ``reference(c, k)``: the
    reference's indices and ``c``'s values at them, and nothing lost (sent plus kept is
    exactly ``c = u + res0``). Returns the residual after the call and the indices."""
    res = res0.copy()
    s = fastmb.topk(u, k, residual=res)
    c = u + res0
    ref = reference(c, k)
    assert_array_equal(s.indices, ref)
    assert_array_equal(s.values, c[ref])
    assert_array_equal(s.densify() + res, c)
    return res, ref


def lexsort_topk(c, k):
    """The same reference, vectorized for large vectors."""
    return np.sort(np.lexsort((np.arange(len(c)), -np.abs(c)))[:k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["normal", "ties", "skewed", "sparse", "sample_blind"])
def test_topk_sampled_bracket_and_its_fallback(dtype, case):
    """From 65,536 coordinates on, top-k tries a sampled bracket first. It must give the
    reference's answer whether the bracket holds (normal data), misses (the sample sees
    only zeros), or overflows a chunk's buffer (mass ties, skewed chunks)."""
    P = 100_003
    rng = np.random.default_rng(7)
    u = rng.normal(size=P).astype(dtype)
    res0 = (0.1 * rng.normal(size=P)).astype(dtype)
    if case == "ties":
        u, res0 = np.round(u), np.zeros_like(u)
    elif case == "skewed":
        u[: P // 2] *= 100   # the large values all in the first half's chunks
    elif case == "sparse":
        u[np.arange(P) % 997 != 0] = 0   # ties at zero for most k
        res0[:] = 0
    elif case == "sample_blind":
        # zero wherever the sample looks (evenly spread blocks of 128), large elsewhere
        blocks, width = 256, 128
        for b in range(blocks):
            j0 = b * (P - width) // (blocks - 1)
            u[j0:j0 + width] = 0
            res0[j0:j0 + width] = 0
    for k in (1, 7, P // 100, P // 3, P - 1, P):
        check_topk(u, res0, k, lexsort_topk)


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


@pytest.mark.parametrize("P", [10, 100_000])
def test_nan_leaves_the_residual_untouched(P):
    """Small vectors (the histogram) and large ones (the sampled bracket, NaN outside the
    sample) both check c before they write the residual."""
    res = np.ones(P)
    u = np.zeros(P)
    u[P - 200 if P > 1000 else 3] = np.inf   # outside every sampled block
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastmb.topk(u, 2, residual=res)
    assert_array_equal(res, 1)


def test_residual_sharing_the_update_is_refused():
    u = np.zeros(20)
    with pytest.raises(ValueError, match="residual must not share memory"):
        fastmb.topk(u[:10], 2, residual=u[5:15])
