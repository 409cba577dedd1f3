"""Partitions of a data set among simulated clients: IID, Dirichlet label skew, quantity skew.

A :class:`Partition` is a permutation of the row indices plus client offsets: client k
owns rows ``rows[offsets[k]:offsets[k+1]]``. :func:`fastmb.train_clients` reads the rows
through the permutation (``rows=``), so a simulation never copies a client's data.
Every partition is drawn from ``np.random.default_rng(seed)``: the same seed gives the
same partition on every machine.
"""

from __future__ import annotations

import numpy as np

from .. import _validation as V


class Partition:
    """Client k owns rows ``rows[offsets[k]:offsets[k+1]]`` of the data.

    Parameters
    ----------
    rows : (n,) integers
        Row indices (a permutation of ``range(n)``, or of a subset of the rows).
    offsets : (n_clients + 1,) increasing integers from 0 to ``len(rows)``
        Every client owns at least one row.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> part = fastmb.partition.iid(10, 3, seed=0)
    >>> part.sizes
    array([4, 3, 3])
    >>> sorted(np.concatenate([part.client_rows(k) for k in range(3)]).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """

    __slots__ = ("offsets", "rows")

    def __init__(self, rows, offsets):
        r = V._as_numeric("rows", rows)
        o = V._as_numeric("offsets", offsets)
        if r.ndim != 1 or r.dtype.kind not in "iu":
            raise ValueError(f"rows must be a 1-D integer array, got {r.dtype} of shape {r.shape}")
        if o.ndim != 1 or o.shape[0] < 2 or o.dtype.kind not in "iu":
            raise ValueError(f"offsets must be a 1-D integer array of n_clients + 1 >= 2 "
                             f"entries, got {o.dtype} of shape {o.shape}")
        # Range-checked before any cast to int64 (a uint64 row above 2**63 would wrap to a
        # negative index), offsets compared pairwise (a difference of uint64 wraps too).
        self.rows = V.as_index_array("rows", r, high=V.INT64_MAX + 1)
        n = self.rows.shape[0]
        if o[0] != 0 or o[-1] != n:
            raise ValueError(f"offsets must run from 0 to len(rows) = {n}, got {o[0]}..{o[-1]}")
        down = np.flatnonzero(o[1:] <= o[:-1])
        if down.size:
            k = int(down[0])
            raise ValueError(f"every client must own at least one row; client {k} owns none "
                             f"(offsets {o[k]}..{o[k + 1]})")
        self.offsets = np.ascontiguousarray(o, np.int64)  # in [0, n]: the cast is exact
        self.rows.setflags(write=False)
        self.offsets.setflags(write=False)

    def __repr__(self):
        s = self.sizes
        return (f"Partition(n_clients={self.n_clients}, n_rows={self.rows.shape[0]}, "
                f"sizes {s.min()}..{s.max()})")

    @property
    def n_clients(self):
        return self.offsets.shape[0] - 1

    @property
    def sizes(self):
        """(n_clients,) number of rows of each client."""
        return np.diff(self.offsets)

    def client_rows(self, k):
        """Row indices of client ``k`` (a read-only view)."""
        k = V.check_number("k", k, low=0, high=self.n_clients - 1, integer=True)
        return self.rows[self.offsets[k]:self.offsets[k + 1]]

    def label_counts(self, y, n_classes=None):
        """(n_clients, n_classes) counts of each label per client (to inspect the skew)."""
        y = _class_labels(y)
        if self.rows.size and self.rows.max() >= y.shape[0]:
            raise ValueError(f"the partition refers to row {self.rows.max()} but y has "
                             f"{y.shape[0]} labels")
        top = int(y.max()) + 1 if y.size else 0
        C = top if n_classes is None else V.check_number("n_classes", n_classes, low=top,
                                                         high=2**24, integer=True)
        if C > 2**24:
            raise ValueError(f"y holds a label {top - 1}: more than 2**24 classes to count")
        client = np.repeat(np.arange(self.n_clients), self.sizes)
        counts = np.zeros((self.n_clients, C), np.int64)
        np.add.at(counts, (client, y[self.rows]), 1)
        return counts

    def state_dict(self):
        return {"rows": self.rows.copy(), "offsets": self.offsets.copy()}

    @classmethod
    def from_state_dict(cls, state):
        """Rebuild a partition from :meth:`state_dict`, through the checked constructor."""
        if not isinstance(state, dict) or set(state) != {"rows", "offsets"}:
            raise ValueError("state must be a dict with keys 'offsets' and 'rows'")
        return cls(state["rows"], state["offsets"])


