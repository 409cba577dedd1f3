"""Loss, gradients, per-sample gradients and norms against tests/naive.py and finite differences."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastmb

from . import naive
from .conftest import make_data

F64 = dict(rtol=1e-9, atol=1e-11)


def test_loss_and_grad_match_naive(model):
    params, X, y = make_data(model, 37)
    assert fastmb.loss(model, params, X, y) == pytest.approx(naive.loss(model, params, X, y),
                                                             rel=1e-12)
    assert_allclose(fastmb.grad(model, params, X, y), naive.grad(model, params, X, y), **F64)
    value, g = fastmb.loss_and_grad(model, params, X, y)
    assert value == pytest.approx(naive.loss(model, params, X, y), rel=1e-12)
    assert_allclose(g, naive.grad(model, params, X, y), **F64)


def test_naive_grad_matches_finite_differences(model):
    # The reference itself is checked against central differences in float64.
    params, X, y = make_data(model, 6, seed=1)
    assert_allclose(naive.grad(model, params, X, y),
                    naive.finite_difference_grad(model, params, X, y), rtol=1e-5, atol=1e-7)


def test_grad_matches_finite_differences(model):
    params, X, y = make_data(model, 6, seed=2)
    assert_allclose(fastmb.grad(model, params, X, y),
                    naive.finite_difference_grad(model, params, X, y), rtol=1e-5, atol=1e-7)


def test_weighted_loss_and_grad(model):
    params, X, y = make_data(model, 21, seed=3)
    w = np.random.default_rng(3).uniform(0, 2, size=21)
    w[4] = 0.0
    assert fastmb.loss(model, params, X, y, sample_weight=w) == pytest.approx(
        naive.loss(model, params, X, y, w), rel=1e-12)
    assert_allclose(fastmb.grad(model, params, X, y, sample_weight=w),
                    naive.grad(model, params, X, y, w), **F64)


@pytest.mark.parametrize("microbatch", [1, 4, 37, 50])
def test_per_sample_grad_matches_naive(model, microbatch):
    params, X, y = make_data(model, 37, seed=4)
    G = fastmb.per_sample_grad(model, params, X, y, microbatch=microbatch)
    assert G.shape == (-(-37 // microbatch), model.n_params)
    assert_allclose(G, naive.per_sample_grad(model, params, X, y, microbatch), **F64)


def test_per_sample_grad_many_tasks():
    # More rows than one parallel task holds, with a ragged last micro-batch.
    model = fastmb.MLP([5, 7, 3])
    params, X, y = make_data(model, 300, seed=5)
    for m in (1, 7):
        assert_allclose(fastmb.per_sample_grad(model, params, X, y, microbatch=m),
                        naive.per_sample_grad(model, params, X, y, m), **F64)


def test_per_sample_grad_out_is_written_in_place(model):
    params, X, y = make_data(model, 10, seed=6)
    out = np.full((10, model.n_params), np.nan)
    res = fastmb.per_sample_grad(model, params, X, y, out=out)
    assert res is out
    assert_allclose(out, naive.per_sample_grad(model, params, X, y), **F64)


def test_per_sample_grad_norm_matches_materialized(model):
    params, X, y = make_data(model, 80, seed=7)
    assert_allclose(fastmb.per_sample_grad_norm(model, params, X, y),
                    naive.per_sample_grad_norm(model, params, X, y), **F64)


def test_mean_of_per_sample_grads_is_grad(model):
    params, X, y = make_data(model, 40, seed=8)
    assert_allclose(fastmb.per_sample_grad(model, params, X, y).mean(axis=0),
                    fastmb.grad(model, params, X, y), **F64)


def test_float32_close_to_float64(model):
    params, X, y = make_data(model, 50, seed=9)
    p32, X32 = params.astype(np.float32), X.astype(np.float32)
    g32 = fastmb.grad(model, p32, X32, y)
    assert g32.dtype == np.float32
    scale = np.abs(naive.grad(model, params, X, y)).max() + 1
    assert_allclose(g32, fastmb.grad(model, params, X, y), rtol=1e-4, atol=1e-5 * scale)
    G32 = fastmb.per_sample_grad(model, p32, X32, y)
    assert G32.dtype == np.float32
    assert_allclose(G32, fastmb.per_sample_grad(model, params, X, y), rtol=1e-4, atol=1e-4)
    assert_allclose(fastmb.per_sample_grad_norm(model, p32, X32, y),
                    fastmb.per_sample_grad_norm(model, params, X, y), rtol=1e-4, atol=1e-5)
    assert fastmb.loss(model, p32, X32, y) == pytest.approx(fastmb.loss(model, params, X, y),
                                                            rel=1e-5)


def test_large_n_grad_is_accurate_in_float32():
    # 100k float32 samples: float64 accumulation keeps the mean gradient to float32 precision.
    model = fastmb.Linear(3, loss="squared")
    rng = np.random.default_rng(10)
    X = rng.normal(size=(100_000, 3))
    y = X @ [1.0, -1.0, 0.5] + 0.1
    params = np.array([0.3, 0.2, 0.1, 0.0])
    g64 = fastmb.grad(model, params, X, y)
    g32 = fastmb.grad(model, params.astype(np.float32), X.astype(np.float32), y)
    assert_allclose(g32, g64, rtol=2e-6, atol=1e-6)


def test_decision_predict_proba(model):
    params, X, _ = make_data(model, 30, seed=11)
    f = fastmb.decision_function(model, params, X)
    ref = naive.decision_function(model, params, X)
    assert_allclose(f, ref[:, 0] if model.n_outputs == 1 else ref, **F64)
    pred = fastmb.predict(model, params, X)
    if model.loss == "softmax":
        assert_allclose(pred, ref.argmax(axis=1))
        proba = fastmb.predict_proba(model, params, X)
        assert_allclose(proba, np.exp(ref) / np.exp(ref).sum(axis=1, keepdims=True), **F64)
    elif model.loss == "logistic":
        assert_allclose(pred, (ref[:, 0] > 0).astype(int))
        proba = fastmb.predict_proba(model, params, X)
        assert_allclose(proba[:, 1], 1 / (1 + np.exp(-ref[:, 0])), **F64)
        assert_allclose(proba.sum(axis=1), 1.0)
    elif model.loss == "hinge":
        assert_allclose(pred, (ref[:, 0] > 0).astype(int))
        with pytest.raises(ValueError, match="predict_proba"):
            fastmb.predict_proba(model, params, X)
    else:
        assert_allclose(pred, f)


def test_extreme_scores_stay_finite():
    model = fastmb.Linear(1, loss="logistic")
    X = np.array([[1e4], [-1e4]])
    params = np.array([1.0, 0.0])
    assert np.isfinite(fastmb.loss(model, params, X, [0, 1]))
    assert_allclose(fastmb.predict_proba(model, params, X), [[0, 1], [1, 0]])
    soft = fastmb.Linear(1, 3, loss="softmax")
    p = np.array([1000.0, -1000.0, 0.0, 0.0, 0.0, 0.0])
    assert fastmb.loss(soft, p, [[1.0]], [0]) == pytest.approx(0.0, abs=1e-12)
    assert fastmb.loss(soft, p, [[1.0]], [1]) == pytest.approx(2000.0)


def test_evaluate_is_loss_and_accuracy(model):
    params, X, y = make_data(model, 150, seed=31)  # three row chunks
    got = fastmb.evaluate(model, params, X, y)
    assert got["loss"] == pytest.approx(naive.loss(model, params, X, y), rel=1e-10)
    if model.is_classifier:
        pred = np.array([naive.predict(model, params, x) for x in X])
        assert got["accuracy"] == np.mean(pred == y)
    else:
        assert got["accuracy"] is None
    bad = X.copy()
    bad[77, 0] = np.nan
    with pytest.raises(ValueError, match="row 77"):
        fastmb.evaluate(model, params, bad, y)
    with pytest.raises(ValueError, match="empty"):
        fastmb.evaluate(model, params, X[:0], y[:0])
