"""Model descriptions: layout, views, initialisation, immutability."""

import numpy as np
import pytest

import fastmb


def test_layout_and_views():
    m = fastmb.MLP([4, 3, 2])
    assert m.n_params == 4 * 3 + 3 + 3 * 2 + 2
    p = np.arange(m.n_params, dtype=np.float64)
    (W0, b0), (W1, b1) = m.layers(p)
    assert W0.shape == (4, 3) and b0.shape == (3,) and W1.shape == (3, 2) and b1.shape == (2,)
    np.testing.assert_array_equal(np.concatenate([W0.ravel(), b0, W1.ravel(), b1]), p)
    W0[0, 0] = -1.0  # views share memory
    assert p[0] == -1.0
    nb = fastmb.MLP([4, 3, 2], fit_intercept=False)
    assert nb.n_params == 18 and all(b is None for _, b in nb.layers(np.zeros(18)))


def test_init():
    lin = fastmb.Linear(5, 3, loss="softmax")
    p = lin.init()
    assert p.dtype == np.float32 and p.shape == (18,) and not p.any()
    m = fastmb.MLP([50, 40, 10], activation="relu")
    p1, p2 = m.init(seed=1), m.init(seed=1)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, m.init(seed=2))
    (W0, b0), _ = m.layers(p1)
    assert np.abs(W0).max() <= np.sqrt(6 / 50) and W0.std() > 0.5 * np.sqrt(2 / 50)
    assert not b0.any()
    assert m.init(dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="dtype"):
        m.init(dtype=np.int32)


def test_immutable_equal_hashable():
    m = fastmb.MLP([3, 2], loss="softmax")
    with pytest.raises(AttributeError, match="immutable"):
        m._loss = "squared"
    assert m == fastmb.MLP([3, 2], loss="softmax") and m != fastmb.MLP([3, 2], loss="squared")
    assert len({m, fastmb.MLP([3, 2], loss="softmax")}) == 1
    assert "MLP([3, 2]" in repr(m) and "Linear(3, 1" in repr(fastmb.Linear(3))
    assert m.n_classes == 2 and fastmb.Linear(3).n_classes is None
    assert fastmb.Linear(3, loss="hinge").is_classifier


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, fastmb; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
