"""The federation engine: simulated edge clients train locally, a server aggregates.

One round: sample clients, decide who drops out or straggles, train the rest in one
kernel call (:func:`fastmb.train_clients` reading each client's rows through the
partition's permutation), corrupt the malicious clients' updates, aggregate the updates
``u_k = p_k - params`` with FedAvg or a robust rule, step a server optimizer, evaluate on
the held-out set and record the round.

Reproducibility. Every random choice of round r (sampling, dropout, stragglers) comes
from ``np.random.default_rng([seed, r, tag])`` and every client's local shuffling from
``hash2(seed ^ r, client id)``: nothing depends on the rounds before except the
parameters and the server optimizer's state. A checkpoint therefore holds exactly those
(plus the history), and a run resumed from it ends bit-identical to one that never
stopped. FedAvg sums the clients in fixed shards of ``shard_size`` (in float64, in order)
merged in a fixed binary tree, so the result does not depend on how many processes or
threads trained the shards: :class:`fastmb.distributed.DaskExecutor` gives the same bits
as the single-process run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time

import numpy as np

from .. import _validation as V
from .. import privacy  # noqa: F401 - its central_dp rule joins the registry
from ..aggregate import rules
from ..aggregate.server import optimizer_options
from ..learn.gradients import Batch, evaluate_batch
from ..learn.options import MAX_STEPS, TrainOptions
from ..learn.training import check_steps, plan_training
from ..secure import SecAggConfig
from ..secure.engine import SecureRound
from .data import Dataset
from .partition import Partition
from .rounds import ATTACKS, Attack, LocalExecutor, RoundTask

_ROUND_TAG, _MALICIOUS_TAG, _SECURE_TAG = 0x5EED_0001, 0x5EED_0002, 0x5EED_0003
_CHECKPOINT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Faults:
    """What goes wrong at the edge, per round.

    Parameters
    ----------
    dropout : float in [0, 1), default 0
        Probability that a sampled client never reports back (it received the model; its
        update is lost).
    straggler : float in [0, 1], default 0
        Probability that a client that reports back ran out of time: it completed only
        ``straggler_work`` of its local steps (at least one).
    straggler_work : float in (0, 1], default 0.5
    malicious : float in [0, 1), default 0
        Fraction of all clients that are malicious (a fixed set, drawn from the seed);
        whenever sampled they send a corrupted update.
    attack : {"nan", "scale", "sign_flip"}, default "sign_flip"
        ``nan``: every coordinate NaN (a broken device); ``scale``: the honest update times
        ``attack_scale``; ``sign_flip``: times ``-attack_scale``.
    attack_scale : float > 0, default 4.0
    setup_dropout : float in [0, 1), default 0
        With secure aggregation: probability that a sampled client drops while keys are
        set up (after advertising its keys, before sending its shares; it does not train).
    unmask_dropout : float in [0, 1), default 0
        With secure aggregation: probability that a client that sent its masked update
        does not answer the unmasking request.
    """

    dropout: float = 0.0
    straggler: float = 0.0
    straggler_work: float = 0.5
    malicious: float = 0.0
    attack: str = "sign_flip"
    attack_scale: float = 4.0
    setup_dropout: float = 0.0
    unmask_dropout: float = 0.0

    def __post_init__(self):
        V.check_number("dropout", self.dropout, low=0, high=1)
        if self.dropout >= 1:
            raise ValueError("dropout must be < 1 (some client has to report back)")
        V.check_number("straggler", self.straggler, low=0, high=1)
        V.check_number("straggler_work", self.straggler_work, low=0, high=1, low_open=True)
        V.check_number("malicious", self.malicious, low=0, high=1)
        if self.malicious >= 1:
            raise ValueError("malicious must be < 1")
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {list(ATTACKS)}, got {self.attack!r}")
        V.check_number("attack_scale", self.attack_scale, low=0, low_open=True)
        for name in ("setup_dropout", "unmask_dropout"):
            if not V.check_number(name, getattr(self, name), low=0, high=1) < 1:
                raise ValueError(f"{name} must be < 1")


class Simulation:
    """Federated training of simulated edge clients, round by round.

    Parameters
    ----------
    model : fastmb.Linear or fastmb.MLP
    data : fastmb.data.Dataset or (X, y, X_test, y_test)
        Clients own rows of ``X``; the server evaluates on ``(X_test, y_test)``.
    partition : fastmb.partition.Partition
        Which rows each client owns (:func:`fastmb.partition.dirichlet`, ``iid``, ...).
    clients_per_round : int, optional
        Clients sampled each round (uniformly, without replacement). Default: ``fraction``
        of the clients.
    fraction : float in (0, 1], default 0.1
    epochs, batch_size, lr, momentum, prox_mu, shuffle
        Local training, as in :func:`fastmb.train_clients`.
    aggregator : str, default "fedavg"
        A rule of the registry (:func:`fastmb.aggregate.rules.names`): FedAvg weighted by
        the clients' example counts, a robust rule, or ``"central_dp"``
        (:class:`fastmb.CentralDP`).
    aggregator_options : dict, optional
        Options of the rule (``beta`` of ``trimmed_mean``, ``n_byzantine`` of ``krum``...).
    server : str, default "none"
        Server optimizer on the aggregate: ``"none"`` (params + aggregate), ``"fedavgm"``,
        ``"fedadagrad"``, ``"fedadam"``, ``"fedyogi"``.
    server_options : dict, optional
        Options of the server optimizer (``lr``, ``momentum``, ``beta1``...).
    faults : Faults, optional
    seed : int, default 0
        Seeds the initial parameters, sampling, faults and local shuffling.
    params : (P,) array, optional
        Initial parameters (default ``model.init(seed)``).
    eval_every : int, default 1
        Evaluate every this many rounds (and always after the last).
    shard_size : int, default 64
        Clients per shard of the FedAvg sum (see the module notes on reproducibility).
    executor : fastmb.federation.rounds.Executor, optional
        Where rounds run: this process (default) or
        :class:`fastmb.adapters.dask.DaskExecutor`.
    transforms : sequence of callables, optional
        Applied in order to every shard's updates where they are, after the simulated attack
        (:mod:`fastmb.federation.rounds`): ``transform(updates, client_ids, round_seed)``
        returns the updates. Picklable (module-level) for a Dask executor.
    secure : fastmb.secure.SecAggConfig, optional
        Secure aggregation (SecAgg, SecAgg+) with the FedAvg rule: the server learns only
        the sum of the quantized (clipped) updates; clients drop out at any stage
        (``faults``) and the round still completes while t neighbours answer. The clients'
        weights (example counts) must be at most ``secure.max_weight``; a round whose
        sum could wrap around the modulus is refused here.

    Examples
    --------
    >>> import fastmb
    >>> data = fastmb.data.digits()
    >>> part = fastmb.partition.dirichlet(data.y, 20, alpha=1.0, seed=0)
    >>> sim = fastmb.Simulation(fastmb.Linear(64, 10, loss="softmax"), data, part,
    ...                         fraction=0.5, epochs=2, lr=0.1, momentum=0.9, seed=0)
    >>> history = sim.run(rounds=10)
    >>> len(history), history[-1]["accuracy"] > 0.85
    (10, True)
    """

    def __init__(self, model, data, partition, *, clients_per_round=None, fraction=0.1,
                 epochs=1, batch_size=16, lr=0.05, momentum=0.0, prox_mu=0.0, shuffle=True,
                 aggregator="fedavg", aggregator_options=None, server="none",
                 server_options=None, faults=None, seed=0, params=None, eval_every=1,
                 shard_size=64, executor=None, transforms=(), secure=None):
        if isinstance(data, Dataset):
            X, y, X_test, y_test = data.X, data.y, data.X_test, data.y_test
        else:
            try:
                X, y, X_test, y_test = data
            except (TypeError, ValueError):
                raise TypeError("data must be a fastmb.data.Dataset or a tuple "
                                "(X, y, X_test, y_test)") from None
        if not isinstance(partition, Partition):
            raise TypeError(f"partition must be a fastmb.partition.Partition, got "
                            f"{type(partition).__name__}")
        self.model = model
        self.seed = V.check_number("seed", seed, low=0, high=2**63 - 1, integer=True)
        self.partition = partition
        n_clients = partition.n_clients
        if clients_per_round is None:
            frac = V.check_number("fraction", fraction, low=0, high=1, low_open=True)
            clients_per_round = max(1, round(frac * n_clients))
        self.clients_per_round = V.check_number("clients_per_round", clients_per_round, low=1,
                                                high=n_clients, integer=True)
        self.epochs = V.check_number("epochs", epochs, low=1, high=MAX_STEPS, integer=True)
        self.eval_every = V.check_number("eval_every", eval_every, low=1, integer=True)
        self.shard_size = V.check_number("shard_size", shard_size, low=1, integer=True)
        self.faults = Faults() if faults is None else faults
        if not isinstance(self.faults, Faults):
            raise TypeError(f"faults must be a fastmb.Faults, got {type(self.faults).__name__}")
        self.aggregator_options = rules.options(aggregator, aggregator_options)
        self.aggregator = aggregator
        self._optimizer, self.server_options = optimizer_options(server, server_options)
        self.server = server
        self.transforms = tuple(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"transforms must be callables, got {type(t).__name__}")
        p0 = model.init(seed=self.seed) if params is None else params
        # Data, options and partition are checked once here; rounds call the kernel directly.
        n_rows = V.n_samples(X)
        if partition.rows.size and partition.rows.max() >= n_rows:
            raise ValueError(f"partition refers to row {partition.rows.max()} but X has "
                             f"{n_rows} rows")
        options = TrainOptions(batch_size=batch_size, lr=lr, momentum=momentum,
                               prox_mu=prox_mu, shuffle=shuffle)
        self._batch, self._plan = plan_training(model, p0, X, y, partition.offsets,
                                                partition.rows, options)
        check_steps(self._plan.offsets, np.arange(n_clients), np.full(n_clients, self.epochs),
                    options.batch_size)
        bad = V.nonfinite_rows(self._batch.X)
        if bad.size:
            raise ValueError(f"X contains NaN or Inf (first at row {int(bad[0])})")
        self._test = Batch(model, p0, X_test, y_test)
        if self._test.n == 0:
            raise ValueError("the test split (X_test) is empty; the server needs held-out data")
        bad_test = V.nonfinite_rows(self._test.X)
        if bad_test.size:
            raise ValueError(f"X_test contains NaN or Inf (first at row {int(bad_test[0])})")
        self.batch_size = options.batch_size
        self.lr, self.momentum, self.prox_mu = lr, momentum, prox_mu
        self.shuffle = bool(shuffle)
        self._planned_steps = self.epochs * -(-partition.sizes // self.batch_size)
        self._weights = partition.sizes.astype(np.float64)
        n_mal = round(self.faults.malicious * n_clients)
        mrng = np.random.default_rng([self.seed, _MALICIOUS_TAG])
        self.malicious = np.sort(mrng.choice(n_clients, n_mal, replace=False)).astype(np.int64)
        rule = rules.get(aggregator)
        # A rule with state across rounds (central DP) keeps it here, in the server.
        self._rule_state = (None if rule.make is None else
                            rule.make(self.aggregator_options, self.clients_per_round, self.seed))
        rules.check(aggregator, self.aggregator_options, self.clients_per_round,
                    self._batch.params.dtype)
        self._attack = Attack(self.faults.attack, self.faults.attack_scale, self.malicious)
        self.secure = self._check_secure(secure, aggregator)
        #: ``(round, reason)`` of each secure round that failed (too few shares came back:
        #: the round made no update and revealed nothing).
        self.secure_failures = []
        #: Per secure round: the protocol's own bytes each way (keys, shares, unmasking;
        #: included in the history's bytes_up/bytes_down besides the masked vectors), and
        #: how many clients shared keys, masked and answered, with k and t.
        self.secure_log = []
        self._params = self._batch.params.copy()
        self._opt = (None if self._optimizer is None else
                     self._optimizer(self._params, **self.server_options))
        self._fingerprint = None
        self.round = 0
        self.history = []
        self.executor = LocalExecutor() if executor is None else executor
        self.executor.prepare(self._plan)

    def _check_secure(self, secure, aggregator):
        if secure is None:
            if self.faults.setup_dropout or self.faults.unmask_dropout:
                raise ValueError("faults.setup_dropout and unmask_dropout need secure "
                                 "aggregation (secure=SecAggConfig(...))")
            return None
        if not isinstance(secure, SecAggConfig):
            raise TypeError(f"secure must be a fastmb.secure.SecAggConfig, got "
                            f"{type(secure).__name__}")
        if aggregator != "fedavg":
            raise ValueError(f"secure aggregation sums the updates: it runs with the fedavg "
                             f"aggregator, got {aggregator!r}")
        biggest = int(self.partition.sizes.max())
        if biggest > secure.max_weight:
            raise ValueError(f"secure.max_weight is {secure.max_weight}, but a client holds "
                             f"{biggest} examples (its FedAvg weight): raise max_weight")
        secure.check_round(self.clients_per_round)
        return secure

    def _secure_task(self, task, sampled):
        """Phase 1 with secure aggregation: the key stages of the sampled clients, the
        setup and unmasking dropouts; the task then trains the clients that completed the
        setup (and did not drop otherwise) and ends with the masking transform."""
        rng = np.random.default_rng([self.seed, self.round, _SECURE_TAG])
        u = rng.random((2, sampled.shape[0]))
        setup_dropped = sampled[u[0] < self.faults.setup_dropout]
        sr = SecureRound(self.secure, sampled, self._weights.astype(np.int64),
                         round_id=self.round, seed=int(rng.integers(2**63)),
                         setup_dropped=setup_dropped,
                         unmask_dropped=sampled[u[1] < self.faults.unmask_dropout])
        keep = np.isin(task.ids, sr.shared)
        task = dataclasses.replace(task, ids=task.ids[keep], epochs=task.epochs[keep],
                                   steps=task.steps[keep], weights=task.weights[keep],
                                   transforms=(*task.transforms, sr.transform), secure=sr)
        # dropped at setup, or refused to go on (too few neighbours took part)
        return task, np.setdiff1d(sampled, sr.shared)

    # -- state ------------------------------------------------------------
    @property
    def params(self):
        """A copy of the current global parameters."""
        return self._params.copy()

    def config(self):
        """Everything that determines the run's results (checked when resuming): the model's
        whole description, the dtype, digests of all the data (features and labels, both
        splits) and of the partition, and every setting of the rounds."""
        if self._fingerprint is None:  # hashing the data once (about 1 GB/s) is enough
            b, t = self._batch, self._test
            self._fingerprint = {
                "data_digest": _digest(b.X, b.yc, b.yr, t.X, t.yc, t.yr),
                "partition_digest": _digest(self.partition.rows, self.partition.offsets),
            }
        m = self.model
        return {
            "model": {"kind": type(m).__name__, "sizes": list(m.sizes), "loss": m.loss,
                      "activation": m.activation, "fit_intercept": m.fit_intercept,
                      "huber_delta": m.huber_delta},
            "n_params": int(m.n_params), "dtype": self._params.dtype.name,
            "n_clients": int(self.partition.n_clients), **self._fingerprint,
            "clients_per_round": self.clients_per_round, "epochs": self.epochs,
            "batch_size": int(self.batch_size), "lr": float(self.lr),
            "momentum": float(self.momentum), "prox_mu": float(self.prox_mu),
            "shuffle": self.shuffle, "aggregator": self.aggregator,
            "aggregator_options": self.aggregator_options, "server": self.server,
            "server_options": self.server_options, "faults": dataclasses.asdict(self.faults),
            "seed": self.seed, "eval_every": self.eval_every, "shard_size": self.shard_size,
            "transforms": [_describe_transform(t) for t in self.transforms],
            "secure": None if self.secure is None else dataclasses.asdict(self.secure),
        }

    def save(self, path):
        """Write the server state atomically: a temporary file in the same folder, fsync,
        then ``os.replace`` (a crash leaves the old checkpoint or the new, never half)."""
        state = {"version": np.int64(_CHECKPOINT_VERSION), "round": np.int64(self.round),
                 "params": self._params,
                 "config": np.array(json.dumps(self.config(), sort_keys=True)),
                 "history": np.array(json.dumps(self.history))}
        if self._opt is not None:
            for k, v in self._opt.state_dict().items():
                state["opt." + k] = np.asarray(v)
        if self._rule_state is not None:
            state["dp"] = np.array(json.dumps(self._rule_state.state_dict(),
                                              default=lambda v: v.item()))
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **state)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load(self, path):
        """Restore a checkpoint written by :meth:`save` of an identically configured run.

        Everything is checked before anything changes: that the file is a checkpoint at
        all, its version, that it was written by a run with the same settings, model and
        data (:meth:`config`), and every array and number in it (parameters of the model's
        length and dtype and finite, a round and a history that agree, the server
        optimizer's and central DP's state). Anything else raises a ``ValueError``.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        z = _read_checkpoint(path)

        def fail(why):
            raise ValueError(f"checkpoint {path!r} {why}")

        need = {"version", "round", "params", "config", "history"}
        opt_keys = {"opt." + k for k in self._opt.state_dict()} if self._opt else set()
        want = need | opt_keys | ({"dp"} if self._rule_state is not None else set())
        if set(z) != want:
            fail(f"holds {sorted(z)}; a checkpoint of this run holds {sorted(want)}")
        version = _scalar(z["version"], int)
        if version != _CHECKPOINT_VERSION:
            fail(f"has version {_describe(z['version']) if version is None else version}, "
                 f"expected {_CHECKPOINT_VERSION}")
        saved = _json(z["config"], dict, fail, "config")
        now = json.loads(json.dumps(self.config(), sort_keys=True))
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            fail(f"was written by a run with different settings: {', '.join(diff)} (saved "
                 f"{[saved.get(k) for k in diff]}, now {[now.get(k) for k in diff]})")
        params = z["params"]
        if params.shape != self._params.shape or params.dtype != self._params.dtype \
                or not np.isfinite(params).all():
            fail(f"has params of shape {params.shape} and dtype {params.dtype} (finite: "
                 f"{bool(np.isfinite(params).all()) if params.dtype.kind in 'fiu' else False}); "
                 f"this run needs {self._params.shape[0]} finite {self._params.dtype} values")
        rnd = _scalar(z["round"], int)
        if rnd is None or not 0 <= rnd <= 2**62:
            fail(f"has round {_describe(z['round']) if rnd is None else rnd}; expected a "
                 "non-negative integer")
        history = _json(z["history"], list, fail, "history")
        _check_history(history, rnd, fail)
        opt = None
        if self._opt is not None:
            state = {k[4:]: (v.item() if v.ndim == 0 else v) for k, v in z.items()
                     if k.startswith("opt.")}
            try:
                opt = type(self._opt).from_state_dict(state)
            except (TypeError, ValueError) as exc:
                fail(f"holds a bad server optimizer state: {exc}")
            if opt._x.dtype != params.dtype or not np.array_equal(opt._x, params):
                fail("holds server optimizer parameters that differ from its params")
        dp = None
        if self._rule_state is not None:
            dp = _json(z["dp"], dict, fail, "dp")
            try:
                self._rule_state.load_state_dict(dp)  # validated before it changes anything
            except (TypeError, ValueError) as exc:
                fail(f"holds a bad central DP state: {exc}")
        if opt is not None:
            self._opt = opt
        self._params, self.history, self.round = params.copy(), history, rnd
        return self

    # -- rounds -----------------------------------------------------------
    def _select(self, r):
        """Phase 1, select: the round's clients, who drops out or straggles, their task."""
        ss = np.random.SeedSequence([self.seed, r, _ROUND_TAG])
        rng = np.random.default_rng(ss)
        n_clients = self.partition.n_clients
        if self.clients_per_round == n_clients:
            sampled = np.arange(n_clients)  # everyone takes part: nothing to draw
        else:
            sampled = np.sort(rng.choice(n_clients, self.clients_per_round, replace=False))
        u = rng.random((2, sampled.shape[0]))
        f = self.faults
        dropped = u[0] < f.dropout
        straggle = (u[1] < f.straggler) & ~dropped
        ids = sampled[~dropped].astype(np.int64)
        steps = np.full(ids.shape[0], -1, np.int64)
        slow = straggle[~dropped]
        planned = self._planned_steps[ids[slow]]
        limit = np.maximum(1, np.floor(f.straggler_work * planned)).astype(np.int64)
        steps[slow] = np.where(limit < planned, limit, -1)  # a full share is no limit
        # The clients' shuffling streams change every round.
        key = ss.generate_state(1, np.uint64)[0]
        task = RoundTask(self._params, key, ids, np.full(ids.shape[0], self.epochs, np.int64),
                         steps, self._weights[ids], self.shard_size,
                         (self._attack, *self.transforms))
        return task, sampled, sampled[dropped], ids[slow]

    def _server_step(self, delta):
        """Phase 5, server step: the aggregate applied through the server optimizer (an
        aggregate whose sum with the parameters overflows is rejected as a whole)."""
        if delta is None:
            return
        new = (self._params.astype(np.float64) + delta).astype(self._params.dtype)
        if np.isfinite(new).all():
            self._params = new if self._opt is None else self._opt.step(new)

    def step(self):
        """Run one round; returns its history record (also appended to :attr:`history`).

        The phases (module :mod:`fastmb.federation.rounds`): select here; train, transform
        and aggregate on the executor; the server step and the evaluation here; the
        checkpoint in :meth:`run`.
        """
        t0 = time.perf_counter()
        task, sampled, dropped, stragglers = self._select(self.round)
        if self.secure is not None:
            task, setup_dropped = self._secure_task(task, sampled)
            dropped = np.union1d(dropped, setup_dropped)
            stragglers = stragglers[np.isin(stragglers, task.ids)]
            if not task.ids.shape[0]:
                self.secure_failures.append((self.round + 1, "no client could mask: too few "
                                             "neighbours completed the key stages"))
        delta, used, rejected = None, np.empty(0, np.int64), np.empty(0, np.int64)
        ids = task.ids
        if ids.shape[0]:
            shards = self.executor.train(task)
            delta, used, rejected = self.executor.aggregate(
                self.aggregator, self.aggregator_options, task, shards, self._rule_state)
            if task.secure is not None and task.secure.error is not None:
                self.secure_failures.append((self.round + 1, task.secure.error))
        self._server_step(delta)
        self.round += 1
        train_s = time.perf_counter() - t0
        record = {"round": self.round}
        last = self.round % self.eval_every == 0
        record.update(self.evaluate() if last else {"loss": None, "accuracy": None})
        itemsize = self._params.dtype.itemsize
        P = self.model.n_params
        up, extra_up, extra_down = P * itemsize, 0, 0
        if self.secure is not None:   # a masked vector: P + 1 integers of the group
            up = (P + 1) * self.secure.quantizer.dtype.itemsize
            extra_up, extra_down = task.secure.traffic["up"], task.secure.traffic["down"]
            self.secure_log.append({"round": self.round, "bytes_up": extra_up,
                                    "bytes_down": extra_down, **task.secure.stats})
        record.update({
            "time_s": time.perf_counter() - t0, "train_s": train_s,
            "sampled": int(sampled.shape[0]), "reported": int(ids.shape[0]),
            "used": int(used.shape[0]),
            "bytes_down": int(sampled.shape[0] * P * itemsize + extra_down),
            "bytes_up": int(ids.shape[0] * up + extra_up),
            "dropped": dropped.tolist(), "stragglers": stragglers.tolist(),
            "malicious": ids[np.isin(ids, self.malicious)].tolist(),
            "rejected": rejected.tolist(),
            "rejected_by_rule": ([] if used.shape[0] + rejected.shape[0] == ids.shape[0] else
                                 np.setdiff1d(np.setdiff1d(ids, used), rejected).tolist()),
        })
        self.history.append(record)
        return record

    def evaluate(self):
        """``{"loss", "accuracy"}`` of the current parameters on the test split
        (accuracy is None for regression)."""
        self._test.params = self._params
        return evaluate_batch(self._test)

    def run(self, rounds, *, checkpoint=None, callback=None):
        """Run until ``rounds`` rounds are done in all (a resumed run continues).

        Parameters
        ----------
        rounds : int
            Total number of rounds.
        checkpoint : path, optional
            Written atomically after every round.
        callback : callable, optional
            Called with each round's record after it is checkpointed; may raise to stop.

        Returns
        -------
        list of dict
            The history, one record per round.
        """
        rounds = V.check_number("rounds", rounds, low=0, integer=True)
        if self.round >= rounds and self.history and self.history[-1]["loss"] is None:
            self.history[-1].update(self.evaluate())
        while self.round < rounds:
            record = self.step()
            if self.round == rounds and record["loss"] is None:
                record.update(self.evaluate())
            if checkpoint is not None:
                self.save(checkpoint)
            if callback is not None:
                callback(record)
        return self.history

    def close(self):
        self.executor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _describe_transform(t):
    """A transform's stable name for the fingerprint (a function's ``module.qualname``; an
    object's repr, which for a dataclass shows its settings)."""
    if hasattr(t, "__qualname__") and hasattr(t, "__module__"):
        return f"{t.__module__}.{t.__qualname__}"
    return repr(t)


