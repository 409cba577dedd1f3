"""Local training: mini-batch SGD for one client, or many clients in one kernel call."""

from __future__ import annotations

import concurrent.futures

import numba
import numpy as np

from .. import _device
from .. import _validation as V
from ..kernels import training as K_
from .gradients import Batch
from .options import MAX_STEPS, TrainOptions

# Work of one kernel call, in row-visits weighted by (P + 64) (the 64 stands for the
# per-row cost that does not grow with the model: shuffling, indexing, the loss). Longer
# trainings run as several calls, split by groups of clients and ranges of epochs, so
# that Python regains control (Ctrl-C) every 0.1 s or so; the split changes no bit.
CHUNK_WORK = 1 << 27


# The work of one kernel call from a training thread, in the units of CHUNK_WORK (row
# visits weighted by P + 64): small clients are trained several to a call, since a call
# from Python costs about 20 us (its arguments' types), more than a client of 15 rows.
TASK_WORK = 1 << 17


def _tasks(work):
    """Clients in order of decreasing work, cut into tasks of about ``TASK_WORK`` (a
    larger client is a task of its own): ``(order, bounds, task_work)``, task t being
    ``order[bounds[t]:bounds[t + 1]]`` of total work ``task_work[t]``."""
    order = np.argsort(-work, kind="stable")
    bounds, task_work = [0], []
    acc = 0.0
    for i, w in enumerate(work[order].tolist()):
        acc += w
        if acc >= TASK_WORK or i == order.shape[0] - 1:
            bounds.append(i + 1)
            task_work.append(acc)
            acc = 0.0
    return order.astype(np.int64), bounds, task_work


_POOL = {}  # threads started once per process, by count


def run_threads(task, work, T):
    """Call ``task(i)`` for every task ``i`` of ``work`` (its estimated cost), on at most
    ``T`` threads, the calling thread one of them; each thread takes the next task as it
    finishes one, largest first.

    The kernels release the GIL (``nogil``), so the tasks run in parallel. A pool of
    fastmb's own threads, not a parallel kernel: OpenMP's workers spin for a while after
    each parallel region, which takes a busy machine's cores from whatever runs next, and a
    parallel kernel around the training loop compiles it twice more (the loop, then its
    parallel wrapper). Taking tasks one at a time lets a thread whose core is shared with
    another program do less (with one of two cores busy, a round of the default simulation
    took 1.0-1.6x its quiet time over five runs of this noisy machine). A task's result
    does not depend on the thread that ran it.
    """
    order = iter(np.argsort(-np.asarray(work), kind="stable").tolist())
    n = min(T, len(work)) - 1
    if n <= 0:
        for i in order:
            task(i)
        return
    pool = _POOL.get(n)
    if pool is None:
        pool = _POOL[n] = concurrent.futures.ThreadPoolExecutor(
            n, thread_name_prefix="fastmb")
    # next() on a shared iterator is atomic under the GIL: no task runs twice.
    futures = [pool.submit(_drain, task, order) for _ in range(n)]
    try:
        _drain(task, order)
    finally:
        for f in futures:
            f.result()


def client_key(seed, client=0):
    """The shuffling stream of ``client`` under ``seed`` (client 0: what :func:`sgd`
    shuffles with), as the training kernels derive it."""
    keys = np.empty(1, np.uint64)
    K_.client_keys(np.uint64(seed), np.full(1, client, np.int64), keys)
    return keys[0]


def launch(kernel, group, tasks):
    """``kernel(*group, lo, hi)`` for each task ``(lo, hi)`` of ``tasks`` (the bounds and
    work of :func:`_tasks`), on the host's threads (:func:`run_threads`)."""
    bounds, task_work = tasks

    def task(t):
        kernel(*group, bounds[t], bounds[t + 1])

    run_threads(task, task_work, numba.get_num_threads())


def _drain(task, order):
    for i in order:
        task(i)


