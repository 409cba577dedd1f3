"""One compiled specialization per dtype, for the input forms a user passes.

The public calls run here with read-only and Fortran-ordered arrays, lists and other
integer dtypes. Every form is normalised at the API boundary, so each kernel compiles once
per float dtype: a second specialization would cost a cold start its compile time again.
The same check over everything the suite compiled runs at the end of each pytest process
(`conftest.py`, `tests/specializations.py`).
"""

import numpy as np

import fastmb

from .conftest import make_data
from .specializations import assert_compiled_once


def _variants(a):
    """The forms of one array a user may pass: as is, read-only, Fortran order, a list."""
    ro = a.copy()
    ro.flags.writeable = False
    yield a
    yield ro
    yield np.asfortranarray(a)
    yield a.tolist()


def test_input_forms_compile_once():
    for model in (fastmb.Linear(5, loss="logistic"), fastmb.MLP([5, 6, 3])):
        params, X, y = make_data(model, 24, dtype=np.float32)
        for Xv in _variants(X):
            for yv in (y, y.astype(np.int32), list(y)):
                fastmb.loss(model, params, Xv, yv)
                fastmb.grad(model, params, Xv, yv)
                fastmb.per_sample_grad(model, params, Xv, yv)
                fastmb.predict(model, params, Xv)
                fastmb.train_clients(model, params, Xv, yv, np.array([0, 12, 24], np.int32),
                                     rows=np.arange(24, dtype=np.int32), epochs=1)
                fastmb.train_clients(model, params, Xv, yv, [0, 12, 24], epochs=1)
        part = fastmb.partition.iid(24, 2, seed=0)
        fastmb.train_clients(model, params, X, y, part.offsets, rows=part.rows)
    U = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32)
    for Uv in _variants(U):
        fastmb.fedavg(Uv, weights=[1, 2, 3, 4, 5, 6])
        fastmb.fedavg(Uv, weights=np.arange(1.0, 7.0, dtype=np.float32))
        fastmb.coordinate_median(Uv)
        fastmb.trimmed_mean(Uv, 0.2)
    assert_compiled_once()
