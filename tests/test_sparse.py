"""Sparse CSR input: every CPU entry point gives the dense computation's result.

The references are the dense calls on ``naive.csr_to_dense(X)`` (the meaning of the stored
entries, read from the CSR arrays) and, for loss, gradients and per-sample gradients, the
naive per-sample formulas. Sizes stay small; the kernels compile one sparse specialization
per dtype, shared by every model case.
"""

import numpy as np
import pytest
import scipy.sparse as sp

import fastmb

from . import naive
from .conftest import make_data


def _sparse(n, d, seed=0, density=0.3, dtype=np.float64):
    X = sp.random(n, d, density=density, random_state=seed, format="csr", dtype=np.float64)
    X.data = (4.0 * X.data - 2.0).astype(dtype)  # signed values
    return X


def _close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol)


def test_every_entry_point_equals_dense(model):
    n, d = 23, model.n_features
    params, _, y = make_data(model, n)
    Xs = _sparse(n, d, seed=3)
    Xd = naive.csr_to_dense(Xs)
    calls = {
        "loss": lambda X: fastmb.loss(model, params, X, y),
        "grad": lambda X: fastmb.grad(model, params, X, y),
        "weighted grad": lambda X: fastmb.grad(model, params, X, y,
                                               sample_weight=np.linspace(0.5, 2, n)),
        "decision_function": lambda X: fastmb.decision_function(model, params, X),
        "predict": lambda X: fastmb.predict(model, params, X),
        "per_sample_grad": lambda X: fastmb.per_sample_grad(model, params, X, y),
        "microbatch 4": lambda X: fastmb.per_sample_grad(model, params, X, y, microbatch=4),
        "per_sample_grad_norm": lambda X: fastmb.per_sample_grad_norm(model, params, X, y),
        "evaluate": lambda X: fastmb.evaluate(model, params, X, y)["loss"],
        "sgd shuffled": lambda X: fastmb.sgd(model, params, X, y, epochs=2, batch_size=4,
                                             shuffle=True, momentum=0.5, lr=0.05),
        "sgd batched": lambda X: fastmb.sgd(model, params, X, y, epochs=2, batch_size=16,
                                            lr=0.05),
        "DP-SGD": lambda X: fastmb.sgd(model, params, X, y, epochs=2, batch_size=8,
                                       clip_norm=0.5, noise_multiplier=0.3, lr=0.05),
        "train_clients": lambda X: fastmb.train_clients(
            model, params, X, y, [0, 9, 23], rows=np.arange(n)[::-1], epochs=[2, 1],
            batch_size=4, lr=0.05),
    }
    for name, call in calls.items():
        try:
            _close(call(Xs), call(Xd))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    _close(fastmb.loss(model, params, Xs, y), naive.loss(model, params, Xd, y))
    _close(fastmb.grad(model, params, Xs, y), naive.grad(model, params, Xd, y))
    _close(fastmb.per_sample_grad(model, params, Xs, y),
           naive.per_sample_grad(model, params, Xd, y))
    _close(fastmb.per_sample_grad_norm(model, params, Xs, y),
           naive.per_sample_grad_norm(model, params, Xd, y))


def test_float32_and_empty_rows():
    model = fastmb.MLP([6, 5, 3])
    params, _, y = make_data(model, 12, dtype=np.float32)
    Xs = _sparse(12, 6, seed=1, dtype=np.float32)
    Xs = Xs.tolil()
    Xs[4] = 0  # an empty row
    Xs = Xs.tocsr()
    assert Xs.indptr[4] == Xs.indptr[5]
    Xd = naive.csr_to_dense(Xs).astype(np.float32)
    for f in (lambda X: fastmb.grad(model, params, X, y),
              lambda X: fastmb.per_sample_grad(model, params, X, y),
              lambda X: fastmb.sgd(model, params, X, y, epochs=1, batch_size=4)):
        _close(f(Xs), f(Xd), rtol=1e-5, atol=1e-6)


def test_formats_duplicates_and_the_callers_matrix():
    model = fastmb.Linear(5, 3, loss="softmax")
    params, _, y = make_data(model, 4)
    # Unsorted indices with a repeated entry (row 0 stores column 3 twice).
    data = np.array([1.0, 2.0, -1.5, 0.5, 3.0, 1.0, -2.0])
    indices = np.array([3, 0, 3, 4, 1, 2, 0], np.int64)
    indptr = np.array([0, 3, 4, 6, 7])
    X = sp.csr_matrix((data, indices, indptr), shape=(4, 5))
    before = [a.copy() for a in (X.data, X.indices, X.indptr)]
    want = fastmb.grad(model, params, naive.csr_to_dense(X), y)
    for form in (X, sp.csr_array(X), X.tocsc(), X.tocoo()):
        _close(fastmb.grad(model, params, form, y), want)
    Xi = sp.csr_matrix((np.round(data).astype(np.int64), indices, indptr), shape=(4, 5))
    _close(fastmb.grad(model, params, Xi, y),
           fastmb.grad(model, params, naive.csr_to_dense(Xi), y))
    for a, b in zip((X.data, X.indices, X.indptr), before):
        np.testing.assert_array_equal(a, b)  # never sorted or summed in place