def _class_labels(y):
    """``y`` as a 1-D int64 array of non-negative class indices."""
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise ValueError("y must be a 1-D array of non-negative class indices (the Dirichlet "
                         "partition skews labels; use iid or quantity_skew for regression)")
    return V.as_index_array("y", y, high=V.INT64_MAX + 1)


#: Proportions drawn per Dirichlet draw (classes present x clients) above which a draw is
#: too slow to repeat and the class labels are almost certainly wrong.
MAX_PROPORTIONS = 2**24


def _check_split(n, n_clients, min_size=1):
    n = V.check_number("n", n, low=1, integer=True)
    n_clients = V.check_number("n_clients", n_clients, low=1, integer=True)
    min_size = V.check_number("min_size", min_size, low=1, integer=True)
    if n < n_clients * min_size:
        raise ValueError(f"n_clients={n_clients} clients of at least min_size={min_size} rows "
                         f"need {n_clients * min_size} rows; the data has {n}")
    return n, n_clients, min_size


def iid(n, n_clients, seed=0):
    """Shuffle ``n`` rows and deal them into ``n_clients`` nearly equal shares.

    The rows are ``np.random.default_rng(seed).permutation(n)``, split as
    ``np.array_split`` splits: the first ``n % n_clients`` clients get one row more.

    Examples
    --------
    >>> import fastmb
    >>> fastmb.partition.iid(1500, 100, seed=0).sizes[:3]
    array([15, 15, 15])
    """
    n, n_clients, _ = _check_split(n, n_clients)
    rows = np.random.default_rng(_seed(seed)).permutation(n)
    base, extra = divmod(n, n_clients)
    sizes = np.full(n_clients, base, np.int64)
    sizes[:extra] += 1
    return Partition(rows, np.concatenate([[0], np.cumsum(sizes)]))


def _alpha(alpha):
    """A Dirichlet concentration in [1e-4, 1e6]: outside it the draws degenerate in float64
    (Gamma draws that underflow to 0 or overflow), and the proportions would be NaN."""
    return V.check_number("alpha", alpha, low=1e-4, high=1e6)


def _seed(seed):
    return V.check_number("seed", seed, low=0, integer=True)