def _as_epochs(epochs, K):
    """Local epochs per client: one non-negative integer for all, or K of them."""
    if not np.ndim(epochs):
        return np.full(K, V.check_number("epochs", epochs, low=0, high=MAX_STEPS, integer=True),
                       np.int64)
    return V.as_index_array("epochs", epochs, high=MAX_STEPS + 1, length=K)


def sgd(model, params, X, y, *, epochs=1, batch_size=32, lr=0.01, momentum=0.0,
        weight_decay=0.0, prox_mu=0.0, shuffle=True, seed=0, sample_weight=None,
        schedule="constant", power_t=0.5, clip_norm=None, noise_multiplier=0.0,
        optimizer="sgd", betas=(0.9, 0.999), eps=1e-8, nesterov=False, l2=0.0):
    """Mini-batch SGD on one client's data; returns new parameters (``params`` is not changed).

    Each step uses the weighted mean gradient of one mini-batch ``g`` and updates::

        d = g + weight_decay * p + prox_mu * (p - params)   # FedProx pulls towards params
        v = momentum * v + d                                # v starts at zero
        p = p - lr_t * v                                    # nesterov: lr_t * (d + momentum * v)

    or, with ``optimizer="adam"`` (scikit-learn's form of Adam; ``t`` counts steps from 1)::

        m = beta1 * m + (1 - beta1) * d                     # m, s start at zero
        s = beta2 * s + (1 - beta2) * d**2
        p = p - lr_t * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(s) + eps)

    The whole loop over epochs and mini-batches runs in one compiled call.

    Parameters
    ----------
    model, params, X, y, sample_weight
        As in :func:`fastmb.loss`.
    epochs : int, default 1
    batch_size : int, default 32
        The last mini-batch of an epoch may be shorter.
    lr : float, default 0.01
    momentum : float in [0, 1], default 0
    weight_decay : float, default 0
        L2 penalty ``weight_decay / 2 * |p|^2`` on all parameters.
    l2 : float, default 0
        L2 penalty ``l2 / 2 * |W|^2`` on the weights only (not the biases) of each
        mini-batch's summed loss: ``g`` becomes ``(sum_i w_i g_i + l2 * W) / sum_i w_i``, so
        the penalty's weight falls as batches grow (scikit-learn's MLP ``alpha``).
    nesterov : bool, default False
        Nesterov momentum (PyTorch's form, above); needs ``momentum > 0``.
    prox_mu : float, default 0
        FedProx proximal term ``prox_mu / 2 * |p - params|^2``.
    shuffle : bool, default True
        Reshuffle the rows every epoch (a counter-based generator keyed by ``seed``).
    seed : int, default 0
        Same seed, same bits, on any number of threads.
    schedule : {"constant", "invscaling", "cosine"}, default "constant"
        ``lr_t`` = ``lr``; ``lr / (t + 1)**power_t``; ``lr * (1 + cos(pi t / T)) / 2``,
        with ``t`` the step and ``T`` the number of steps.
    power_t : float, default 0.5
    clip_norm : float, optional
        DP-SGD (Abadi et al. 2016): clip every per-sample gradient to this L2 norm before
        the mini-batch sum. The per-sample norms come from each layer's activations and
        deltas (|a|^2 |d|^2 per layer, "ghost norms"); no per-sample gradient is formed,
        and the clipped sum is one matrix product per layer. ``g`` above becomes
        ``(sum_i clip(g_i) + noise) / b`` for a batch of ``b`` rows.
    optimizer : {"sgd", "adam"}, default "sgd"
        Adam (Kingma and Ba 2015) as scikit-learn's MLP estimators run it: the bias
        corrections scale the step, and ``eps`` is added to ``sqrt(s)`` before it is
        corrected (PyTorch adds it after, which differs while ``s`` is small).
        ``momentum`` must then be 0.
    betas : (float, float), default (0.9, 0.999)
        Adam's decay rates of the first and second moments, each in [0, 1).
    eps : float, default 1e-8
        Adam's denominator term.
    noise_multiplier : float, default 0
        Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` added to
        each coordinate of the clipped sum, drawn from a counter-based stream of
        ``seed`` (reproducible, and the same on any number of threads). See
        :func:`fastmb.privacy.epsilon` for the privacy this buys.

    Returns
    -------
    (P,) array of the dtype of ``params``

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3))
    >>> y = (X @ [1.0, -2.0, 0.5] > 0).astype(int)
    >>> model = fastmb.Linear(3, loss="logistic")
    >>> p = fastmb.sgd(model, model.init(), X, y, epochs=5, lr=0.5)
    >>> float((fastmb.predict(model, p, X) == y).mean()) > 0.95
    True

    The same with DP-SGD (each sample's gradient clipped to norm 1, noise of std 0.5):

    >>> p = fastmb.sgd(model, model.init(), X, y, epochs=5, lr=0.5, clip_norm=1.0,
    ...                noise_multiplier=0.5)
    >>> float((fastmb.predict(model, p, X) == y).mean()) > 0.9
    True
    """
    n = V.n_samples(X)
    return train_clients(model, params, X, y, [0, n],
                         epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, prox_mu=prox_mu, shuffle=shuffle, seed=seed,
                         sample_weight=sample_weight, schedule=schedule, power_t=power_t,
                         clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                         optimizer=optimizer, betas=betas, eps=eps, nesterov=nesterov,
                         l2=l2)[0]


