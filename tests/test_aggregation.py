"""fedavg and WeightedMean against naive.fedavg, plus hypothesis properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose

import fastmb

from . import naive

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def stacks(draw):
    K = draw(st.integers(1, 9))
    P = draw(st.integers(1, 9000))  # crosses the 4096-coordinate block boundary
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(K, P)) * draw(st.sampled_from([1e-3, 1.0, 1e5]))
    # Zero or normal weights: a subnormal weight times the scale test's factor may underflow
    # to zero or lose its relative precision, which no aggregation could undo.
    w = draw(arrays(np.float64, K, elements=st.one_of(st.just(0.0), st.floats(1e-300, 100))))
    if not w.any():
        w[0] = 1.0
    return U, w


@settings(max_examples=40, deadline=None)
@given(stacks())
def test_fedavg_matches_naive(data):
    U, w = data
    # rounding is relative to the inputs' size (a mean near zero comes from cancellation)
    assert_allclose(fastmb.fedavg(U, w), naive.fedavg(U, w), rtol=1e-12,
                    atol=1e-13 * np.abs(U).max())


@settings(max_examples=30, deadline=None)
@given(stacks(), st.randoms(use_true_random=False))
def test_fedavg_permutation_invariant(data, rnd):
    U, w = data
    perm = list(range(len(U)))
    rnd.shuffle(perm)
    assert_allclose(fastmb.fedavg(U[perm], w[perm]), fastmb.fedavg(U, w), rtol=1e-12,
                    atol=1e-13 * np.abs(U).max())


@settings(max_examples=30, deadline=None)
@given(stacks(), st.floats(1e-3, 1e3))
def test_fedavg_weight_scale_invariant_and_bounded(data, c):
    U, w = data
    avg = fastmb.fedavg(U, w)
    assert_allclose(fastmb.fedavg(U, c * w), avg, rtol=1e-12, atol=1e-13 * np.abs(U).max())
    used = U[w > 0]
    tol = 1e-12 * np.abs(U).max()
    assert (avg >= used.min(axis=0) - tol).all() and (avg <= used.max(axis=0) + tol).all()


def test_fedavg_default_is_mean_and_keeps_dtype():
    U = np.random.default_rng(0).normal(size=(5, 10_000)).astype(np.float32)
    out = fastmb.fedavg(U)
    assert out.dtype == np.float32
    assert_allclose(out, U.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-7)
    assert fastmb.fedavg(U.astype(np.int32)).dtype == np.float64


def test_fedavg_float64_accumulation_beats_float32():
    # 1e4 copies of 1 + 2**-20 in float32: a float32 running sum drifts, float64 does not.
    U = np.full((10_000, 3), 1 + 2.0**-20, np.float32)
    assert_allclose(fastmb.fedavg(U), U[0], rtol=0, atol=0)


def test_fedavg_nan_names_clients():
    U = np.ones((6, 5000))
    U[2, 4500] = np.nan
    U[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"clients \[2, 4\]"):
        fastmb.fedavg(U)
    # a zero weight does not hide a NaN
    with pytest.raises(ValueError, match="NaN"):
        fastmb.fedavg(U, [1, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_mean_matches_fedavg(dtype):
    rng = np.random.default_rng(1)
    U = rng.normal(size=(7, 5000)).astype(dtype)
    w = rng.uniform(0, 3, 7)
    wm = fastmb.WeightedMean(5000, dtype=dtype)
    for u, wk in zip(U, w):
        wm.add(u, wk)
    assert wm.count == 7 and wm.total_weight == pytest.approx(w.sum())
    out = wm.result()
    assert out.dtype == dtype
    assert_allclose(out, fastmb.fedavg(U, w), rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_weighted_mean_merge_tree_and_state():
    rng = np.random.default_rng(2)
    U = rng.normal(size=(9, 300))
    w = rng.uniform(0.1, 2, 9)
    parts = []
    for lo in (0, 3, 6):
        wm = fastmb.WeightedMean(300, np.float64)
        for k in range(lo, lo + 3):
            wm.add(U[k], w[k])
        parts.append(wm)
    parts[0].merge(parts[1])
    clone = fastmb.WeightedMean.from_state_dict(parts[2].state_dict())
    parts[0].merge(clone)
    assert parts[0].count == 9
    assert_allclose(parts[0].result(), naive.fedavg(U, w), rtol=1e-12)


@pytest.mark.parametrize("K", [1, 4, 7])
def test_weighted_mean_add_many(K):
    rng = np.random.default_rng(3)
    U = rng.normal(size=(K, 20000)).astype(np.float32)  # two coordinate blocks
    w = rng.uniform(0, 3, K)
    wm = fastmb.WeightedMean(20000)
    wm.add_many(U[:1], w[:1])
    if K > 1:
        wm.add_many(U[1:], w[1:])
    assert wm.count == K and wm.total_weight == pytest.approx(w.sum())
    assert_allclose(wm.result(), naive.fedavg(U, w), rtol=1e-6, atol=1e-7)
    # one shard added at once is the same bits as fedavg's kernel (same fixed order)
    one = fastmb.WeightedMean(20000)
    one.add_many(U, w)
    np.testing.assert_array_equal(one.result(), fastmb.fedavg(U, w))
    # all-zero weights are a valid partial sum; NaN rows raise, naming them, and add nothing
    z = fastmb.WeightedMean(20000)
    z.add_many(U, np.zeros(K))
    assert z.total_weight == 0 and z.count == K
    bad = U.copy()
    bad[K - 1, 5] = np.nan
    before = one.state_dict()
    with pytest.raises(ValueError, match=rf"NaN or Inf \(clients \[{K - 1}\]\)"):
        one.add_many(bad, w)
    with pytest.raises(ValueError, match="columns"):
        one.add_many(U[:, :10], w)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        one.add_many(U, -w)
    np.testing.assert_array_equal(one.state_dict()["sum"], before["sum"])


def test_weighted_mean_bad_update_leaves_state_unchanged():
    wm = fastmb.WeightedMean(4, np.float64)
    wm.add([1.0, 2.0, 3.0, 4.0], 2.0)
    before = wm.state_dict()
    for bad, kw, exc in [([1.0, np.nan, 0, 0], {}, ValueError), ([1.0, 2.0], {}, ValueError),
                         ([1.0, 1, 1, 1], {"weight": -1.0}, ValueError),
                         ([1.0, 1, 1, 1], {"weight": np.inf}, ValueError),
                         (["a", "b", "c", "d"], {}, TypeError)]:
        with pytest.raises(exc):
            wm.add(bad, **kw)
    after = wm.state_dict()
    np.testing.assert_array_equal(before["sum"], after["sum"])
    assert (before["count"], before["total"]) == (after["count"], after["total"])
    assert_allclose(wm.result(), [1, 2, 3, 4])


def test_weighted_mean_errors():
    with pytest.raises(ValueError, match="undefined"):
        fastmb.WeightedMean(3).result()
    with pytest.raises(ValueError, match="n_params"):
        fastmb.WeightedMean(3).merge(fastmb.WeightedMean(4))
    with pytest.raises(TypeError, match="other"):
        fastmb.WeightedMean(3).merge(np.zeros(3))
    with pytest.raises(TypeError, match="dtype"):
        fastmb.WeightedMean(3, dtype=np.int32)
    with pytest.raises(ValueError, match="n_params"):
        fastmb.WeightedMean(0)
