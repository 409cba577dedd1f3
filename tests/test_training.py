"""sgd and train_clients against the step-by-step references in tests/naive.py."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastmb

from . import naive
from .conftest import MODEL_CASES, make_data

F64 = dict(rtol=1e-9, atol=1e-11)


def test_rng_matches_python_reference():
    from numba import njit

    from fastmb.kernels import _rng

    @njit(cache=False)
    def draws(key, n):
        out = np.empty(n, np.int64)
        for i in range(n):
            out[i] = _rng.randbelow(key, i, i + 1)
        return out

    key = naive.hash2(12345, 7)
    assert int(_rng.hash2(np.uint64(12345), np.uint64(7))) == key
    expect = [((naive.hash2(key, i) >> 32) * (i + 1)) >> 32 for i in range(50)]
    assert draws(np.uint64(key), 50).tolist() == expect


def test_sgd_matches_naive(model):
    params, X, y = make_data(model, 45, seed=20)
    kw = dict(epochs=2, batch_size=8, lr=0.05, seed=3)
    assert_allclose(fastmb.sgd(model, params, X, y, **kw), naive.sgd(model, params, X, y, **kw),
                    **F64)


@pytest.mark.parametrize("options", [
    dict(momentum=0.9),
    dict(weight_decay=0.01, prox_mu=0.1),
    dict(momentum=0.5, weight_decay=0.01, prox_mu=0.2, schedule="invscaling", power_t=0.3),
    dict(schedule="cosine", shuffle=False),
    dict(batch_size=1, epochs=1),
    dict(batch_size=100, epochs=3),
    dict(sample_weight="random"),
    dict(optimizer="adam", lr=0.01),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.5, nesterov=True, l2=0.3, weight_decay=0.01, schedule="invscaling"),
    dict(optimizer="adam", lr=0.01, l2=0.2, sample_weight="random"),
    dict(l2=0.3, batch_size=10, sample_weight="large"),  # weights rescaled inside: l2 too
    dict(optimizer="adam", betas=(0.5, 0.9), eps=1e-3, weight_decay=0.01, prox_mu=0.1,
         schedule="invscaling", batch_size=1, epochs=1, sample_weight="random"),
])
def test_sgd_options_match_naive(options):
    model = MODEL_CASES["mlp-tanh-logistic"]()
    params, X, y = make_data(model, 30, seed=21)
    kw = dict(epochs=2, batch_size=7, lr=0.1, seed=11)
    kw.update(options)
    if kw.get("sample_weight") == "random":
        kw["sample_weight"] = np.random.default_rng(0).uniform(0, 1, 30)
        kw["sample_weight"][:7] = 0.0  # a whole zero-weight batch when unshuffled
    elif kw.get("sample_weight") == "large":
        kw["sample_weight"] = np.random.default_rng(0).uniform(0.5, 5.0, 30)
    assert_allclose(fastmb.sgd(model, params, X, y, **kw), naive.sgd(model, params, X, y, **kw),
                    **F64)


def test_train_clients_matches_naive(model):
    params, X, y = make_data(model, 40, seed=22)
    offsets = [0, 5, 18, 19, 40]
    kw = dict(batch_size=4, lr=0.05, momentum=0.3, seed=9)
    got = fastmb.train_clients(model, params, X, y, offsets, epochs=2, **kw)
    assert got.shape == (4, model.n_params)
    assert_allclose(got, naive.train_clients(model, params, X, y, offsets, epochs=2, **kw), **F64)


@pytest.mark.parametrize("case", ["linear-softmax", "mlp-relu-softmax", "linear-logistic"])
def test_train_clients_rows_clients_max_steps(case):
    # A partition stored as a permutation plus offsets; a subset of clients in any order;
    # stragglers stopped mid-epoch; sample weights read through the permutation too.
    model = MODEL_CASES[case]()
    params, X, y = make_data(model, 40, seed=26)
    perm = np.random.default_rng(3).permutation(40)
    offsets = [0, 9, 10, 25, 40]
    sw = np.random.default_rng(4).uniform(0.5, 1.5, 40)
    kw = dict(batch_size=4, lr=0.05, seed=7, epochs=[2, 1, 3], max_steps=[3, -1, 0],
              sample_weight=sw)
    got = fastmb.train_clients(model, params, X, y, offsets, rows=perm, clients=[3, 0, 2], **kw)
    want = naive.train_clients(model, params, X, y, offsets, rows=perm, clients=[3, 0, 2], **kw)
    assert_allclose(got, want, **F64)
    assert_allclose(got[2], params)  # zero steps
    # A client trains the same bits alone, in a group, or with its rows copied out.
    alone = fastmb.train_clients(model, params, X, y, offsets, rows=perm, clients=[0],
                                 **{**kw, "epochs": 1, "max_steps": None})
    np.testing.assert_array_equal(alone[0], got[1])


@pytest.mark.parametrize("case", ["linear-squared", "mlp-relu-softmax", "linear-logistic"])
def test_adam_matches_scikit_learns_optimizer(case):
    # scikit-learn's own Adam (what its MLP estimators run), fed fastmb's mini-batch
    # gradients of the same rows, takes the same steps.
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

    model = MODEL_CASES[case]()
    params, X, y = make_data(model, 40, seed=31)
    kw = dict(batch_size=8, lr=0.02, betas=(0.8, 0.99), eps=1e-6)
    got = fastmb.sgd(model, params, X, y, epochs=3, shuffle=False, optimizer="adam", **kw)
    p = params.copy()
    opt = AdamOptimizer([p], learning_rate_init=kw["lr"], beta_1=0.8, beta_2=0.99,
                        epsilon=1e-6)
    for _ in range(3):
        for lo in range(0, 40, 8):
            opt.update_params([p], [fastmb.grad(model, p, X[lo:lo + 8], y[lo:lo + 8])])
    assert_allclose(got, p, **F64)
    # clients start from zero moments each: client 0 alone is sgd on its rows
    both = fastmb.train_clients(model, params, X, y, [0, 24, 40], epochs=3, shuffle=False,
                                optimizer="adam", **kw)
    np.testing.assert_array_equal(both[0], fastmb.sgd(model, params, X[:24], y[:24], epochs=3,
                                                      shuffle=False, optimizer="adam", **kw))


@pytest.mark.parametrize("options, exc, match", [
    (dict(optimizer="rmsprop"), ValueError, "optimizer must be one of"),
    (dict(optimizer="adam", momentum=0.9), ValueError, "momentum is an option of"),
    (dict(optimizer="adam", betas=(0.9, 1.0)), ValueError, r"betas must each be in \[0, 1\)"),
    (dict(optimizer="adam", betas=(0.9,)), TypeError, "betas must be a pair"),
    (dict(optimizer="adam", betas=(-0.1, 0.9)), ValueError, "betas.0. must be >= 0"),
    (dict(optimizer="adam", eps=0.0), ValueError, "eps must be > 0"),
    (dict(nesterov=True), ValueError, "nesterov=True needs optimizer='sgd' with momentum"),
    (dict(nesterov=1, momentum=0.9), TypeError, "nesterov must be a bool"),
    (dict(l2=-1.0), ValueError, "l2 must be >= 0"),
])
def test_adam_bad_options(options, exc, match):
    model = MODEL_CASES["linear-softmax"]()
    params, X, y = make_data(model, 10, seed=32)
    with pytest.raises(exc, match=match):
        fastmb.sgd(model, params, X, y, **options)


def test_train_clients_rows_bad_input():
    model = MODEL_CASES["linear-softmax"]()
    params, X, y = make_data(model, 20, seed=27)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 20\)"):
        fastmb.train_clients(model, params, X, y, [0, 5], rows=[0, 1, 2, 3, 20])
    with pytest.raises(ValueError, match="client_offsets must lie in .* entries of rows"):
        fastmb.train_clients(model, params, X, y, [0, 6], rows=[0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"clients must lie in \[0, 2\)"):
        fastmb.train_clients(model, params, X, y, [0, 5, 10], clients=[2])
    with pytest.raises(ValueError, match="clients must name at least one"):
        fastmb.train_clients(model, params, X, y, [0, 5, 10], clients=[])
    with pytest.raises(TypeError, match="clients must hold integers"):
        fastmb.train_clients(model, params, X, y, [0, 5, 10], clients=[0.5])
    with pytest.raises(ValueError, match="max_steps must be a 1-D array of 2 integers"):
        fastmb.train_clients(model, params, X, y, [0, 5, 10], max_steps=[1, 2, 3])
    bad = X.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        fastmb.train_clients(model, params, bad, y, [0, 5, 10], rows=np.arange(19, -1, -1)[5:15])
    # the caller's arrays are untouched
    rows = np.arange(10)
    fastmb.train_clients(model, params, X, y, [0, 5, 10], rows=rows, clients=[1])
    np.testing.assert_array_equal(rows, np.arange(10))


def test_train_clients_per_client_epochs():
    model = MODEL_CASES["linear-softmax"]()
    params, X, y = make_data(model, 30, seed=23)
    offsets, epochs = [0, 10, 20, 30], [0, 1, 3]
    got = fastmb.train_clients(model, params, X, y, offsets, epochs=epochs, lr=0.1, batch_size=4)
    assert_allclose(got[0], params)
    assert_allclose(got, naive.train_clients(model, params, X, y, offsets, epochs=epochs, lr=0.1,
                                             batch_size=4), **F64)


def test_client_zero_is_sgd_and_params_untouched():
    model = MODEL_CASES["mlp-relu-softmax"]()
    params, X, y = make_data(model, 30, seed=24)
    p_before, X_before = params.copy(), X.copy()
    got = fastmb.train_clients(model, params, X, y, [0, 12, 30], seed=5, lr=0.1)
    assert_allclose(got[0], fastmb.sgd(model, params, X[:12], y[:12], seed=5, lr=0.1), rtol=0,
                    atol=0)
    np.testing.assert_array_equal(params, p_before)
    np.testing.assert_array_equal(X, X_before)


def test_sgd_float32_and_learning():
    rng = np.random.default_rng(25)
    X = rng.normal(size=(2000, 10))
    w = rng.normal(size=10)
    y = (X @ w > 0).astype(int)
    model = fastmb.Linear(10, loss="logistic")
    p32 = fastmb.sgd(model, model.init(), X, y, epochs=5, lr=0.5)
    p64 = fastmb.sgd(model, model.init(dtype=np.float64), X, y, epochs=5, lr=0.5)
    assert p32.dtype == np.float32 and p64.dtype == np.float64
    assert_allclose(p32, p64, rtol=1e-3, atol=1e-3)
    assert (fastmb.predict(model, p32, X) == y).mean() > 0.97
    assert fastmb.loss(model, p32, X, y) < 0.2


def test_sgd_matches_sklearn_style_regression():
    # Plain least squares: many epochs of small-step SGD approach the normal-equations solution.
    rng = np.random.default_rng(26)
    X = rng.normal(size=(500, 4))
    y = X @ [1.0, -2.0, 0.5, 3.0] + 0.7
    model = fastmb.Linear(4)
    p = fastmb.sgd(model, model.init(dtype=np.float64), X, y, epochs=40, lr=0.05,
                   schedule="invscaling", power_t=0.1)
    assert_allclose(p, [1.0, -2.0, 0.5, 3.0, 0.7], atol=1e-3)


def test_diverging_training_raises():
    model = fastmb.Linear(3, loss="squared")
    X = np.random.default_rng(0).normal(size=(100, 3)) * 100
    with pytest.raises(ValueError, match="diverged"):
        fastmb.sgd(model, model.init(), X, X[:, 0], epochs=50, lr=10.0)


DETERMINISM_SCRIPT = textwrap.dedent("""
    import hashlib, numpy as np, fastmb
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 16)).astype(np.float32)
    y = rng.integers(0, 3, 3000)
    model = fastmb.MLP([16, 8, 3])
    p = model.init(seed=1)
    off = np.linspace(0, 3000, 13).astype(int)
    T = fastmb.train_clients(model, p, X, y, off, epochs=2, lr=0.1, momentum=0.9, seed=4)
    S = fastmb.sgd(model, p, X, y, lr=0.1, seed=4)
    U = rng.normal(size=(37, 100_003)).astype(np.float32)
    A = fastmb.fedavg(U, rng.uniform(1, 5, 37))
    G = fastmb.grad(model, p, X, y)
    M = fastmb.coordinate_median(U).aggregate
    D = fastmb.pairwise_sq_distances(U[:10])
    R = fastmb.geometric_median(U[:10], max_iter=3).aggregate
    Q = fastmb.sgd(model, p, X, y, lr=0.1, batch_size=256, seed=4, clip_norm=0.5,
                   noise_multiplier=1.0)
    C = fastmb.CentralDP(clip_norm=5.0, noise_multiplier=1.0, seed=2).aggregate(U).aggregate
    h = hashlib.sha256()
    for a in (T, S, A, G, M, D, R, Q, C):
        h.update(a.tobytes())
    print(h.hexdigest())
""")


def test_bit_identical_on_one_and_two_threads():
    digests = []
    for threads in ("1", "2"):
        # BLAS (the batched mini-batch gradients) must not change the bits either.
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                   OMP_NUM_THREADS=threads)
        res = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        digests.append(res.stdout.strip())
    assert digests[0] == digests[1]


def test_bad_row_through_rows_is_named_once():
    """A NaN row reached through ``rows`` is reported as that row of X (the kernels already
    map through rows; mapping again named another row, or a wrong cause)."""
    X = np.random.default_rng(0).normal(size=(10, 3))
    y = X.sum(1)
    X[7, 1] = np.nan
    model = fastmb.Linear(3)
    for rows in ([9, 8, 6, 5, 4, 3, 2, 1, 0, 7], [7, 0, 1, 2, 3, 4, 5, 6, 8, 9]):
        with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 7\)"):
            fastmb.train_clients(model, model.init(), X, y, [0, 5, 10], rows=rows)
