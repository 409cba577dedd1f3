"""A round's phases, written down once, and the executors that run them.

    select -> train -> transform each update -> aggregate -> server step -> evaluate -> checkpoint

The server (:class:`fastmb.Simulation`) selects the round's clients into a :class:`RoundTask`,
steps its optimizer, evaluates and checkpoints. An :class:`Executor` does the middle: it
trains the clients in fixed shards, runs each shard's transforms where its updates are, and
aggregates as the rule needs (:mod:`fastmb.aggregate.rules`):

* ``weighted_sum`` (FedAvg): each shard's partial float64 sum, merged pairwise in a fixed
  tree, so the bits do not depend on where the shards ran;
* ``coordinates`` (median, trimmed mean): blocks of coordinates aggregated apart, after one
  mask of the updates with NaN or Inf;
* ``all_updates``: the whole stack of updates, gathered.

The transform phase turns each shard's trained parameters into updates (``trained -
params``; a client whose training diverged sends NaN and is rejected), then applies the
task's transforms in order, on the executor: the simulated attack first, then any the
caller plugged in (a compression round trip), then, with secure aggregation, the masking
(:mod:`fastmb.secure.engine`: the shard becomes masked integer vectors, summed modulo
``2**bits`` shard by shard, and the server unmasks the total). A transform is a picklable
callable ``transform(updates, client_ids, round_seed)`` that returns the shard's updates
(it may write them in place).

An executor provides four primitives, the subset of Dask's client API the phases use:
``scatter`` (send data once), ``submit`` (run a function, maybe elsewhere), ``gather``
(bring results back) and ``close``. The phases are written in terms of them, so an executor
implements those four and inherits the rest: :class:`LocalExecutor` runs everything in this
process, :class:`fastmb.adapters.dask.DaskExecutor` on a Dask cluster.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np

from ..aggregate import rules
from ..aggregate.mean import nonfinite_rows
from ..kernels import aggregation as KA
from ..secure.engine import masked_sum, merge_masked

ATTACKS = ("nan", "scale", "sign_flip")


@dataclasses.dataclass(frozen=True)
class Attack:
    """The simulated attack, a transform: the malicious clients of a round corrupt their
    updates (``nan``: every coordinate NaN; ``scale``: times ``scale``; ``sign_flip``: times
    ``-scale``)."""

    kind: str
    scale: float
    malicious: np.ndarray  # the malicious client ids (sorted)

    def __call__(self, D, ids, seed):
        attack = np.isin(ids, self.malicious) if self.malicious.size else None
        if attack is None or not attack.any():
            return D
        if self.kind == "nan":
            D[attack] = np.nan
        else:
            f = self.scale if self.kind == "scale" else -self.scale
            D[attack] *= np.float32(f).astype(D.dtype)
        return D


@dataclasses.dataclass
class RoundTask:
    """What the server sends out in one round (and an executor's workers receive in part)."""

    params: np.ndarray
    seed: np.uint64
    ids: np.ndarray
    epochs: np.ndarray
    steps: np.ndarray
    weights: np.ndarray
    shard_size: int
    transforms: tuple = ()
    #: A :class:`fastmb.secure.engine.SecureRound` (the server's side of secure
    #: aggregation; it stays here): the shards are then masked, summed modulo 2**bits.
    secure: object = None

    def shards(self):
        """The fixed client shards of the round: ``[(lo, hi), ...]``."""
        return shard_bounds(self.ids.shape[0], self.shard_size)

    def shard(self, lo, hi):
        """The per-client arrays of clients ``lo:hi``, as :func:`train_shard` takes them."""
        return (self.seed, self.ids[lo:hi], self.epochs[lo:hi], self.steps[lo:hi],
                self.transforms)


# ---------------------------------------------------------------- the phases' work
# Module-level functions: an executor's worker runs exactly these on its shard.


def transform(out, bad, params, ids, seed, transforms):
    """The transform phase of one shard, in place on ``out``: updates ``trained - params``,
    NaN for a client whose training diverged (``bad >= 0``), then each transform."""
    out -= params
    out[bad >= 0] = np.nan
    for t in transforms:
        out = t(out, ids, seed)
    return out


def train_shard(plan, params, seed, ids, epochs, steps, transforms):
    """Train one shard of clients and transform their updates: the shard's (k, P) stack."""
    out, bad = plan.run(params, ids, epochs, steps, seed)
    return transform(out, bad, params, ids, seed, transforms)


def shard_sum(D, weights, ids):
    """A shard's partial FedAvg sum: ``(float64 sum, weight, rejected client ids)``.

    Updates with NaN or Inf are rejected: their rows (the round's own buffer) are zeroed
    and weighted 0, so the sum adds exact zeros in their place; the clients are summed in
    the fixed order of ``kernels.aggregation``, the same bits wherever this runs."""
    bad = nonfinite_rows(D)
    w = np.ascontiguousarray(weights, np.float64)
    if bad.any():
        D[bad] = 0
        w = np.where(bad, 0.0, w)
    total = np.empty((1, D.shape[1]), np.float64)
    KA.shard_sums(D, w, D.shape[0], total)
    return total[0], float(w.sum()), ids[bad]


def merge_means(a, b):
    """A tree node: partial sums ``a`` and ``b`` (``(sum, weight, rejected ids)``) added into
    a new partial; the inputs are left as they are (Dask may hand them to a retry)."""
    return a[0] + b[0], a[1] + b[1], np.concatenate([a[2], b[2]])


def tree_reduce(parts, merge):
    """Merge ``parts`` pairwise, level by level: a fixed tree for a given number of parts."""
    parts = list(parts)
    while len(parts) > 1:
        nxt = [merge(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def shard_bounds(K, shard_size):
    """Boundaries of the fixed client shards of a round: ``[(lo, hi), ...]``."""
    return [(lo, min(K, lo + shard_size)) for lo in range(0, K, shard_size)]


def columns(D, bounds):
    """The coordinate blocks ``bounds`` of a shard's updates, each contiguous."""
    return tuple(np.ascontiguousarray(D[:, lo:hi]) for lo, hi in bounds)


def block_rule(name, opts, blocks, keeps, weights):
    """A coordinate-wise rule on one block of coordinates of every shard (their finite rows)."""
    U = np.concatenate([b[k] for b, k in zip(blocks, keeps)])
    agg, _, _ = rules.apply(name, opts, U, weights)
    return agg


# ---------------------------------------------------------------- executors


class Executor:
    """The executor protocol: where a round's shards of clients train and aggregate.

    Subclasses implement the primitives :meth:`scatter`, :meth:`submit`, :meth:`gather` and
    :meth:`close` (these defaults run in this process); the phases :meth:`train` and
    :meth:`aggregate` are written once in terms of them.
    """

    #: Coordinates per block for the coordinate-wise rules (None: the whole stack at once).
    block_size = None

    # -- primitives --------------------------------------------------------
    def scatter(self, obj):
        """``obj`` where every worker can use it (a handle to pass to :meth:`submit`)."""
        return obj

    def submit(self, fn, *args):
        """``fn(*args)``, maybe on a worker; arguments may be handles. Returns a handle."""
        return fn(*args)

    def gather(self, handles):
        """The values behind ``handles`` (a list), here."""
        return list(handles)

    def close(self):
        pass

    def describe(self):
        return "this process"

    # -- phases ------------------------------------------------------------
    def prepare(self, plan):
        """Send the training plan (data, partition, options) once, before the first round."""
        self.plan = self.scatter(plan)

    def train(self, task):
        """Train and transform: one handle per shard of :meth:`RoundTask.shards`."""
        params = self.scatter(task.params)
        return [self.submit(train_shard, self.plan, params, *task.shard(lo, hi))
                for lo, hi in task.shards()]

    def aggregate(self, name, opts, task, shards, state=None):
        """``(delta, used, rejected)`` of the rule ``name`` on the round's shards; ``used``
        and ``rejected`` are client ids. The delta is None when nothing usable came back."""
        rule = rules.get(name)
        ids = task.ids
        if task.secure is not None:
            parts = [self.submit(masked_sum, h) for h in shards]
            root = tree_reduce(parts, lambda a, b: self.submit(merge_masked, a, b))
            total, sent = self.gather([root])[0]
            return task.secure.finish(total, sent, ids)
        if rule.needs == rules.WEIGHTED_SUM:
            parts = [self.submit(shard_sum, h, task.weights[lo:hi], ids[lo:hi])
                     for h, (lo, hi) in zip(shards, task.shards())]
            root = tree_reduce(parts, lambda a, b: self.submit(merge_means, a, b))
            total, weight, rejected = self.gather([root])[0]
            rejected = np.sort(rejected)
            used = ids[~np.isin(ids, rejected)] if rejected.size else ids
            return (total / weight if weight > 0 else None), used, rejected
        if rule.needs == rules.COORDINATES and self.block_size is not None:
            return self._coordinate_blocks(name, opts, task, shards)
        D = np.concatenate(self.gather(shards))
        delta, u_idx, r_idx = rules.apply(name, opts, D, task.weights, state)
        return delta, ids[u_idx], ids[r_idx]

    def _coordinate_blocks(self, name, opts, task, shards):
        """A coordinate-wise rule by blocks: block j of every shard to one task, after one
        mask of the non-finite updates; no process holds the whole stack."""
        bad = np.concatenate(self.gather([self.submit(nonfinite_rows, h) for h in shards]))
        ids = task.ids
        if bad.all():
            return None, ids[:0], ids
        P = task.params.shape[0]
        bounds = [(lo, min(P, lo + self.block_size)) for lo in range(0, P, self.block_size)]
        cols = [self.submit(columns, h, bounds) for h in shards]
        keeps = [~bad[lo:hi] for lo, hi in task.shards()]
        blocks = []
        for j in range(len(bounds)):
            parts = [self.submit(operator.getitem, c, j) for c in cols]
            blocks.append(self.submit(block_rule, name, opts, parts, keeps,
                                      task.weights[~bad]))
        delta = np.concatenate(self.gather(blocks))
        return delta, ids[~bad], ids[bad]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """Every round in this process; one kernel call trains all of a round's clients (the
    shards are then views of its result, so each shard's work is what it would be alone)."""

    def train(self, task):
        out, bad = self.plan.run(task.params, task.ids, task.epochs, task.steps, task.seed)
        D = transform(out, bad, task.params, task.ids, task.seed, task.transforms)
        return [D[lo:hi] for lo, hi in task.shards()]
