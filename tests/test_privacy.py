"""DP-SGD, Gaussian noise, central DP and accounting against tests/naive.py and dp-accounting."""


import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastmb
import fastmb.privacy as P

from . import naive
from .conftest import MODEL_CASES, make_data

F64 = dict(rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------- noise


def _kernel_normals(key, n):
    from fastmb.kernels import privacy as KP

    out = np.zeros(n)
    KP.add_gaussian(out, np.uint64(key), 1.0)
    return out


def test_normal_matches_python_reference():
    key = naive.hash2(2024, 11)
    n = 6000
    got = _kernel_normals(key, n)
    expect = np.array([naive.normal(key, j) for j in range(n)])
    assert_allclose(got, expect, rtol=1e-14, atol=0)
    # The draws must have exercised every branch of the ziggurat: rectangles, wedges, tail.
    u = np.array([2.0 * naive._uniform53(naive.hash2(key, j)) - 1.0 for j in range(n)])
    layer = np.array([naive.hash2(key, j) & 127 for j in range(n)])
    slow = np.abs(u) >= np.array(naive.ZIG_R)[layer]
    assert slow.sum() > 30 and (slow & (layer == 0)).any()
    assert (np.abs(got) > naive.ZIG_X[1]).any()


def test_normal_distribution():
    from scipy import stats

    z = _kernel_normals(7, 400_000)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert stats.kstest(z, "norm").pvalue > 1e-3
    for t in (1.0, 2.0, 3.0, 3.5):
        assert abs((np.abs(z) > t).mean() / (2 * stats.norm.sf(t)) - 1) < 0.1


def test_noise_depends_only_on_key_and_index():
    a = _kernel_normals(5, 50_000)
    b = _kernel_normals(5, 20_000)
    np.testing.assert_array_equal(a[:20_000], b)
    assert not np.array_equal(a, _kernel_normals(6, 50_000))


# ----------------------------------------------------------------------------- DP-SGD


def test_dp_sgd_matches_naive(model):
    params, X, y = make_data(model, 45, seed=30)
    kw = dict(epochs=2, batch_size=8, lr=0.05, seed=3, clip_norm=0.5, noise_multiplier=0.7)
    got = fastmb.sgd(model, params, X, y, **kw)
    assert_allclose(got, naive.sgd(model, params, X, y, **kw), **F64)


@pytest.mark.parametrize("options", [
    dict(momentum=0.9, weight_decay=0.01),
    dict(prox_mu=0.1, schedule="cosine", shuffle=False, batch_size=100),
    dict(batch_size=1, noise_multiplier=0.0),
])
def test_dp_sgd_options_match_naive(options):
    model = MODEL_CASES["mlp-tanh-logistic"]()
    params, X, y = make_data(model, 30, seed=31)
    kw = dict(epochs=2, batch_size=7, lr=0.1, seed=11, clip_norm=0.3, noise_multiplier=1.0)
    kw.update(options)
    assert_allclose(fastmb.sgd(model, params, X, y, **kw), naive.sgd(model, params, X, y, **kw),
                    **F64)


def test_huge_clip_without_noise_is_plain_sgd():
    model = MODEL_CASES["mlp-relu-softmax"]()
    params, X, y = make_data(model, 40, seed=32)
    kw = dict(epochs=2, batch_size=8, lr=0.1, seed=2)
    assert_allclose(fastmb.sgd(model, params, X, y, clip_norm=1e30, **kw),
                    fastmb.sgd(model, params, X, y, **kw), **F64)


@pytest.mark.parametrize("clip", [1e-3, 0.2, 5.0])
def test_one_step_moves_at_most_clip_norm(clip):
    # One full-batch step with lr 1 and no noise moves params by the mean clipped
    # gradient, whose norm is at most the clipping norm.
    model = MODEL_CASES["mlp-sigmoid-squared"]()
    params, X, y = make_data(model, 25, seed=33)
    p1 = fastmb.sgd(model, params, X, y, batch_size=25, lr=1.0, clip_norm=clip, shuffle=False)
    step = np.linalg.norm(params - p1)
    assert 0 < step <= clip * (1 + 1e-9)
    norms = naive.per_sample_grad_norm(model, params, X, y)
    if norms.min() > clip:  # every sample clipped: the step is the mean of unit directions
        G = naive.per_sample_grad(model, params, X, y)
        expect = (G / norms[:, None]).mean(axis=0) * clip
        assert_allclose(params - p1, expect, **F64)


def test_dp_train_clients_client_zero_is_sgd_and_clients_differ():
    model = MODEL_CASES["linear-softmax"]()
    params, X, y = make_data(model, 40, seed=34)
    kw = dict(lr=0.1, seed=5, clip_norm=1.0, noise_multiplier=1.0, batch_size=4)
    T = fastmb.train_clients(model, params, X, y, [0, 20, 40], **kw)
    assert_allclose(T[0], fastmb.sgd(model, params, X[:20], y[:20], **kw), rtol=0, atol=0)
    assert_allclose(T, naive.train_clients(model, params, X, y, [0, 20, 40], **kw), **F64)


def test_dp_sgd_float32_learns():
    rng = np.random.default_rng(35)
    X = rng.normal(size=(2000, 10)).astype(np.float32)
    y = (X @ rng.normal(size=10) > 0).astype(int)
    model = fastmb.MLP([10, 16, 2])
    p = fastmb.sgd(model, model.init(seed=0), X, y, epochs=5, lr=0.5, batch_size=64,
                   clip_norm=1.0, noise_multiplier=1.0)
    assert p.dtype == np.float32
    assert (fastmb.predict(model, p, X) == y).mean() > 0.9


@pytest.mark.parametrize("kw, exc, match", [
    (dict(noise_multiplier=1.0), ValueError, "needs clip_norm"),
    (dict(clip_norm=0.0), ValueError, "clip_norm must be > 0"),
    (dict(clip_norm=-1.0), ValueError, "clip_norm"),
    (dict(clip_norm=float("inf")), ValueError, "clip_norm must be finite"),
    (dict(clip_norm="1"), TypeError, "clip_norm must be a real number"),
    (dict(clip_norm=1.0, noise_multiplier=-0.5), ValueError, "noise_multiplier must be >= 0"),
    (dict(clip_norm=1.0, sample_weight=np.ones(10)), ValueError, "sample_weight cannot"),
])
def test_dp_sgd_bad_input(kw, exc, match):
    model = fastmb.Linear(3)
    X = np.ones((10, 3))
    with pytest.raises(exc, match=match):
        fastmb.sgd(model, model.init(), X, np.ones(10), **kw)


def test_dp_sgd_nan_row_is_reported():
    model = fastmb.MLP([3, 4, 2])
    X = np.ones((10, 3))
    X[6, 1] = np.nan
    with pytest.raises(ValueError, match="row 6"):
        fastmb.sgd(model, model.init(), X, np.zeros(10, int), clip_norm=1.0, batch_size=10)


# ----------------------------------------------------------------------------- central DP


def _central_naive(dp_kw, rounds, seed=0):
    """Rounds of naive.central_dp_round with CentralDP's keys and parameters."""
    dp = fastmb.CentralDP(seed=seed, **dp_kw)
    clip, out = dp.clip_norm, []
    adaptive = ((dp.target_quantile, dp.clip_lr, dp.count_noise_multiplier)
                if dp.adaptive else None)
    for r, U in enumerate(rounds):
        key = naive.hash2(seed, r)
        agg, clip = naive.central_dp_round(U, clip, dp.sum_noise_multiplier,
                                           dp.expected_clients or len(U), key, adaptive)
        out.append((agg, clip))
    return out


@pytest.mark.parametrize("dp_kw", [
    dict(clip_norm=1.0, noise_multiplier=0.0),
    dict(clip_norm=2.0, noise_multiplier=0.8, expected_clients=12),
    dict(clip_norm=0.5, noise_multiplier=1.0, target_quantile=0.3, expected_clients=10,
         count_noise_multiplier=2.0),
    dict(clip_norm=3.0, noise_multiplier=0.0, target_quantile=0.8, clip_lr=0.5),
])
def test_central_dp_matches_naive(dp_kw):
    rng = np.random.default_rng(40)
    rounds = [rng.normal(size=(9, 37)) * rng.uniform(0.1, 2, size=(9, 1)) for _ in range(4)]
    rounds[2][4, 3] = np.nan
    dp = fastmb.CentralDP(seed=3, **dp_kw)
    for U, (agg, clip) in zip(rounds, _central_naive(dp_kw, rounds, seed=3)):
        res = dp.aggregate(U)
        assert_allclose(res.aggregate, agg, **F64)
        assert_allclose(dp.clip_norm, clip, **F64)
    assert res.rejected.tolist() == [] and dp.round == 4


def test_central_dp_reports_clipped_and_rejected():
    U = np.array([[3.0, 4.0], [0.3, 0.4], [np.inf, 0.0], [0.0, 0.0]])
    res = fastmb.CentralDP(clip_norm=1.0, noise_multiplier=0.0).aggregate(U)
    assert res.clipped.tolist() == [0] and res.rejected.tolist() == [2]
    assert_allclose(res.aggregate, [(0.6 + 0.3) / 4, (0.8 + 0.4) / 4])
    assert res.noise_std == 0.0 and res.clip_norm == 1.0


def test_central_dp_float32_noise_scale_and_resume():
    rng = np.random.default_rng(41)
    U = np.zeros((20, 100_000), np.float32)
    dp = fastmb.CentralDP(clip_norm=2.0, noise_multiplier=1.5, seed=9)
    res = dp.aggregate(U)
    assert res.aggregate.dtype == np.float32
    assert abs(res.aggregate.std() / (1.5 * 2.0 / 20) - 1) < 0.02 and res.noise_std == 0.15
    U = rng.normal(size=(20, 50)).astype(np.float32)
    state = dp.state_dict()
    a = dp.aggregate(U).aggregate
    b = fastmb.CentralDP(clip_norm=2.0, noise_multiplier=1.5, seed=9).load_state_dict(state)
    np.testing.assert_array_equal(b.aggregate(U).aggregate, a)


@pytest.mark.parametrize("kw, match", [
    (dict(clip_norm=0.0), "clip_norm must be > 0"),
    (dict(noise_multiplier=-1.0), "noise_multiplier must be >= 0"),
    (dict(target_quantile=1.5), "target_quantile must be <= 1"),
    (dict(target_quantile=0.5), "needs expected_clients"),
    (dict(target_quantile=0.5, count_noise_multiplier=0.4), "must exceed noise_multiplier / 2"),
    (dict(clip_lr=0.0), "clip_lr must be > 0"),
    (dict(expected_clients=0), "expected_clients must be >= 1"),
])
def test_central_dp_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        fastmb.CentralDP(**kw)


def test_central_dp_bad_updates_leave_state_untouched():
    dp = fastmb.CentralDP(clip_norm=1.0, noise_multiplier=1.0, target_quantile=0.5,
                          expected_clients=4, count_noise_multiplier=1.0)
    for bad in (np.ones(5), np.ones((0, 3)), [["a"]]):
        with pytest.raises((ValueError, TypeError), match="updates"):
            dp.aggregate(bad)
    assert dp.round == 0 and dp.clip_norm == 1.0
    with pytest.raises(ValueError, match="state must be a dict"):
        dp.load_state_dict({"clip_norm": 1.0})
    with pytest.raises(ValueError, match="clip_norm"):
        dp.load_state_dict({"clip_norm": -1.0, "round": 2})
    assert dp.round == 0


# ----------------------------------------------------------------------------- accounting


def test_epsilon_against_dp_accounting_and_opacus():
    eps = P.epsilon(1.1, 0.01, 10_000, 1e-5)
    assert 5.5 < eps < 5.8   # Abadi et al.'s setting; Opacus and TF Privacy report 5.63
    assert P.epsilon(1.1, 0.01, 10_000, 1e-5, accountant="pld") < eps
    assert P.epsilon(1.1, 0.01, 20_000, 1e-5) > eps > P.epsilon(2.0, 0.01, 10_000, 1e-5)
    assert P.epsilon(0.0, 0.01, 10, 1e-5) == np.inf and P.epsilon(1.0, 0.5, 0, 1e-5) == 0.0
    opacus = pytest.importorskip("opacus.accountants")
    acc = opacus.RDPAccountant()
    acc.history = [(1.1, 0.01, 10_000)]
    assert abs(acc.get_epsilon(1e-5) - eps) < 1e-3 * eps


def test_noise_multiplier_for_round_trips():
    z = P.noise_multiplier_for(3.0, 0.02, 2000, 1e-6)
    assert P.epsilon(z, 0.02, 2000, 1e-6) <= 3.0 < P.epsilon(0.98 * z, 0.02, 2000, 1e-6)


@pytest.mark.parametrize("args, match", [
    ((1.0, 0.0, 10, 1e-5), "sample_rate must be > 0"),
    ((1.0, 1.5, 10, 1e-5), "sample_rate must be <= 1"),
    ((1.0, 0.1, -1, 1e-5), "steps must be >= 0"),
    ((1.0, 0.1, 10, 0.0), "delta must be > 0"),
    ((1.0, 0.1, 10, 1.0), "delta must be in"),
    ((-1.0, 0.1, 10, 1e-5), "noise_multiplier must be >= 0"),
])
def test_accounting_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        P.epsilon(*args)


def test_unknown_accountant():
    with pytest.raises(ValueError, match="accountant must be one of"):
        P.noise_multiplier_for(1.0, 0.1, 10, 1e-5, accountant="moments")