def _digest(*arrays):
    """SHA-256 of the arrays' dtypes, shapes and bytes (so no two differ and collide by
    concatenation), as 16 hex digits."""
    h = hashlib.sha256()
    parts = []
    for a in arrays:  # a sparse X (``SparseRows``) is its arrays and its width
        parts.extend(a if isinstance(a, tuple) else (a,))
    for a in parts:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()[:16]


def _read_checkpoint(path):
    """Every array of a checkpoint file, or a ValueError saying it is not a readable one.

    ``np.load`` meets a truncated, empty, corrupted or foreign file with many kinds of
    error (zipfile, EOF, OS, value, key, zlib, memory for a forged huge shape): each one
    means the same thing here."""
    # The file is opened here, not by np.load: numpy hands its own file to the archive
    # reader and leaks it when that reader fails on a damaged file.
    try:
        with open(path, "rb") as fh:
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise _NotAnArchive
            with z:
                return {k: z[k] for k in z.files}
    except _NotAnArchive:
        raise ValueError(f"checkpoint {path!r} is not a fastmb checkpoint (an .npy array, "
                         "not an .npz archive)") from None
    except Exception as exc:
        raise ValueError(f"checkpoint {path!r} is not a readable fastmb checkpoint "
                         f"({type(exc).__name__}: {exc})") from None


