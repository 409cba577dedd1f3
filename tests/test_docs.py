"""The examples in the public docstrings run and print what they say.

The public modules are discovered, not listed: every module of the package whose dotted
name has no part starting with an underscore (the kernels, the CUDA host code and the
command line are internal and left out). Each runs its doctests; each that defines a public
function or class must show at least one example.
"""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import fastmb

INTERNAL = ("fastmb.kernels", "fastmb.cli")


def _public_modules():
    names = []
    for info in pkgutil.walk_packages(fastmb.__path__, "fastmb."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or info.name.startswith(INTERNAL):
            continue
        names.append(info.name)
    return sorted(names)


def _defines_public_api(module):
    """True if the module defines (not just imports) a public function or class."""
    return any(inspect.isfunction(obj) or inspect.isclass(obj)
               for name, obj in vars(module).items()
               if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__)


MODULES = _public_modules()


def test_discovers_the_public_modules():
    assert {"fastmb.learn.gradients", "fastmb.learn.training", "fastmb.aggregate.mean",
            "fastmb.compress.quantize", "fastmb.federation.simulation"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if _defines_public_api(module) and not name.endswith((".wire", ".norms", ".rules",
                                                          ".rounds", ".options", ".dask")):
        assert result.attempted > 0, f"{name} defines public API but shows no example"
