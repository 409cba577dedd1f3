"""The package's shape, checked: one direction of imports, and a light ``import fastmb``.

The layers, lowest first (``../shared/DESIGN.md``, "Layers, one direction"); a module
imports from its own layer or below, never above:

    kernels                          plain arrays in, arrays out (installed as fastmb.kernels)
    _validation, models              checks; model descriptions
    _cuda                            host side of kernels/cuda
    _device                          picks and feeds the backend
    learn                            gradients, training, options
    compress                         sparse, quantize, wire formats
    aggregate                        mean, rules registry, robust, server, fedbuff
    privacy, secure, slicing         what a round may add
    federation                       simulation, rounds, partitions, data
    cli, adapters, the package       what other programs and people call

Imports are read from the source (module level and inside functions alike). An import
inside a function is allowed only for an optional dependency (numba.cuda and the CUDA
kernels, scikit-learn, matplotlib, tqdm, filelock, TOML, Dask, dp-accounting, PyTorch,
Flower, cryptography, and Opacus and JAX as benchmark peers): never to dodge a cycle.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [
    {"kernels"},
    {"_validation", "models"},
    {"_cuda"},
    {"_device"},
    {"learn"},
    {"compress"},
    {"aggregate"},
    {"privacy", "secure", "slicing"},
    {"federation"},
    {"cli", "adapters", "distributed", "torch", "sklearn", "flower", "flower_legacy", "__init__",
     "__main__"},
]
# (fastmb.adapters.sklearn and .flower import their library at their top: their classes
# subclass the library's; whoever uses them without the extra imports them lazily)
OPTIONAL = ("numba.cuda", "fastmb.kernels.cuda", "sklearn", "matplotlib", "tqdm", "filelock",
            "tomllib", "tomli", "dask", "distributed", "dp_accounting", "torch", "flwr",
            "cryptography", "scipy", "opacus", "jax", "fastmb.adapters.sklearn",
            "fastmb.adapters.flower", "fastmb.adapters.flower_legacy")


def _layer(module):
    """Layer index of a dotted module name inside fastmb."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _sources():
    """``(dotted module name, path, is_package)`` for every module of fastmb and its kernels."""
    for top, dotted in (("fastmb", "fastmb"), ("kernels", "fastmb.kernels")):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            rel = os.path.relpath(folder, os.path.join(ROOT, top))
            pkg = dotted if rel == "." else dotted + "." + rel.replace(os.sep, ".")
            for f in files:
                if f.endswith(".py"):
                    name = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                    yield name, os.path.join(folder, f), f == "__init__.py"


def _imports(name, path, is_package):
    """``(target module, line, inside a function)`` of every import statement."""
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    package = name if is_package else name.rsplit(".", 1)[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                targets = [f"{base}.{a.name}" for a in child.names]
                found.extend((t, child.lineno, in_function) for t in targets)
            visit(child, nested)

    visit(tree, False)
    return found


SOURCES = sorted(_sources())


def test_every_module_has_a_layer():
    for name, _, _ in SOURCES:
        _layer(name)


@pytest.mark.parametrize("name,path,is_package", SOURCES, ids=[s[0] for s in SOURCES])
def test_imports_go_one_way(name, path, is_package):
    own = _layer(name)
    for target, line, in_function in _imports(name, path, is_package):
        if in_function:
            assert target.startswith(OPTIONAL), (
                f"{path}:{line} imports {target} inside a function; only optional dependencies "
                "may be imported lazily")
        if target == "fastmb" or target.startswith("fastmb."):
            assert _layer(target) <= own, (
                f"{path}:{line}: {name} (layer {own}) imports {target} (layer "
                f"{_layer(target)}), a layer above it")


def test_import_fastmb_is_light():
    code = ("import sys, fastmb\n"
            "heavy = [m for m in ('numba', 'scipy', 'sklearn', 'matplotlib', 'fastmb.learn',\n"
            "                     'fastmb.federation') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "fastmb.Linear(3)\n"
            "assert 'numba' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stderr


def test_ruff_is_clean():
    """The lint configuration in pyproject.toml holds for the whole tree."""
    res = subprocess.run([sys.executable, "-m", "ruff", "check", ROOT], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
