"""Robust aggregation rules against tests/naive.py, their papers' properties, and bad input."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import fastmb
from fastmb.aggregate.robust import _network_for_ranks, sorting_network

from . import naive


@st.composite
def stacks(draw, k_min=1, k_max=12):
    K = draw(st.integers(k_min, k_max))
    P = draw(st.integers(1, 300))  # crosses the 128-coordinate sort block
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    U = rng.normal(size=(K, P)) * draw(st.sampled_from([1e-3, 1.0, 1e4]))
    if draw(st.booleans()):  # ties: many equal values
        U = np.round(U)
    return U


def honest_and_attackers(n_honest, n_bad, P, attack, seed=0):
    rng = np.random.default_rng(seed)
    center = rng.normal(size=P)
    H = center + 0.1 * rng.normal(size=(n_honest, P))
    if attack == "large":
        B = 1e4 * rng.normal(size=(n_bad, P))
    elif attack == "sign-flip":
        B = np.tile(-10.0 * center, (n_bad, 1))
    elif attack == "nan":
        B = np.full((n_bad, P), np.nan)
    else:
        raise AssertionError(attack)
    U = np.vstack([H, B])
    perm = rng.permutation(len(U))
    return U[perm], np.flatnonzero(perm < n_honest)


# ----------------------------------------------------------------------------- sorting networks


@pytest.mark.parametrize("n", range(1, 13))
def test_sorting_network_sorts_every_binary_input(n):
    # 0-1 principle: a comparator network that sorts all 2^n binary inputs sorts everything.
    x = np.array(list(itertools.product([0, 1], repeat=n)), np.int8).T.copy()
    for a, b in sorting_network(n):
        x[a], x[b] = np.minimum(x[a], x[b]), np.maximum(x[a], x[b])
    assert (np.diff(x, axis=0) >= 0).all()


@pytest.mark.parametrize("n", [5, 8, 13, 64, 100])
def test_pruned_network_gives_the_ranks_it_was_pruned_for(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 500))
    for lo, hi in [((n - 1) // 2, n // 2 + 1), (n // 5, n - n // 5)]:
        y = x.copy()
        for a, b in _network_for_ranks(n, lo, hi):
            y[a], y[b] = np.minimum(y[a], y[b]), np.maximum(y[a], y[b])
        assert_array_equal(y[lo:hi], np.sort(x, axis=0)[lo:hi])
    assert len(_network_for_ranks(n, (n - 1) // 2, n // 2 + 1)) <= len(sorting_network(n))


# ----------------------------------------------------------------------------- median, trimmed mean


@settings(max_examples=40, deadline=None)
@given(stacks())
def test_median_matches_naive_and_numpy(U):
    agg, used, rejected = fastmb.coordinate_median(U)
    assert_array_equal(agg, naive.coordinate_median(U))
    assert_array_equal(agg, np.median(U, axis=0))
    assert_array_equal(used, np.arange(len(U)))
    assert rejected.size == 0


@settings(max_examples=40, deadline=None)
@given(stacks(), st.floats(0, 0.49))
def test_trimmed_mean_matches_naive(U, beta):
    assert_allclose(fastmb.trimmed_mean(U, beta).aggregate, naive.trimmed_mean(U, beta),
                    rtol=1e-12, atol=1e-12 * np.abs(U).max())


@settings(max_examples=25, deadline=None)
@given(stacks(), st.randoms(use_true_random=False))
def test_coordinate_rules_are_permutation_invariant_and_bounded(U, rnd):
    perm = list(range(len(U)))
    rnd.shuffle(perm)
    med = fastmb.coordinate_median(U).aggregate
    tm = fastmb.trimmed_mean(U, 0.2).aggregate
    # the sort makes the order of the clients irrelevant, to the bit
    assert_array_equal(fastmb.coordinate_median(U[perm]).aggregate, med)
    assert_array_equal(fastmb.trimmed_mean(U[perm], 0.2).aggregate, tm)
    lo, hi = U.min(axis=0), U.max(axis=0)
    tol = 1e-12 * np.abs(U).max()
    for a in (med, tm):
        assert (a >= lo - tol).all() and (a <= hi + tol).all()


@settings(max_examples=25, deadline=None)
@given(stacks())
def test_trimmed_mean_at_zero_trim_is_the_mean(U):
    assert_allclose(fastmb.trimmed_mean(U, 0.0).aggregate, fastmb.fedavg(U), rtol=1e-12,
                    atol=1e-12 * np.abs(U).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coordinate_rules_keep_dtype_on_large_input(dtype):
    U = np.random.default_rng(1).normal(size=(17, 5000)).astype(dtype)
    med = fastmb.coordinate_median(U).aggregate
    assert med.dtype == dtype
    assert_array_equal(med, np.median(U, axis=0).astype(dtype))
    tm = fastmb.trimmed_mean(U, 0.25).aggregate
    assert tm.dtype == dtype
    assert_allclose(tm, naive.trimmed_mean(U, 0.25), rtol=1e-6 if dtype == np.float32 else 1e-12,
                    atol=1e-6)


@pytest.mark.parametrize("attack", ["large", "sign-flip", "nan"])
def test_median_and_trimmed_mean_breakdown(attack):
    # Yin et al. 2018: the median tolerates any f < n/2; the trimmed mean any f <= beta*n.
    U, honest = honest_and_attackers(11, 9, 40, attack)
    lo, hi = U[honest].min(axis=0), U[honest].max(axis=0)
    med = fastmb.coordinate_median(U).aggregate
    assert (med >= lo).all() and (med <= hi).all()
    U, honest = honest_and_attackers(14, 6, 40, attack)
    tm = fastmb.trimmed_mean(U, 0.3).aggregate
    lo, hi = U[honest].min(axis=0), U[honest].max(axis=0)
    assert (tm >= lo - 1e-12).all() and (tm <= hi + 1e-12).all()


# ----------------------------------------------------------------------------- Krum family


@settings(max_examples=30, deadline=None)
@given(stacks(k_min=2, k_max=14))
def test_pairwise_distances_match_naive(U):
    D = fastmb.pairwise_sq_distances(U)
    R = naive.sq_distances(U)
    assert_allclose(D, R, rtol=1e-9, atol=1e-9 * max(R.max(), 1e-300))
    assert_array_equal(D, D.T)


def test_pairwise_distances_accurate_despite_a_large_common_component():
    # |u|^2 + |v|^2 - 2 u.v would cancel away every digit here without the centring
    rng = np.random.default_rng(3)
    U = (1000.0 + 1e-2 * rng.normal(size=(6, 70_000))).astype(np.float32)
    D = fastmb.pairwise_sq_distances(U)
    R = naive.sq_distances(U)
    iu = np.triu_indices(6, 1)
    assert_allclose(D[iu], R[iu], rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(stacks(k_min=5, k_max=12), st.data())
def test_multi_krum_matches_naive(U, data):
    n = len(U)
    f = data.draw(st.integers(0, (n - 3) // 2))
    m = data.draw(st.integers(1, n))
    agg, used, _ = fastmb.multi_krum(U, f, m)
    sel, mean = naive.multi_krum(U, f, m)
    if used.tolist() != sel:
        # Only a tie may be broken differently: the kernel's distances carry rounding
        # (e.g. [-1, -1, 0, -0, 1] with f=0 gives four equal scores), so the clients it
        # picked must score the same as the reference's, to rounding.
        ref = np.asarray(naive.krum_scores(U, f))
        assert_allclose(np.sort(ref[used]), np.sort(ref[sel]), rtol=1e-9,
                        atol=1e-9 * max(1.0, np.abs(ref).max()))
        mean = np.asarray(U, np.float64)[used].mean(axis=0)
    assert_allclose(agg, mean, rtol=1e-12, atol=1e-12 * np.abs(U).max())


@pytest.mark.parametrize("attack", ["large", "sign-flip", "nan"])
@pytest.mark.parametrize("f", [1, 3])
def test_krum_picks_an_honest_update(attack, f):
    U, honest = honest_and_attackers(2 * f + 3, f, 50, attack, seed=f)
    agg, used, rejected = fastmb.krum(U, f)
    assert used.size == 1 and used[0] in honest
    assert_array_equal(agg, U[used[0]])
    want = set(range(len(U))) - set(honest) if attack == "nan" else set()
    assert set(rejected.tolist()) == want
    _, used, _ = fastmb.multi_krum(U, f)
    assert set(used.tolist()) <= set(honest.tolist())


@settings(max_examples=20, deadline=None)
@given(stacks(k_min=7, k_max=12), st.data())
def test_bulyan_matches_naive(U, data):
    f = data.draw(st.integers(0, (len(U) - 3) // 4))
    agg, used, _ = fastmb.bulyan(U, f)
    sel, ref = naive.bulyan(U, f)
    assert used.tolist() == sel
    assert_allclose(agg, ref, rtol=1e-12, atol=1e-12 * np.abs(U).max())


@pytest.mark.parametrize("attack", ["large", "sign-flip"])
def test_bulyan_stays_within_the_honest_range(attack):
    U, honest = honest_and_attackers(9, 2, 30, attack)
    agg, used, _ = fastmb.bulyan(U, 2)
    assert set(used.tolist()) <= set(honest.tolist())
    assert (agg >= U[honest].min(axis=0)).all() and (agg <= U[honest].max(axis=0)).all()


# ----------------------------------------------------------------------------- norm-based rules


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_bounded_mean_matches_naive(dtype):
    rng = np.random.default_rng(5)
    U = (rng.normal(size=(9, 333)) * rng.uniform(0.1, 10, (9, 1))).astype(dtype)
    w = rng.uniform(1, 4, 9)
    agg = fastmb.norm_bounded_mean(U, 5.0, weights=w).aggregate
    assert agg.dtype == dtype
    assert_allclose(agg, naive.norm_bounded_mean(U, 5.0, w), rtol=1e-5 if dtype == np.float32
                    else 1e-12)
    assert np.linalg.norm(agg) <= 5.0 * (1 + 1e-6)


@pytest.mark.parametrize("n_iter", [1, 3])
def test_centered_clipping_matches_naive(n_iter):
    rng = np.random.default_rng(6)
    U = rng.normal(size=(8, 200)) + 3.0
    U[0] *= 100
    center = rng.normal(size=200)
    w = rng.uniform(1, 2, 8)
    agg = fastmb.centered_clipping(U, 2.5, center=center, n_iter=n_iter, weights=w).aggregate
    assert_allclose(agg, naive.centered_clipping(U, 2.5, center, n_iter, w), rtol=1e-12)
    # one attacker moves the result by at most tau times its weight share
    step = fastmb.centered_clipping(U, 2.5, center=center, n_iter=1).aggregate
    clean = fastmb.centered_clipping(U[1:], 2.5, center=center, n_iter=1).aggregate
    assert np.linalg.norm(step - clean * 7 / 8 - center / 8) <= 2.5 / 8 + 1e-9


def test_geometric_median_minimizes_the_objective():
    rng = np.random.default_rng(7)
    U = rng.normal(size=(15, 40))
    w = rng.uniform(1, 3, 15)
    v = fastmb.geometric_median(U, weights=w, tol=1e-12, max_iter=1000).aggregate
    obj = naive.geometric_median_objective(U, v, w)
    assert obj <= naive.geometric_median_objective(U, np.average(U, axis=0, weights=w), w)
    for _ in range(20):  # no nearby point does better
        d = 1e-3 * rng.normal(size=40)
        assert obj <= naive.geometric_median_objective(U, v + d, w) + 1e-9


def test_geometric_median_breakdown():
    # RFA's breakdown point is 1/2: 7 attackers of 15 cannot drag it away.
    U, honest = honest_and_attackers(8, 7, 20, "large")
    v = fastmb.geometric_median(U, max_iter=500).aggregate
    centre = U[honest].mean(axis=0)
    assert np.linalg.norm(v - centre) < 2 * max(np.linalg.norm(U[honest] - centre, axis=1))


def test_geometric_median_of_collinear_points_and_one_point():
    U = np.array([[0.0], [1.0], [10.0]])
    assert_allclose(fastmb.geometric_median(U, tol=1e-14, max_iter=2000).aggregate, [1.0],
                    atol=1e-4)
    assert_array_equal(fastmb.geometric_median(U[:1]).aggregate, [0.0])


# ----------------------------------------------------------------------------- bad input


def test_nonfinite_clients_are_rejected_and_reported():
    U = np.random.default_rng(8).normal(size=(7, 300))
    U[2, 5] = np.nan
    U[4, 299] = np.inf
    before = U.copy()
    for res in (fastmb.coordinate_median(U), fastmb.trimmed_mean(U, 0.1),
                fastmb.geometric_median(U), fastmb.norm_bounded_mean(U, 1.0),
                fastmb.centered_clipping(U, 1.0), fastmb.multi_krum(U, 1)):
        assert res.rejected.tolist() == [2, 4]
        assert not set(res.used.tolist()) & {2, 4}
        assert np.isfinite(res.aggregate).all()
    assert_array_equal(U, before)  # the caller's array is never touched
    assert_array_equal(fastmb.coordinate_median(U).aggregate,
                       np.median(U[[0, 1, 3, 5, 6]], axis=0))


@pytest.mark.parametrize("call, match", [
    (lambda U: fastmb.krum(U, 3), "Krum needs at least 9 clients"),
    (lambda U: fastmb.bulyan(U, 2), "Bulyan needs at least 11 clients"),
    (lambda U: fastmb.krum(U, -1), "n_byzantine must be >= 0"),
    (lambda U: fastmb.krum(U, 1.5), "n_byzantine must be an integer"),
    (lambda U: fastmb.multi_krum(U, 1, m=9), "m must be <= 8"),
    (lambda U: fastmb.trimmed_mean(U, 0.5), "beta must be < 0.5"),
    (lambda U: fastmb.trimmed_mean(U, -0.1), "beta must be >= 0"),
    (lambda U: fastmb.norm_bounded_mean(U, 0.0), "max_norm must be > 0"),
    (lambda U: fastmb.centered_clipping(U, 1.0, center=np.zeros(3)), "center must be a 1-D"),
    (lambda U: fastmb.centered_clipping(U, 1.0, n_iter=0), "n_iter must be >= 1"),
    (lambda U: fastmb.geometric_median(U, weights=-np.ones(8)), "weights must be non-negative"),
    (lambda U: fastmb.geometric_median(U, nu=0), "nu must be > 0"),
    (lambda U: fastmb.coordinate_median(U[0]), "updates must be 2-D"),
    (lambda U: fastmb.coordinate_median(U[:0]), "updates is empty"),
    (lambda U: fastmb.coordinate_median(np.full_like(U, np.nan)), "every client's update"),
    (lambda U: fastmb.pairwise_sq_distances(np.where(U > 2, np.inf, U)), "NaN or Inf"),
])
def test_bad_input(call, match):
    U = np.random.default_rng(9).normal(size=(8, 20))
    with pytest.raises((ValueError, TypeError), match=match):
        call(U)


def test_krum_counts_clients_left_after_rejection():
    U = np.random.default_rng(10).normal(size=(5, 10))
    U[0, 0] = np.nan
    with pytest.raises(ValueError, match="after rejecting 1 client"):
        fastmb.krum(U, 1)


def test_integer_and_noncontiguous_updates_are_converted():
    U = np.arange(60).reshape(10, 6)
    assert_array_equal(fastmb.coordinate_median(U).aggregate, np.median(U, axis=0))
    F = np.asfortranarray(U.astype(np.float32))[:, ::2]
    assert_array_equal(fastmb.coordinate_median(F).aggregate, np.median(F, axis=0))
