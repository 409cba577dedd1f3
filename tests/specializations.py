"""Which kernels this process compiled twice for one dtype.

`conftest.py` runs `assert_compiled_once` when a pytest process (or each pytest-xdist
worker) ends its session, so the check covers every kernel that process compiled, in
whatever order the tests ran.
"""

import importlib
import pkgutil
import re
from collections import defaultdict

from numba.core.registry import CPUDispatcher

import fastmb.kernels
from fastmb.kernels._jit import Parallel


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


def duplicates():
    """Kernels with two signatures that differ in something other than float types: the
    same float32/float64 at every place, so one of them was compiled for a layout, a
    read-only flag, an integer dtype or a literal that the API boundary should have made
    the same."""
    found = {}
    for name, disp in _kernels():
        by_floats = defaultdict(list)
        for sig in disp.signatures:
            text = str(sig)
            # a sparse input is a type of its own: its specialization is not a duplicate;
            # so are the arrays of secure aggregation's group, integers modulo 2**32 or
            # 2**64 (uint32/uint64, as floats are float32/float64)
            key = (*re.findall(r"float(?:32|64)", text), "SparseRow" in text,
                   *re.findall(r"Array\(uint(?:32|64)", text))
            by_floats[key].append(text)
        dups = [sigs for sigs in by_floats.values() if len(sigs) > 1]
        if dups:
            found[name] = dups
    return found


def assert_compiled_once():
    found = duplicates()
    lines = []
    for name, groups in found.items():
        for sigs in groups:
            lines.append(f"{name}:\n  " + "\n  ".join(sigs))
    assert not found, "compiled twice for one dtype:\n" + "\n".join(lines)
