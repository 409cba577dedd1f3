"""Shared model cases and data for the tests; sizes stay small so compile time dominates."""

import os

# The CUDA tests run on numba-cuda's simulator unless asked otherwise
# (NUMBA_ENABLE_CUDASIM=0 runs them on a real GPU). Read when numba.cuda is imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest

import fastmb

MODEL_CASES = {
    "linear-squared": lambda: fastmb.Linear(5, loss="squared"),
    "linear-squared-3out": lambda: fastmb.Linear(5, 3, loss="squared"),
    "linear-huber": lambda: fastmb.Linear(5, loss="huber", huber_delta=0.5),
    "linear-logistic": lambda: fastmb.Linear(5, loss="logistic"),
    "linear-logistic-nobias": lambda: fastmb.Linear(5, loss="logistic", fit_intercept=False),
    "linear-hinge": lambda: fastmb.Linear(5, loss="hinge"),
    "linear-softmax": lambda: fastmb.Linear(5, 4, loss="softmax"),
    "mlp-relu-softmax": lambda: fastmb.MLP([5, 7, 3], activation="relu", loss="softmax"),
    "mlp-tanh-logistic": lambda: fastmb.MLP([5, 6, 4, 1], activation="tanh", loss="logistic"),
    "mlp-sigmoid-squared": lambda: fastmb.MLP([5, 6, 2], activation="sigmoid", loss="squared"),
    "mlp-relu-huber": lambda: fastmb.MLP([5, 4, 1], activation="relu", loss="huber"),
    "mlp-tanh-hinge-nobias": lambda: fastmb.MLP([5, 4, 1], activation="tanh", loss="hinge",
                                                fit_intercept=False),
}


def readme_code(heading):
    """The first ``python`` code block of the README's section that starts with
    ``heading`` (its tests run the README's examples as written)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        section = f.read().split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def make_data(model, n, seed=0, dtype=np.float64):
    """Random X, labels that fit the loss, and random (not initial) parameters."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, model.n_features)).astype(dtype)
    if model.is_classifier:
        y = rng.integers(0, model.n_classes, size=n)
    elif model.n_outputs == 1:
        y = 2.0 * rng.normal(size=n)
    else:
        y = 2.0 * rng.normal(size=(n, model.n_outputs))
    params = (0.5 * rng.normal(size=model.n_params)).astype(dtype)
    return params, X, y


@pytest.fixture(params=sorted(MODEL_CASES))
def model(request):
    return MODEL_CASES[request.param]()


@pytest.fixture(scope="session", autouse=True)
def _compiled_once_per_dtype():
    """After the last test of this process (of each pytest-xdist worker): no kernel was
    compiled twice for one dtype by anything the tests called."""
    yield
    from .specializations import assert_compiled_once

    assert_compiled_once()
