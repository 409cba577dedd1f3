"""One compiled specialization per dtype: checked over every kernel this process compiled.

The file's name puts it last in the suite, so that it reads what the whole run compiled
(in this process); it also runs, on its own, the public calls with the input forms a user
passes (read-only and Fortran-ordered arrays, lists, other integer dtypes). Every form is
normalised at the API boundary, so each kernel compiles once per float dtype: a second
specialization would cost a cold start its compile time again.
"""

import importlib
import pkgutil
import re
from collections import defaultdict

import numpy as np
from numba.core.registry import CPUDispatcher

import fastmb
import fastmb.kernels
from fastmb.kernels._jit import Parallel

from .conftest import make_data


def _kernels():
    for info in pkgutil.iter_modules(fastmb.kernels.__path__):
        if info.ispkg:
            continue  # kernels/cuda: compiled for the device, not here
        mod = importlib.import_module(f"fastmb.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if getattr(obj, "__module__", None) != mod.__name__:
                continue  # imported from another module: listed there
            if isinstance(obj, CPUDispatcher):
                yield f"{info.name}.{name}", obj
            elif isinstance(obj, Parallel):
                yield f"{info.name}.{name}", obj.parallel
                yield f"{info.name}.{name} (serial)", obj.serial


def _duplicates():
    """Kernels with two signatures that differ in something other than float types: the
    same float32/float64 at every place, so one of them was compiled for a layout, a
    read-only flag, an integer dtype or a literal that the API boundary should have made
    the same."""
    found = {}
    for name, disp in _kernels():
        by_floats = defaultdict(list)
        for sig in disp.signatures:
            text = str(sig)
            by_floats[tuple(re.findall(r"float(?:32|64)", text))].append(text)
        dups = [sigs for sigs in by_floats.values() if len(sigs) > 1]
        if dups:
            found[name] = dups
    return found


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
    _assert_none()


def _assert_none():
    found = _duplicates()
    lines = []
    for name, groups in found.items():
        for sigs in groups:
            lines.append(f"{name}:\n  " + "\n  ".join(sigs))
    assert not found, "compiled twice for one dtype:\n" + "\n".join(lines)


def test_whole_suite_compiled_once_per_dtype():
    # What every earlier test of this process compiled (all of them, in a full run).
    _assert_none()
