"""Bad input gets a ValueError/TypeError naming the argument; caller arrays are never modified."""

import numpy as np
import pytest

import fastmb

from .conftest import make_data

LOGIT = fastmb.Linear(3, loss="logistic")
SOFT = fastmb.MLP([3, 4, 3])
REG = fastmb.Linear(3, 2)


def _data(model=LOGIT, n=12):
    return make_data(model, n, seed=0)


def _calls():
    """(name, callable(model, params, X, y)) for every public function taking data."""
    return [
        ("loss", fastmb.loss),
        ("grad", fastmb.grad),
        ("loss_and_grad", fastmb.loss_and_grad),
        ("per_sample_grad", fastmb.per_sample_grad),
        ("per_sample_grad_norm", fastmb.per_sample_grad_norm),
        ("predict", lambda m, p, X, y: fastmb.predict(m, p, X)),
        ("decision_function", lambda m, p, X, y: fastmb.decision_function(m, p, X)),
        ("sgd", lambda m, p, X, y: fastmb.sgd(m, p, X, y)),
        ("train_clients", lambda m, p, X, y: fastmb.train_clients(m, p, X, y, [0, 5, len(X)])),
    ]


CALLS = _calls()
IDS = [name for name, _ in CALLS]
FUNCS = [f for _, f in CALLS]


@pytest.mark.parametrize("func", FUNCS, ids=IDS)
def test_bad_model_and_params(func):
    p, X, y = _data()
    with pytest.raises(TypeError, match="model"):
        func("logistic", p, X, y)
    with pytest.raises(ValueError, match="params"):
        func(LOGIT, p[:-1], X, y)
    with pytest.raises(ValueError, match="params"):
        func(LOGIT, p.reshape(1, -1), X, y)
    bad = p.copy()
    bad[1] = np.nan
    with pytest.raises(ValueError, match="params contains NaN"):
        func(LOGIT, bad, X, y)
    with pytest.raises(TypeError, match="params"):
        func(LOGIT, ["a"] * LOGIT.n_params, X, y)


