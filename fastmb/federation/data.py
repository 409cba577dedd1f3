"""Data sets for simulations: scikit-learn's digits, a synthetic set of any size, your files.

Each loader returns a :class:`Dataset` with a training and a held-out test split, in
float32, labels as int64 class indices (classification) or float64 (regression).
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

from .. import _validation as V

#: Largest ``n_classes`` of :func:`synthetic`: each row draws that many Gumbel values.
MAX_SYNTHETIC_CLASSES = 10_000
TASKS = ("auto", "classification", "regression")


class Dataset(NamedTuple):
    """A training split and a held-out test split."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    name: str

    @property
    def n_classes(self):
        """Number of classes, or None for regression targets."""
        if self.y.dtype.kind not in "iu":
            return None
        return int(max(self.y.max(), self.y_test.max() if self.y_test.size else 0)) + 1

    def __repr__(self):
        kind = f"{self.n_classes} classes" if self.n_classes else "regression"
        return (f"Dataset({self.name!r}: {self.X.shape[0]} train + {self.X_test.shape[0]} test "
                f"rows, {self.X.shape[1]} features, {kind})")


def _digits_file():
    """scikit-learn's digits as ``(pixels, labels)``, float64 as ``load_digits`` gives them.

    The file ships inside scikit-learn (``sklearn/datasets/data/digits.csv.gz``, one image
    a row, its label last): it is read directly, as ``load_digits`` reads it, because
    importing scikit-learn costs over a second, most of a warm ``fastmb simulate``. An
    installation laid out otherwise falls back to ``load_digits``.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package, imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the digits data set comes with scikit-learn: "
                          "pip install 'fastmb[sim]'")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                        "digits.csv.gz")
    if os.path.isfile(path):
        data = np.loadtxt(path, delimiter=",")
        return data[:, :-1], data[:, -1]
    from sklearn.datasets import load_digits  # pragma: no cover - another layout

    d = load_digits()  # pragma: no cover
    return d.data, d.target  # pragma: no cover


def digits(test_size=297, *, shuffle=True, seed=0):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes; no download).

    Pixels scaled to [0, 1] (divided by 16). ``test_size`` rows are held out: a random
    choice (``shuffle``, from ``seed``), or the last rows in file order with
    ``shuffle=False`` (rows 0-1499 train, 1500-1796 test: the split of the Flower
    comparison in ``benchmarks/flower_comparison.py``; those last images come from
    writers absent from the first rows, so accuracy there runs a few points lower).

    Examples
    --------
    >>> import fastmb
    >>> fastmb.data.digits()
    Dataset('digits': 1500 train + 297 test rows, 64 features, 10 classes)
    """
    test_size = V.check_number("test_size", test_size, low=1, high=1796, integer=True)
    pixels, target = _digits_file()
    X = (pixels / 16.0).astype(np.float32)
    y = target.astype(np.int64)
    if shuffle:
        perm = np.random.default_rng(V.check_number("seed", seed, low=0, integer=True))
        perm = perm.permutation(X.shape[0])
        X, y = X[perm], y[perm]
    n = X.shape[0] - test_size
    return Dataset(X[:n], y[:n], X[n:], y[n:], "digits")