class _NotAnArchive(Exception):
    pass


def _describe(a):
    """A short description of a checkpoint array for a message (never its contents)."""
    return f"an array of dtype {a.dtype} and shape {a.shape}"


def _scalar(a, kind):
    """The Python ``int`` in a 0-d integer array, or None."""
    if a.ndim == 0 and a.dtype.kind in "iu":
        return kind(a.item())
    return None


def _json(a, kind, fail, what):
    """The JSON document in a 0-d string array, which must decode to ``kind``."""
    if a.ndim != 0 or a.dtype.kind != "U":
        fail(f"holds {what} as {_describe(a)}, not a JSON string")
    try:
        doc = json.loads(str(a))
    except (ValueError, RecursionError) as exc:
        fail(f"holds {what} that is not valid JSON ({exc})")
    if not isinstance(doc, kind):
        fail(f"holds {what} as a JSON {type(doc).__name__}, not a {kind.__name__}")
    return doc


#: The fields of a history record and the JSON types each may hold.
_RECORD = {"round": (int,), "loss": (float, int, type(None)), "accuracy": (float, int, type(None)),
           "time_s": (float, int), "train_s": (float, int), "sampled": (int,),
           "reported": (int,), "used": (int,), "bytes_down": (int,), "bytes_up": (int,),
           "dropped": (list,), "stragglers": (list,), "malicious": (list,), "rejected": (list,),
           "rejected_by_rule": (list,)}