@pytest.mark.parametrize("func", FUNCS, ids=IDS)
@pytest.mark.parametrize("model", [LOGIT, SOFT], ids=["linear", "mlp"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_X_names_the_row(func, model, value):
    p, X, y = _data(model)
    X[7, 2] = value
    X_before = X.copy()
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 7\)"):
        func(model, p, X, y)
    np.testing.assert_array_equal(X, X_before)


@pytest.mark.parametrize("func", FUNCS, ids=IDS)
def test_bad_X_shapes(func):
    p, X, y = _data()
    with pytest.raises(ValueError, match="X must be 2-D.*reshape"):
        func(LOGIT, p, X[0], y)
    with pytest.raises(ValueError, match="X has 2 features but the model expects 3"):
        func(LOGIT, p, X[:, :2], y)
    with pytest.raises(ValueError, match="X is empty"):
        func(LOGIT, p, X[:0], y[:0])
    with pytest.raises(TypeError, match="X must hold real numbers"):
        func(LOGIT, p, X.astype(str), y)


@pytest.mark.parametrize("func", [f for n, f in CALLS if n not in ("predict", "decision_function")],
                         ids=[n for n in IDS if n not in ("predict", "decision_function")])
def test_bad_labels(func):
    p, X, y = _data()
    for bad, match in [(y[:-1], "y must be a 1-D array of 12"), (np.full(12, 2), r"\[0, 2\)"),
                       (np.full(12, -1), r"\[0, 2\)"), (np.full(12, 0.5), "integer class"),
                       (y.reshape(-1, 1), "1-D")]:
        with pytest.raises(ValueError, match=match):
            func(LOGIT, p, X, bad)
    ps, Xs, _ = _data(SOFT)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        func(SOFT, ps, Xs, np.full(12, 3))
    pr, Xr, yr = _data(REG)
    with pytest.raises(ValueError, match=r"y must have shape \(12, 2\)"):
        func(REG, pr, Xr, yr[:, 0])
    yr[3, 1] = np.nan
    with pytest.raises(ValueError, match="y contains NaN"):
        func(REG, pr, Xr, yr)


@pytest.mark.parametrize("func", [fastmb.loss, fastmb.grad, fastmb.sgd],
                         ids=["loss", "grad", "sgd"])
def test_bad_sample_weight(func):
    p, X, y = _data()
    for bad, match in [(-np.ones(12), "non-negative"), (np.zeros(12), "all zero"),
                       (np.ones(11), "length 12"), (np.full(12, np.nan), "NaN")]:
        with pytest.raises(ValueError, match=f"sample_weight.*{match}"):
            func(LOGIT, p, X, y, sample_weight=bad)


def test_converted_not_rejected():
    # Fortran-ordered, strided, integer and float16 inputs are converted, with the same result.
    p, X, y = _data(SOFT, 20)
    ref = fastmb.grad(SOFT, p, X, y)
    Xf = np.asfortranarray(X)
    Xs = np.repeat(X, 2, axis=0)[::2]
    assert not Xs.flags.c_contiguous
    for Xc in (Xf, Xs, X.tolist()):
        np.testing.assert_allclose(fastmb.grad(SOFT, p, Xc, y), ref, rtol=1e-12)
    np.testing.assert_allclose(fastmb.grad(SOFT, p, X, y.astype(np.float32)), ref, rtol=1e-12)
    g16 = fastmb.grad(SOFT, p.astype(np.float16), X, y)
    assert g16.dtype == np.float64
    Xi = np.arange(60).reshape(20, 3) % 5
    assert fastmb.grad(SOFT, p, Xi, y).dtype == np.float64
    # float64 X with float32 params computes in float32
    assert fastmb.grad(SOFT, p.astype(np.float32), X, y).dtype == np.float32


def test_inputs_never_modified():
    p, X, y = _data(SOFT, 20)
    w = np.linspace(0.1, 1, 20)
    copies = [a.copy() for a in (p, X, y, w)]
    fastmb.loss(SOFT, p, X, y, sample_weight=w)
    fastmb.grad(SOFT, p, X, y, sample_weight=w)
    fastmb.per_sample_grad(SOFT, p, X, y, microbatch=3)
    fastmb.per_sample_grad_norm(SOFT, p, X, y)
    fastmb.sgd(SOFT, p, X, y, sample_weight=w, momentum=0.9, prox_mu=0.1)
    fastmb.train_clients(SOFT, p, X, y, [0, 10, 20], sample_weight=w)
    for a, b in zip((p, X, y, w), copies):
        np.testing.assert_array_equal(a, b)
    U = np.random.default_rng(0).normal(size=(4, 10))
    Uc = U.copy()
    fastmb.fedavg(U, [1, 2, 3, 4])
    np.testing.assert_array_equal(U, Uc)


def test_bad_training_options():
    p, X, y = _data()
    cases = [
        (dict(lr=0.0), ValueError, "lr must be > 0"),
        (dict(lr=np.nan), ValueError, "lr must be finite"),
        (dict(momentum=1.5), ValueError, "momentum must be <= 1"),
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(batch_size=2.5), TypeError, "batch_size must be an integer"),
        (dict(epochs=-1), ValueError, "epochs must be >= 0"),
        (dict(seed=-3), ValueError, "seed must be >= 0"),
        (dict(shuffle="yes"), TypeError, "shuffle must be a bool"),
        (dict(schedule="step"), ValueError, "schedule must be one of"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay must be >= 0"),
        (dict(prox_mu=-1.0), ValueError, "prox_mu must be >= 0"),
        (dict(lr="0.1"), TypeError, "lr must be a real number"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            fastmb.sgd(LOGIT, p, X, y, **kw)


def test_bad_client_offsets():
    p, X, y = _data()
    for bad, exc, match in [([0, 5, 5, 12], ValueError, "strictly increasing.*client 1"),
                            ([0, 7, 3, 12], ValueError, "strictly increasing"),
                            ([0, 13], ValueError, r"\[0, 12\]"),
                            ([-1, 12], ValueError, r"\[0, 12\]"),
                            ([0], ValueError, "K\\+1"), ([[0, 12]], ValueError, "1-D"),
                            ([0, 5.5, 12], TypeError, "integers")]:
        with pytest.raises(exc, match=f"client_offsets.*{match}|{match}"):
            fastmb.train_clients(LOGIT, p, X, y, bad)
    with pytest.raises(ValueError, match="epochs"):
        fastmb.train_clients(LOGIT, p, X, y, [0, 5, 12], epochs=[1, 2, 3])
    with pytest.raises(ValueError, match="epochs"):
        fastmb.train_clients(LOGIT, p, X, y, [0, 5, 12], epochs=[1, -2])


def test_bad_per_sample_options():
    p, X, y = _data()
    with pytest.raises(ValueError, match="microbatch must be >= 1"):
        fastmb.per_sample_grad(LOGIT, p, X, y, microbatch=0)
    for out, exc, match in [(np.empty((11, 4)), ValueError, r"out must have shape \(12, 4\)"),
                            (np.empty((12, 4), np.float32), TypeError, "dtype of params"),
                            (np.empty((4, 12)).T, ValueError, "C-contiguous"),
                            ([[0.0] * 4] * 12, TypeError, "numpy.ndarray")]:
        with pytest.raises(exc, match=match):
            fastmb.per_sample_grad(LOGIT, p, X, y, out=out)


def test_bad_fedavg_input():
    U = np.ones((3, 4))
    for args, exc, match in [((np.ones(4),), ValueError, "updates must be 2-D"),
                             ((np.ones((0, 4)),), ValueError, "updates is empty"),
                             ((U, [1, -1, 1]), ValueError,
                              "weights must be non-negative; client 1"),
                             ((U, [0, 0, 0]), ValueError, "weights are all zero"),
                             ((U, [1, 1]), ValueError, "weights must be a 1-D array of length 3"),
                             ((U, [1, np.nan, 1]), ValueError, "weights contains NaN"),
                             ((U.astype(str),), TypeError, "updates must hold real numbers")]:
        with pytest.raises(exc, match=match):
            fastmb.fedavg(*args)


def test_bad_models():
    for ctor, exc, match in [
        (lambda: fastmb.Linear(0), ValueError, "n_features must be >= 1"),
        (lambda: fastmb.Linear(3.0), TypeError, "n_features must be an integer"),
        (lambda: fastmb.Linear(3, 2, loss="logistic"), ValueError, "binary.*softmax"),
        (lambda: fastmb.Linear(3, 1, loss="softmax"), ValueError, "at least 2 outputs"),
        (lambda: fastmb.Linear(3, loss="mse"), ValueError, "loss must be one of"),
        (lambda: fastmb.Linear(3, loss="huber", huber_delta=0), ValueError, "huber_delta"),
        (lambda: fastmb.MLP([3]), ValueError, "at least 2 entries"),
        (lambda: fastmb.MLP("64-10"), TypeError, "layer_sizes"),
        (lambda: fastmb.MLP([3, 0, 2]), ValueError, r"layer_sizes\[1\] must be >= 1"),
        (lambda: fastmb.MLP([3, 2], activation="gelu"), ValueError, "activation must be one of"),
        (lambda: fastmb.MLP([3, 2], fit_intercept=1), TypeError, "fit_intercept"),
    ]:
        with pytest.raises(exc, match=match):
            ctor()