def test_bad_sparse_input_is_a_clear_error():
    model = fastmb.Linear(5, loss="logistic")
    params, _, y = make_data(model, 3)

    def csr(data, indices, indptr, shape=(3, 5)):
        X = sp.csr_matrix((3, 5))
        X.data, X.indices, X.indptr = (np.asarray(data, float), np.asarray(indices, np.int32),
                                       np.asarray(indptr, np.int32))
        X._shape = shape
        return X

    with pytest.raises(ValueError, match=r"X.indices must lie in \[0, 5\)"):
        fastmb.loss(model, params, csr([1.0, 2.0], [1, 7], [0, 1, 2, 2]), y)
    with pytest.raises(ValueError, match=r"X.indices must lie in \[0, 5\)"):
        fastmb.sgd(model, params, csr([1.0, 2.0], [-1, 2], [0, 1, 2, 2]), y)
    with pytest.raises(ValueError, match="X.indptr must start at 0, never decrease"):
        fastmb.loss(model, params, csr([1.0, 2.0], [1, 2], [0, 2, 1, 2]), y)
    with pytest.raises(ValueError, match="X.indptr must start at 0, never decrease"):
        fastmb.loss(model, params, csr([1.0, 2.0], [1, 2], [0, 1, 2, 9]), y)
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 2\)"):
        fastmb.grad(model, params, csr([1.0, np.nan], [1, 2], [0, 1, 1, 2]), y)
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 1\)"):
        fastmb.evaluate(model, params, csr([1.0, np.inf], [1, 2], [0, 1, 2, 2]), y)
    with pytest.raises(ValueError, match="X has 4 features but the model expects 5"):
        fastmb.loss(model, params, sp.csr_matrix((3, 4)), y)
    with pytest.raises(ValueError, match="X is empty"):
        fastmb.loss(model, params, sp.csr_matrix((0, 5)), y[:0])
    with pytest.raises(TypeError, match="X must hold real numbers"):
        fastmb.loss(model, params, sp.csr_matrix(np.ones((3, 5), complex)), y)
    with pytest.raises(TypeError, match="runs on the CPU only"):
        fastmb.loss(model, params, sp.csr_matrix((3, 5)), y, device="cuda")


def test_simulation_on_sparse_data():
    model = fastmb.Linear(8, 2, loss="softmax")
    rng = np.random.default_rng(0)
    X = _sparse(60, 8, seed=2)
    y = rng.integers(0, 2, 60)
    part = fastmb.partition.iid(60, 4, seed=0)
    kw = dict(clients_per_round=3, epochs=1, batch_size=5, seed=1)
    a = fastmb.Simulation(model, (X, y, X[:10], y[:10]), part, **kw)
    b = fastmb.Simulation(model, (X.toarray(), y, X[:10].toarray(), y[:10]), part, **kw)
    ha, hb = a.run(2), b.run(2)
    _close(a.params, b.params)
    assert ha[-1]["accuracy"] == hb[-1]["accuracy"]
    bad = X.copy()
    bad.data[-1] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 59\)"):
        fastmb.Simulation(model, (bad, y, X[:10], y[:10]), part, **kw)


def test_cli_simulates_a_saved_sparse_matrix(tmp_path, capsys):
    from fastmb.cli import main

    rng = np.random.default_rng(0)
    X = _sparse(120, 10, seed=4, density=0.2)
    y = (X @ rng.normal(size=10) > 0).astype(float)
    path = tmp_path / "sparse.npz"
    sp.save_npz(path, sp.hstack([X, sp.csr_matrix(y[:, None])]).tocsr())
    data = fastmb.data.load(path)
    assert sp.issparse(data.X) and data.X.shape == (96, 10) and data.n_classes == 2
    out = tmp_path / "run"
    assert main(["simulate", "--data", str(path), "--model", "linear", "--clients", "6",
                 "--rounds", "2", "--no-plot", "--no-progress", "--out", str(out)]) == 0
    assert "2 rounds" in capsys.readouterr().out
    assert (out / "summary.json").exists()