def synthetic(n=100_000, n_features=64, n_classes=10, *, n_test=None, noise=1.0, seed=0):
    """A classification set of any size: Gaussian features, labels from a linear teacher.

    ``X ~ N(0, 1)``, ``y = argmax(X W / sqrt(d) * 3 + noise * Gumbel)`` with a random teacher
    ``W``: softmax regression can learn it, and ``noise`` sets how well (at the default,
    64 features and 10 classes, the teacher itself labels 66% of the rows right: the
    best accuracy any model can reach). ``n_test`` extra rows (default ``min(n // 10, 10_000)``)
    form the test split. Generated in blocks of float32, so a 1,000,000 x 64 set takes
    256 MB and about a second. At most 10,000 classes (each row draws ``n_classes`` Gumbel
    values) and no more classes than rows.

    Examples
    --------
    >>> import fastmb
    >>> fastmb.data.synthetic(1000, 8, 3)
    Dataset('synthetic': 1000 train + 100 test rows, 8 features, 3 classes)
    """
    n = V.check_number("n", n, low=1, integer=True)
    d = V.check_number("n_features", n_features, low=1, integer=True)
    C = V.check_number("n_classes", n_classes, low=2, high=MAX_SYNTHETIC_CLASSES, integer=True)
    if n < C:
        raise ValueError(f"n_classes={C} is more than the n={n} rows: most classes would have "
                         "no example")
    noise = V.check_number("noise", noise, low=0, high=1e6)  # beyond it, labels are noise
    n_test = (min(max(n // 10, 1), 10_000) if n_test is None
              else V.check_number("n_test", n_test, low=0, integer=True))
    rng = np.random.default_rng(V.check_number("seed", seed, low=0, integer=True))
    W = (rng.standard_normal((d, C)) * (3.0 / np.sqrt(d))).astype(np.float32)
    total = n + n_test
    X = np.empty((total, d), np.float32)
    y = np.empty(total, np.int64)
    step = max(1, min(1 << 16, (1 << 22) // C))  # a block's logits stay within 16 MiB
    for lo in range(0, total, step):
        hi = min(total, lo + step)
        X[lo:hi] = rng.standard_normal((hi - lo, d), dtype=np.float32)
        logits = X[lo:hi] @ W
        if noise:
            logits += noise * rng.gumbel(size=logits.shape).astype(np.float32)
        y[lo:hi] = logits.argmax(1)
    return Dataset(X[:n], y[:n], X[n:], y[n:], "synthetic")


def _labels(y, task, n_rows, name):
    """Labels for ``task``: int64 class indices 0..C-1 or float64 regression targets.

    ``"auto"`` takes integer-valued labels for class indices and anything else for
    regression targets; integer-valued labels that cannot be class indices (a negative
    one, or more classes than rows, as a stray 10**9 makes) are an error that asks for
    an explicit task, never a silent switch to regression.
    """
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name}: labels must be numbers, got dtype {y.dtype}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name}: labels contain NaN or Inf")
    if task == "regression":
        return y.astype(np.float64)
    integral = y.dtype.kind in "biu" or np.array_equal(y, np.round(y))
    if task == "auto" and not integral:
        return y.astype(np.float64)
    if not integral:
        raise ValueError(f"{name}: task='classification' needs integer class labels, got "
                         f"non-integer values")
    lo, hi = (int(y.min()), int(y.max())) if y.size else (0, 0)
    if lo < 0 or hi >= n_rows:
        why = (f"include {lo}" if lo < 0 else
               f"reach {hi} with only {n_rows} rows (more classes than examples)")
        hint = ("relabel them as 0..C-1 (np.unique(y, return_inverse=True))"
                + (", or pass task='regression' to fit them as numbers" if task == "auto" else ""))
        raise ValueError(f"{name}: the labels look like class indices but {why}; class labels "
                         f"must be 0..C-1: {hint}")
    return y.astype(np.int64)


def load(path, *, test_fraction=0.2, seed=0, task="auto"):
    """Load your own data: ``.npz`` (arrays ``X``, ``y``, optional ``X_test``, ``y_test``),
    ``.npy`` or ``.csv`` (one row per sample, the label in the last column), or a sparse
    matrix saved with ``scipy.sparse.save_npz`` (the label in its last column; ``X`` stays
    sparse, as CSR float32).

    Without a stored test split, a random ``test_fraction`` of the rows is held out.
    ``task="auto"`` reads integer-valued labels as class indices 0..C-1 (classification)
    and others as regression targets; integer-valued labels that cannot be class indices
    (negative, or more classes than rows) raise and ask for ``task="regression"`` or a
    relabelling. CSV may have one header line.

    Examples
    --------
    >>> import numpy as np, fastmb, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "mine.npz")
    >>> np.savez(path, X=np.random.rand(50, 3), y=np.arange(50) % 2)
    >>> fastmb.data.load(path)
    Dataset('mine.npz': 40 train + 10 test rows, 3 features, 2 classes)
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist (expected .npz, .npy or "
                                f".csv)")
    try:
        return _load(path, name, test_fraction, seed, task)
    # Truncated or not what it says. Found by fuzzing: a zip header naming an unknown
    # version raises NotImplementedError, one flagged as encrypted RuntimeError, a broken
    # deflate stream zlib.error.
    except (OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
            zlib.error) as exc:
        raise ValueError(f"data file {name!r} could not be read: {exc}") from None


def _load(path, name, test_fraction, seed, task):
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if {"format", "shape", "data", "indices", "indptr"} <= set(z.files):
                return _load_sparse(path, name, test_fraction, seed, task)
            missing = [k for k in ("X", "y") if k not in z.files]
            if missing:
                raise ValueError(f"{name} must hold arrays named 'X' and 'y' (and optionally "
                                 f"'X_test', 'y_test'); it has {sorted(z.files)}")
            X, y = z["X"], z["y"]
            if "X_test" in z.files and "y_test" in z.files:
                return _finish(X, y, z["X_test"], z["y_test"], name, task)
    elif ext in (".npy", ".csv"):
        A = np.load(path, allow_pickle=False) if ext == ".npy" else _read_csv(path)
        if A.ndim != 2 or A.shape[1] < 2:
            raise ValueError(f"{name} must be a 2-D table with the label in the last column, "
                             f"got shape {A.shape}")
        X, y = A[:, :-1], A[:, -1]
    else:
        raise ValueError(f"data file {name!r}: unknown format {ext!r}; expected .npz, .npy or "
                         f".csv")
    X = np.asarray(X)
    return _split(X, np.asarray(y), name, test_fraction, seed, task)


def _load_sparse(path, name, test_fraction, seed, task):
    """A ``scipy.sparse.save_npz`` matrix whose last column holds the labels."""
    import scipy.sparse

    try:
        M = scipy.sparse.load_npz(path).tocsr()
    except ValueError as exc:
        raise ValueError(f"data file {name!r} is not a readable sparse matrix: {exc}") from None
    if M.ndim != 2 or M.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-D sparse matrix with the label in the last "
                         f"column, got shape {M.shape}")
    y = M[:, [M.shape[1] - 1]].toarray().ravel()
    return _split(M[:, :-1], y, name, test_fraction, seed, task)


def _split(X, y, name, test_fraction, seed, task):
    """Hold out a random ``test_fraction`` of the rows as the test split."""
    n = X.shape[0] if X.ndim else 0
    frac = V.check_number("test_fraction", test_fraction, low=0, high=1)
    n_test = round(frac * n)
    if n - n_test < 1:
        raise ValueError(f"{name} has {n} rows: too few to hold out test_fraction={frac}")
    perm = np.random.default_rng(V.check_number("seed", seed, low=0, integer=True)).permutation(n)
    tr, te = perm[:n - n_test], perm[n - n_test:]
    return _finish(X[tr], y[tr], X[te], y[te], name, task)


def _read_csv(path):
    with open(path) as fh:
        first = fh.readline()
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1
    try:
        return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{os.path.basename(path)}: could not read a numeric CSV table "
                         f"({exc})") from None


def _finish(X, y, X_test, y_test, name, task):
    """Check both splits and convert X to float32: C-ordered arrays, or CSR matrices when
    either split is sparse (the checks then read the stored values)."""
    if V.is_sparse(X) or V.is_sparse(X_test):
        import scipy.sparse

        X, X_test = scipy.sparse.csr_matrix(X), scipy.sparse.csr_matrix(X_test)
    else:
        X, X_test = np.asarray(X), np.asarray(X_test)
    if X.ndim != 2 or X_test.ndim != 2 or X.shape[1] != X_test.shape[1]:
        raise ValueError(f"{name}: X and X_test must be 2-D with the same number of columns, "
                         f"got {X.shape} and {X_test.shape}")
    y, y_test = np.asarray(y), np.asarray(y_test)
    if y.shape != (X.shape[0],) or y_test.shape != (X_test.shape[0],):
        raise ValueError(f"{name}: y must hold one label per row of X")
    X, X_test = _float32(X, "X", name), _float32(X_test, "X_test", name)
    both = _labels(np.concatenate([y, y_test]), task, y.shape[0] + y_test.shape[0], name)
    return Dataset(X, both[:y.shape[0]], X_test, both[y.shape[0]:], name)


def _float32(a, what, name):
    """``a`` (an array or a CSR matrix) as float32, its values finite before and after."""
    sparse = V.is_sparse(a)
    values = a.data if sparse else a
    if values.dtype.kind not in "biuf" or not np.isfinite(values).all():
        raise ValueError(f"{name}: {what} must be finite numbers")
    with np.errstate(over="ignore"):  # beyond float32 becomes Inf: refused just below
        a = a.astype(np.float32) if sparse else np.ascontiguousarray(a, np.float32)
    if not np.isfinite(a.data if sparse else a).all():
        raise ValueError(f"{name}: {what} holds values beyond the float32 range (3.4e38)")
    return a