class TrainPlan:
    """Validated options of a ``train_clients`` call, reusable round after round.

    The federation engine builds one per simulation (data and options are checked once)
    and then only passes the round's parameters, clients, epochs and step limits.
    """

    __slots__ = ("X", "idx", "model", "offsets", "options", "record", "seed", "sw", "yc", "yr")

    def __init__(self, model, b, idx, offsets, options, weight_scale=1.0):
        self.model, self.X, self.yc, self.yr, self.sw = model, b.X, b.yc, b.yr, b.sw
        self.idx, self.offsets, self.seed = idx, offsets, np.uint64(options.seed)
        self.options = options
        # the kernels see the sample weights scaled by a power of two (as_sample_weight):
        # the l2 term, which does not scale with them, is scaled alike (exactly)
        self.record = options.record(model)
        if weight_scale != 1.0:
            self.record = self.record._replace(l2=self.record.l2 * weight_scale)

    def run(self, params, clients, epochs, max_steps, seed=None):
        """Train ``clients`` (int64 ids) from ``params``: ``(out, bad)``; no checks here.

        ``seed`` (uint64) replaces the plan's seed for this call (a simulation's round).
        The work is cut into kernel calls of about ``CHUNK_WORK`` (see :meth:`chunks`);
        ``bad[k]`` is the first row client k's training flagged, or -1.
        """
        K = clients.shape[0]
        P = params.shape[0]
        out = np.empty((K, P), params.dtype)
        bad = np.full(K, -1, np.int64)
        starts, ends, keys = self.client_rows(clients, seed)
        kernel = K_.SGD[self.record.path]
        # the current group's optimizer state (momentum, Adam's moments), carried from chunk
        # to chunk of a split training; none (zero columns) for one done in a single call
        mom = None
        for g0, g1, e_lo, e_hi, split, order, tasks in self.calls(starts, ends, epochs,
                                                                  max_steps, P):
            if e_lo == 0:
                mom = np.empty((g1 - g0, self.options.state_size(P) if split else 0),
                               params.dtype)
            launch(kernel, (params, self.X, self.yc, self.yr, self.sw, self.model.layout,
                            self.idx, starts[g0:g1], ends[g0:g1], keys[g0:g1], epochs[g0:g1],
                            max_steps[g0:g1], e_lo, e_hi, self.record, out[g0:g1], mom,
                            bad[g0:g1], order), tasks)
        return out, bad

    def client_rows(self, clients, seed=None):
        """``(starts, ends, keys)`` of ``clients``: their row spans and shuffling streams
        (``seed`` replaces the plan's)."""
        seed = self.seed if seed is None else np.uint64(seed)
        keys = np.empty(clients.shape[0], np.uint64)
        K_.client_keys(seed, clients, keys)
        return self.offsets[clients], self.offsets[clients + 1], keys

    def calls(self, starts, ends, epochs, max_steps, P):
        """The kernel calls of a training (:meth:`chunks`), each as ``(g0, g1, e_lo, e_hi,
        split, order, tasks)``: ``split`` whether the group's epochs take several calls
        (its optimizer state must then be kept between them), ``order`` and ``tasks`` the
        group's clients in the order and thread tasks of :func:`_tasks`. ``P`` is the
        parameters per client (one number, or one per client)."""
        P = np.broadcast_to(np.asarray(P, np.float64), starts.shape)
        for g0, g1, e_lo, e_hi in self.chunks(ends - starts, epochs, max_steps, P):
            work = ((ends[g0:g1] - starts[g0:g1]) * (np.minimum(epochs[g0:g1], e_hi) - e_lo)
                    * (P[g0:g1] + 64.0))
            order, bounds, task_work = _tasks(work)
            yield (g0, g1, e_lo, e_hi, e_hi < epochs[g0:g1].max(), order,
                   (bounds, task_work))

    def chunks(self, rows, epochs, max_steps, P):
        """Kernel calls ``(g0, g1, e_lo, e_hi)``: clients ``g0:g1`` run epochs ``e_lo:e_hi``.

        A training of at most ``CHUNK_WORK`` is one call (the common case: a round of a
        simulation). Otherwise the clients are cut into consecutive groups of at least as
        many clients as there are threads (else as few as fit the budget with all their
        epochs), and a group whose training still exceeds the budget runs a range of
        epochs per call. Every client's result is the same bits whatever the cut.
        """
        K = rows.shape[0]
        n_batches = -(-rows // self.record.batch)
        full = np.where(max_steps >= 0, np.minimum(epochs, -(-max_steps // n_batches)), epochs)
        per_epoch = rows.astype(np.float64) * (P + 64)
        work = per_epoch * full
        if K == 0:
            return
        if work.sum() <= CHUNK_WORK:
            yield 0, K, 0, int(epochs.max())
            return
        T = numba.get_num_threads()
        g0 = 0
        while g0 < K:
            g1 = g0 + 1
            total = work[g0]
            while g1 < K and (g1 - g0 < T or total + work[g1] <= CHUNK_WORK):
                total += work[g1]
                g1 += 1
            e_end = int(full[g0:g1].max())
            if total <= CHUNK_WORK or e_end <= 1:
                yield g0, g1, 0, int(epochs[g0:g1].max())
            else:
                step = max(1, int(CHUNK_WORK // per_epoch[g0:g1].sum()))
                for e_lo in range(0, e_end, step):
                    yield g0, g1, e_lo, min(e_lo + step, e_end)
            g0 = g1

    def raise_bad(self, bad):
        """Raise for the first row of X a client's kernel flagged (-1: none).

        The kernels report rows of X (already mapped through ``rows``)."""
        flagged = bad[bad >= 0]
        if not flagged.size:
            return
        row = int(flagged.min())
        V.raise_bad_row(self.X, row, overflow=f"training diverged: the loss became NaN or Inf "
                        f"at row {row}; lower lr or scale the inputs")


class EpochTrainer:
    """One model trained an epoch at a time, the optimizer's state kept between calls: for
    callers that check a stopping rule after every epoch (the scikit-learn estimators).

    ``run(lr)`` trains the next epoch in one kernel call, continuing from the parameters,
    the momentum or Adam's moments and the step count of the epochs before, with the
    learning rate ``lr`` for this epoch. The epochs are those ``sgd(..., epochs=n)`` runs,
    bit for bit, when ``lr`` stays the same.

    Parameters
    ----------
    model, params, X, y, sample_weight
        As in :func:`sgd`; ``params`` is copied.
    options : TrainOptions
    max_epochs : int
        The epochs a learning-rate schedule spans.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.learn.options import TrainOptions
    >>> from fastmb.learn.training import EpochTrainer
    >>> X = np.random.default_rng(0).normal(size=(64, 3)); y = X.sum(axis=1)
    >>> model = fastmb.Linear(3)
    >>> opts = TrainOptions(batch_size=8, lr=0.05, optimizer="adam")
    >>> tr = EpochTrainer(model, model.init(dtype=np.float64), X, y, opts, max_epochs=2)
    >>> p = tr.run(0.05).copy(); p2 = tr.run(0.05)
    >>> bool((p2 == fastmb.sgd(model, model.init(dtype=np.float64), X, y, epochs=2,
    ...                        batch_size=8, lr=0.05, optimizer="adam")).all())
    True
    """

    def __init__(self, model, params, X, y, options, max_epochs, sample_weight=None,
                 resume=None):
        b, self.plan = plan_training(model, params, X, y, [0, V.n_samples(X)], None, options,
                                    sample_weight)
        P = b.params.shape[0]
        self.params0 = b.params.copy()
        self.out = self.params0.copy()[None, :]
        self.state = np.zeros((1, options.state_size(P)), b.params.dtype)
        self.epoch = 0
        self.steps = 0  # updates made, including those of the training resumed
        if resume is not None:
            # another trainer's optimizer state and step count, continued on this data: the
            # kernel continues (epoch >= 1) from out and state, its steps shifted by step0
            state, self.steps = resume
            self.state[...] = state
            self.epoch = 1
        self.max_epochs = V.check_number("max_epochs", max_epochs, low=1, high=MAX_STEPS,
                                         integer=True)
        self._keys = np.empty(1, np.uint64)
        K_.client_keys(self.plan.seed, np.zeros(1, np.int64), self._keys)

    @property
    def params(self):
        """The current parameters (a view, changed by the next ``run``)."""
        return self.out[0]

    def run(self, lr):
        """Train the next epoch at learning rate ``lr``; returns :attr:`params`."""
        plan = self.plan
        lr = V.check_number("lr", lr, low=0, low_open=True)
        e = self.epoch
        n_batches = -(-int(plan.offsets[1]) // plan.record.batch)
        record = plan.record._replace(lr=float(lr), step0=self.steps - e * n_batches)
        bad = np.full(1, -1, np.int64)
        K_.SGD[record.path](self.params0, plan.X, plan.yc, plan.yr, plan.sw, plan.model.layout,
                            plan.idx, plan.offsets[:1], plan.offsets[1:], self._keys,
                            np.array([max(self.max_epochs, e + 1)]), np.full(1, -1),
                            e, e + 1, record, self.out, self.state, bad, np.zeros(1, np.int64),
                            0, 1)
        plan.raise_bad(bad)
        if not np.isfinite(self.out).all():
            raise ValueError("training diverged: the parameters overflowed; lower the "
                             "learning rate or scale the inputs")
        self.epoch = e + 1
        self.steps += n_batches
        return self.params

    def resume_state(self):
        """What a trainer on other data needs to continue this one (``resume=``)."""
        return self.state.copy(), self.steps


def _rows_and_offsets(n, client_offsets, rows):
    """Checked ``(idx, offsets)`` for a data set of ``n`` rows (``idx`` empty without rows)."""
    if rows is None:
        idx = np.empty(0, np.int64)
        n_rows = n
    else:
        idx = V.as_index_array("rows", rows, high=n)
        n_rows = idx.shape[0]
    what = "the rows of X" if rows is None else "the entries of rows"
    return idx, V.as_offsets("client_offsets", client_offsets, n_rows, what)


def plan_training(model, params, X, y, client_offsets, rows, options, sample_weight=None):
    """Check a training's data and options once: ``(Batch, TrainPlan)``.

    ``options`` is a :class:`TrainOptions`. The federation engine builds one plan per
    simulation and runs it round after round.
    """
    options.check_sample_weight(sample_weight)
    b = Batch(model, params, X, y, sample_weight)
    idx, off = _rows_and_offsets(b.n, client_offsets, rows)
    return b, TrainPlan(model, b, idx, off, options, V.sample_weight_scale(sample_weight))


def _selection(n_clients, clients, epochs, max_steps):
    """Checked ``(ids, epochs, max_steps)`` arrays of the clients a call trains."""
    if clients is None:
        ids = np.arange(n_clients, dtype=np.int64)
    else:
        ids = V.as_index_array("clients", clients, high=n_clients)
        if ids.shape[0] == 0:
            raise ValueError("clients must name at least one client")
    K = ids.shape[0]
    return ids, _as_epochs(epochs, K), _as_steps(max_steps, K)


def check_steps(offsets, ids, epochs, batch):
    """Refuse a training whose step count cannot be counted in int64 (the kernels compute
    ``epochs * batches per epoch``)."""
    n_batches = -(-(offsets[ids + 1] - offsets[ids]) // batch)
    approx = epochs.astype(np.float64) * n_batches  # within a few ulps of the exact count
    if approx.max() < MAX_STEPS / 2:
        return
    k = int(np.argmax(approx))
    steps = int(epochs[k]) * int(n_batches[k])  # exact, in Python integers
    if steps > MAX_STEPS:
        raise ValueError(f"epochs: {int(epochs[k])} epochs of {int(n_batches[k])} mini-batches "
                         f"is {steps} steps, more than 2**62")


def train_clients(model, params, X, y, client_offsets, *, rows=None, clients=None, epochs=1,
                  max_steps=None, batch_size=32, lr=0.01, momentum=0.0, weight_decay=0.0,
                  prox_mu=0.0, shuffle=True, seed=0, sample_weight=None, schedule="constant",
                  power_t=0.5, clip_norm=None, noise_multiplier=0.0, optimizer="sgd",
                  betas=(0.9, 0.999), eps=1e-8, nesterov=False, l2=0.0, device="cpu"):
    """Local SGD of K clients from the same starting ``params``, in parallel, in one call.

    Client k owns rows ``client_offsets[k]:client_offsets[k+1]`` of ``X`` and ``y``
    (sort or permute the rows once so that each client's rows are contiguous; no copy
    is made per client), or, with ``rows``, the rows ``rows[client_offsets[k]:
    client_offsets[k+1]]`` (a partition stored as a permutation plus offsets, see
    :func:`fastmb.partition.dirichlet`; read in place). Every option is as in
    :func:`sgd`. Client k shuffles with its own stream derived from ``(seed, k)``, so
    client 0 reproduces ``sgd(..., seed=seed)`` on its rows, a client trains the same bits
    whether it is trained alone, with others or on another machine, and the result is
    bit-identical on any number of threads. With ``clip_norm`` and ``noise_multiplier``
    every client runs DP-SGD (local differential privacy of each client's samples), each
    with its own noise.

    Parameters
    ----------
    model, params, X, y, sample_weight
        As in :func:`fastmb.loss`.
    client_offsets : (n_clients + 1,) increasing integers
    rows : (n_rows,) integers, optional
        Row indices into ``X``; client offsets then index this array.
    clients : (K,) integers, optional
        Train only these clients (e.g. the ones sampled this round); row k of the result
        is client ``clients[k]``. Default: all of them, in order.
    epochs : int or (K,) integers, default 1
        Local epochs, for all clients or per client.
    max_steps : int or (K,) integers, optional
        Stop a client after this many mini-batch steps (stragglers); a negative value or
        None means no limit. The learning-rate schedule still spans ``epochs``.
    batch_size, lr, momentum, weight_decay, prox_mu, shuffle, seed, schedule, power_t, \
clip_norm, noise_multiplier, optimizer, betas, eps, nesterov, l2
        As in :func:`sgd`. Each client starts Adam's moments at zero.
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"``: one thread block per client on the GPU, each client's samples pushed
        through the model one after the other (the CPU's sample-by-sample summation order;
        results agree with the CPU to float32 rounding, shuffles and DP noise are the same
        draws). ``params``, ``X``, ``y`` may be GPU arrays (see :func:`fastmb.loss`): keep
        the data and the global model there, and only the (K, P) result is new device
        memory each round; it stays on the GPU when ``X`` or ``params`` was there.

    Returns
    -------
    (K, P) array of the dtype of ``params``: row k is client k's trained parameters.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 4))
    >>> y = X @ [1.0, 2.0, 3.0, 4.0]
    >>> model = fastmb.Linear(4)
    >>> P = fastmb.train_clients(model, model.init(), X, y, [0, 100, 200, 300], epochs=2)
    >>> P.shape
    (3, 5)

    Clients 2 and 0 only, their rows given by a permutation, client 2 a straggler:

    >>> perm = rng.permutation(300)
    >>> Q = fastmb.train_clients(model, model.init(), X, y, [0, 100, 200, 300], rows=perm,
    ...                          clients=[2, 0], max_steps=[1, -1])
    >>> Q.shape
    (2, 5)
    """
    options = TrainOptions(batch_size=batch_size, lr=lr, momentum=momentum,
                           weight_decay=weight_decay, prox_mu=prox_mu, shuffle=shuffle, seed=seed,
                           schedule=schedule, power_t=power_t, clip_norm=clip_norm,
                           noise_multiplier=noise_multiplier, optimizer=optimizer,
                           betas=betas, eps=eps, nesterov=nesterov, l2=l2)
    options.check_sample_weight(sample_weight)
    gpu = _device.gpu(device)
    if gpu:
        if options.optimizer != "sgd" or options.nesterov or options.l2:
            raise ValueError("optimizer='adam', nesterov and l2 run on the CPU only (the GPU's "
                             "training kernel has SGD with momentum)")
        b = gpu.Batch(model, params, X, y, sample_weight)
        idx, off = _rows_and_offsets(b.n, client_offsets, rows)
        ids, ep, steps = _selection(off.shape[0] - 1, clients, epochs, max_steps)
        check_steps(off, ids, ep, options.batch_size)
        return gpu.train_clients(b, idx, off, options, ids, ep, steps)
    b, plan = plan_training(model, params, X, y, client_offsets, rows, options, sample_weight)
    ids, ep, steps = _selection(plan.offsets.shape[0] - 1, clients, epochs, max_steps)
    check_steps(plan.offsets, ids, ep, options.batch_size)
    out, bad = plan.run(b.params, ids, ep, steps)
    plan.raise_bad(bad)
    diverged = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if diverged.size:
        k = int(diverged[0])
        who = f" of client {int(ids[k])} (row {k} of the result)" if ids.shape[0] > 1 else ""
        raise ValueError(f"training diverged: the parameters{who} overflowed {out.dtype}; "
                         "lower lr or scale the inputs")
    return out


def _as_steps(max_steps, K):
    """Per-client step limits for the kernel (-1: no limit; more than 2**62 is no limit
    either, and is clipped there so that the kernel's arithmetic cannot wrap)."""
    if max_steps is None:
        return np.full(K, -1, np.int64)
    if not np.ndim(max_steps):
        v = V.check_number("max_steps", max_steps, integer=True)
        return np.full(K, min(max(v, -1), MAX_STEPS), np.int64)
    arr = V.as_index_array("max_steps", max_steps, low=V.INT64_MIN, high=V.INT64_MAX + 1,
                           length=K)
    return np.clip(arr, -1, MAX_STEPS)