def _check_history(history, rounds, fail):
    """A checkpoint's history: one record per round done, each with the fields and types
    a round writes (its lists hold client ids)."""
    if len(history) != rounds:
        fail(f"holds {len(history)} history records for {rounds} rounds")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict) or set(rec) != set(_RECORD):
            fail(f"holds a history record {i} without the fields of a round")
        for k, types in _RECORD.items():
            v = rec[k]
            if isinstance(v, bool) or not isinstance(v, types) \
                    or (isinstance(v, list) and not all(type(c) is int for c in v)):
                fail(f"holds history record {i} with a bad {k!r} ({type(v).__name__})")
        if rec["round"] != i + 1:
            fail(f"holds history record {i} for round {rec['round']}")


def summary(history):
    """Final accuracy and loss, the best accuracy, time per round and bytes moved."""
    if not history:
        return {"rounds": 0, "final_loss": None, "final_accuracy": None, "best_accuracy": None,
                "median_round_s": 0.0, "total_s": 0.0, "bytes_up": 0, "bytes_down": 0,
                "dropped": 0, "rejected": 0}
    evals = [h for h in history if h["loss"] is not None]
    accs = [h["accuracy"] for h in evals if h["accuracy"] is not None]
    times = np.array([h["time_s"] for h in history])
    return {
        "rounds": len(history), "final_loss": evals[-1]["loss"] if evals else None,
        "final_accuracy": accs[-1] if accs else None, "best_accuracy": max(accs) if accs else None,
        "median_round_s": float(np.median(times)), "total_s": float(times.sum()),
        "bytes_up": int(sum(h["bytes_up"] for h in history)),
        "bytes_down": int(sum(h["bytes_down"] for h in history)),
        "dropped": int(sum(len(h["dropped"]) for h in history)),
        "rejected": int(sum(len(h["rejected"]) + len(h["rejected_by_rule"]) for h in history)),
    }