def dirichlet(y, n_clients, alpha=0.5, seed=0, min_size=1, max_tries=1000):
    """Label skew: each class is split among the clients by proportions drawn from Dir(alpha).

    The usual recipe of Hsu et al. (2019) and Li et al.'s NIID-Bench (2022): for every
    class c, draw ``p ~ Dirichlet(alpha * ones(n_clients))``, give no more rows to a
    client that already holds ``n / n_clients`` rows, and cut the class's shuffled rows
    at ``cumsum(p)``. Redrawn until every client holds at least ``min_size`` rows. Small
    ``alpha`` (0.1) gives each client few classes; large (100) is close to IID.

    Parameters
    ----------
    y : (n,) class indices
    n_clients : int
    alpha : float > 0, default 0.5
    seed : int, default 0
    min_size : int, default 1
    max_tries : int, default 1000
        Draws before giving up (then a ValueError suggests a larger alpha or fewer clients).

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> y = np.repeat(np.arange(10), 100)
    >>> part = fastmb.partition.dirichlet(y, 20, alpha=0.1, seed=0)
    >>> int(part.sizes.sum()), bool((part.label_counts(y) > 0).sum(1).mean() < 5)
    (1000, True)
    """
    y = _class_labels(y)
    n, n_clients, min_size = _check_split(y.shape[0], n_clients, min_size)
    alpha = _alpha(alpha)
    max_tries = V.check_number("max_tries", max_tries, low=1, integer=True)
    # The rows of each class present, in ascending row order, classes in ascending order:
    # one stable sort, whatever the largest label (a stray label 10**9 is one more class,
    # not a billion empty ones).
    order = np.argsort(y, kind="stable")
    starts = np.flatnonzero(np.diff(y[order])) + 1
    by_class = np.split(order, starts)
    if len(by_class) * n_clients > MAX_PROPORTIONS:
        raise ValueError(f"y has {len(by_class)} classes: a Dirichlet split among {n_clients} "
                         f"clients draws {len(by_class) * n_clients:,} proportions a try (at "
                         f"most {MAX_PROPORTIONS:,}); check the labels, or use fewer clients, "
                         "or the iid or quantity partition")
    rng = np.random.default_rng(_seed(seed))
    cap = n / n_clients
    for _ in range(max_tries):
        owned = [[] for _ in range(n_clients)]
        counts = np.zeros(n_clients, np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(n_clients, alpha))
            p = p * (counts < cap)
            p = p / p.sum()
            cuts = (np.cumsum(p) * idx.size).astype(np.int64)[:-1]
            for k, part in enumerate(np.split(idx, cuts)):
                owned[k].append(part)
                counts[k] += part.size
        if counts.min() >= min_size:
            sizes = counts
            rows = np.concatenate([np.concatenate(o) for o in owned])
            return Partition(rows, np.concatenate([[0], np.cumsum(sizes)]))
    raise ValueError(f"no Dirichlet(alpha={alpha}) split of {n} rows gave all {n_clients} "
                     f"clients at least min_size={min_size} rows in {max_tries} draws; use a "
                     f"larger alpha, fewer clients or a smaller min_size")


def quantity_skew(n, n_clients, alpha=0.5, seed=0, min_size=1):
    """Quantity skew: IID rows, but client sizes in proportions drawn from Dir(alpha).

    Every client gets ``min_size`` rows, and the rest is shared by proportions
    ``p ~ Dirichlet(alpha * ones(n_clients))`` (largest remainders round the shares, so
    the sizes add up to ``n`` exactly). The rows are a random permutation.

    Examples
    --------
    >>> import fastmb
    >>> part = fastmb.partition.quantity_skew(10_000, 50, alpha=0.3, seed=0)
    >>> int(part.sizes.sum()), bool(part.sizes.max() > 5 * part.sizes.min())
    (10000, True)
    """
    n, n_clients, min_size = _check_split(n, n_clients, min_size)
    alpha = _alpha(alpha)
    rng = np.random.default_rng(_seed(seed))
    p = rng.dirichlet(np.full(n_clients, alpha))
    rest = n - n_clients * min_size
    share = p * rest
    sizes = np.floor(share).astype(np.int64)
    short = rest - int(sizes.sum())
    if short:
        sizes[np.argsort(-(share - sizes), kind="stable")[:short]] += 1
    sizes += min_size
    rows = rng.permutation(n)
    return Partition(rows, np.concatenate([[0], np.cumsum(sizes)]))


PARTITIONS = ("iid", "dirichlet", "quantity")


def make(kind, y, n_clients, *, alpha=0.5, seed=0, min_size=1):
    """Dispatch by name: ``"iid"``, ``"dirichlet"`` (label skew) or ``"quantity"`` (size skew)."""
    if kind == "iid":
        return iid(len(y), n_clients, seed=seed)
    if kind == "dirichlet":
        return dirichlet(y, n_clients, alpha=alpha, seed=seed, min_size=min_size)
    if kind == "quantity":
        return quantity_skew(len(y), n_clients, alpha=alpha, seed=seed, min_size=min_size)
    raise ValueError(f"partition must be one of {list(PARTITIONS)}, got {kind!r}")
