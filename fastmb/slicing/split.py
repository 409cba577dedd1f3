"""Split learning: a model's layers trained on two parties that exchange arrays at the cuts.

Vanilla split learning (Gupta and Raskar 2018; Vepakomma et al. 2018): the client holds
layers ``[0, c)`` and its data, the server ``[c, L)`` and the loss; per mini-batch the
client sends the activations at the cut and the labels, the server returns the gradient
at the cut. U-shaped (``top=c2``): the client also holds ``[c2, L)`` and the labels,
which never leave it; the server holds ``[c1, c2)``, and four arrays cross per
mini-batch (activations up and down, gradients up and down).

Each party is a :class:`Party`: its own block of the parameters (``params[p0:p1]``), its
optimizer state, and three calls (``forward``, ``backward``, ``top``) that run the same
compiled code the unsplit training kernel runs for those layers (``kernels/slicing.py``),
then step its block with the training kernels' own update (``apply_update``). So
:func:`split_sgd` (one update per mini-batch) gives :func:`fastmb.sgd`'s parameters bit
for bit, with the same seed and options (momentum, Nesterov, weight decay, the proximal
term, L2, schedules, Adam), dense or sparse input, sample-by-sample (batch < 8) or
batched. Every message is an explicit array with its byte count (:class:`CutMessage`), to
put on any transport.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from .. import _validation as V
from ..aggregate.mean import fedavg
from ..kernels import slicing as KS
from ..kernels import training as KT
from ..kernels._input import SparseRows
from ..learn.gradients import Batch
from ..learn.options import TrainOptions
from ..learn.training import client_key, train_clients
from ..models import Layout
from .depth import check_cut, param_range
from .pipeline import SCHEDULES, Timeline, timeline


class CutMessage(NamedTuple):
    """One array crossing a cut: ``kind`` ("activations" or "gradient"), the cut (a layer
    index), the array, and the labels sent along (vanilla split learning's first message;
    else None)."""

    kind: str
    cut: int
    array: np.ndarray
    labels: np.ndarray | None = None

    @property
    def nbytes(self):
        """Bytes of the payload (the array and the labels)."""
        return int(self.array.nbytes + (0 if self.labels is None else self.labels.nbytes))


class SplitResult(NamedTuple):
    """:func:`split_sgd`'s result: the joined parameters, the bytes each way, the number
    of messages and of mini-batch steps, and the pipeline's :class:`Timeline` of one
    mini-batch."""

    params: np.ndarray
    bytes_up: int
    bytes_down: int
    messages: int
    steps: int
    timeline: Timeline


def block_layout(model, start, stop):
    """``model.layout`` with the weight and bias offsets of layers ``[start, stop)`` taken
    relative to the slice's first parameter: the kernels then index the slice's own block."""
    lay = model.layout
    p0, _ = param_range(model, start, stop)
    w_off = lay.w_off - p0
    b_off = np.where(lay.b_off >= 0, lay.b_off - p0, -1).astype(np.int64)
    return Layout(lay.sizes, w_off.astype(np.int64), b_off, lay.u_off, lay.act, lay.loss,
                  lay.hdelta)


class Party:
    """One party of split learning: layers ``[start, stop)`` of ``model``, its parameter
    block (a copy of ``params[p0:p1]``) and its optimizer state.

    A mini-batch is one or more micro-batches: ``forward`` for each, then ``backward`` (or
    ``top`` for the layers with the loss) for each, in micro-batch order, adding their
    gradients (``first=True`` starts a mini-batch); then ``step`` updates the block.

    Parameters
    ----------
    model : fastmb.MLP
    params : (P,) array
        The whole model's starting parameters (only the block is kept).
    start, stop : int
        The layers this party holds.
    options : TrainOptions
        As :func:`fastmb.sgd` takes them (no DP-SGD here).
    """

    def __init__(self, model, params, start, stop, options):
        self.model, self.start, self.stop = model, start, stop
        self.p0, self.p1 = param_range(model, start, stop)
        params = V.as_params(model, params)
        self.params = params[self.p0:self.p1].copy()
        self.params0 = self.params.copy()   # the proximal term's anchor (FedProx)
        self.spec = block_layout(model, start, stop)
        self.record = options.record(model)
        self.batched = self.record.path == KT.PATH_BATCHED
        n = self.params.shape[0]
        self.state = np.zeros(options.state_size(n), self.params.dtype)
        self.grad = np.zeros(n, self.params.dtype)
        self._scratch = np.zeros(n, self.params.dtype)
        # the weights the kernels compute with: the current ones, or with ``stale`` the ones
        # before the last update (asynchronous split learning, one step stale)
        self.stale = False
        self.weights = self.params
        self.seconds = {"forward": 0.0, "backward": 0.0}
        self.calls = {"forward": 0, "backward": 0}
        self.first_call = {}   # the first call of each kind: it may include compiling

    @property
    def nbytes(self):
        """Bytes of the party's parameters."""
        return int(self.params.nbytes)

    def activation_bytes(self, b):
        """Bytes a micro-batch of b rows leaves on this party between its forward and its
        backward: the input block, the layers' pre-activations and activations."""
        sizes = self.model.sizes
        units = sizes[self.start] + 2 * sum(sizes[self.start + 1:self.stop + 1])
        return int(b * units * self.params.itemsize)

    def _timed(self, what, t0):
        dt = time.perf_counter() - t0
        if what not in self.first_call:
            self.first_call[what] = dt
            return
        self.seconds[what] += dt
        self.calls[what] += 1

    def _input(self, X, rows):
        """``X`` in the kernels' form for this block (the model's input for the first block,
        dense or sparse; else a dense (n, width) array) and ``rows`` checked against it:
        the kernels index without bounds checks."""
        if isinstance(X, SparseRows) and self.start == 0:
            if X.n_cols != self.model.n_features:
                raise ValueError(f"X has {X.n_cols} features, the model {self.model.n_features}")
        elif self.start == 0:
            X = V.as_X(self.model, X, self.params.dtype)
        else:
            X = V._as_numeric("X", X)
            width = self.model.sizes[self.start]
            if X.ndim != 2 or X.shape[1] != width:
                raise ValueError(f"X must be (n, {width}): the activations at cut "
                                 f"{self.start}, got shape {X.shape}")
            X = V.kernel_array(X, self.params.dtype)
        return X, V.as_index_array("rows", rows, high=V.n_samples(X))

    def _g_out(self, G_out, b):
        G_out = V._as_numeric("G_out", G_out)
        if G_out.shape != (b, self.model.sizes[self.stop]):
            raise ValueError(f"G_out must have shape {(b, self.model.sizes[self.stop])}, got "
                             f"{G_out.shape}")
        return V.kernel_array(G_out, self.params.dtype)

    def forward(self, X, rows):
        """The block's outputs for rows ``rows`` of ``X`` (the model's input, or what the
        party below sent)."""
        return self._forward(*self._input(X, rows))

    def _forward(self, X, rows):
        # (split_sgd's own calls: X in the kernels' form, rows its own, checked once)
        t0 = time.perf_counter()
        out = np.empty((rows.shape[0], self.model.sizes[self.stop]), self.params.dtype)
        bad = KS.step_forward(self.weights, self.spec, X, rows, self.start, self.stop,
                              self.batched, out)
        self._timed("forward", t0)
        if bad >= 0:
            raise ValueError(f"a NaN or Inf reached layer {self.start} (input row {bad})")
        return out

    def _g_in(self, b):
        shape = (b, self.model.sizes[self.start]) if self.start > 0 else (0, 0)
        return np.empty(shape, self.params.dtype)

    def _target(self, first):
        # per row, the kernel adds to the mini-batch's sum (the unsplit row order); a
        # batched micro-batch's products are written apart and added
        return self.grad if first or not self.batched else self._scratch

    def _gathered(self, first):
        if not first and self.batched:
            self.grad += self._scratch

    def backward(self, X, rows, G_out, first=True):
        """Backward pass of a micro-batch given the gradient at the block's outputs, its
        gradient added to the mini-batch's; returns the gradient at the block's input
        (None for the first block)."""
        X, rows = self._input(X, rows)
        return self._backward(X, rows, self._g_out(G_out, rows.shape[0]), first)

    def _backward(self, X, rows, G_out, first):
        t0 = time.perf_counter()
        G_in = self._g_in(rows.shape[0])
        bad = KS.step_backward(self.weights, self.spec, X, rows, self.start, self.stop,
                               self.batched, G_out, self._target(first), G_in, not first)
        self._gathered(first)
        self._timed("backward", t0)
        if bad >= 0:
            raise ValueError(f"a NaN or Inf reached layer {self.start} (input row {bad})")
        return G_in if self.start > 0 else None

    def top(self, X, rows, y, first=True):
        """The top block with the loss (forward and backward of a micro-batch): ``y`` holds
        the labels of the rows ``rows`` (as :func:`fastmb.loss` takes them); returns the
        gradient at the block's input."""
        X, rows = self._input(X, rows)
        if self.stop != self.model.n_layers:
            raise ValueError(f"top() runs the layers with the loss; this party holds "
                             f"[{self.start}, {self.stop})")
        yc, yr = V.as_y(self.model, y, rows.shape[0], self.params.dtype)
        return self._top(X, rows, yc, yr, first)

    def _top(self, X, rows, yc, yr, first):
        labels = np.arange(rows.shape[0])
        t0 = time.perf_counter()
        G_in = self._g_in(rows.shape[0])
        bad = KS.step_top(self.weights, self.spec, X, rows, labels, yc, yr, self.start,
                          self.batched, self._target(first), G_in, not first)
        self._gathered(first)
        self._timed("backward", t0)
        if bad >= 0:
            raise ValueError(f"training diverged: the loss became NaN or Inf at row {bad}; "
                             "lower lr or scale the inputs")
        return G_in

    def step(self, b, t, total):
        """Update the block with the mini-batch's summed gradient (b rows), step t of
        total: the training kernels' own update."""
        r = self.record
        lr_t = KT.lr_at(r.lr_schedule, r.lr, r.power_t, t, total)
        if self.stale:
            self.weights = self.params.copy()   # the next step computes with these
        KT.apply_update(self.params, self.grad, self.state, self.params0, 0,
                        self.params.shape[0], self.start, self.stop, self.spec.sizes,
                        self.spec.w_off, 1.0 / b, lr_t, t, r)

    def mean_seconds(self):
        """Measured seconds per call: ``(forward, backward)`` (top: forward and backward
        together count as the backward). The first call of each kind is left out (it may
        include compiling), unless it was the only one."""
        return tuple(self.seconds[k] / self.calls[k] if self.calls[k]
                     else self.first_call.get(k, 0.0) for k in ("forward", "backward"))


def split_sgd(model, params, X, y, cut, *, top=None, epochs=1, batch_size=32, lr=0.01,
              momentum=0.0, weight_decay=0.0, prox_mu=0.0, shuffle=True, seed=0,
              schedule="constant", power_t=0.5, optimizer="sgd", betas=(0.9, 0.999), eps=1e-8,
              nesterov=False, l2=0.0, microbatches=1, pipeline="gpipe", bandwidth=None,
              latency=0.0, asynchronous=False):
    """Split learning of ``model`` on one client's data: :func:`fastmb.sgd`, with the layers
    cut between a client and a server that exchange :class:`CutMessage` arrays.

    Parameters
    ----------
    model : fastmb.MLP
        At least two layers.
    params, X, y
        As in :func:`fastmb.sgd` (``X`` dense or SciPy sparse).
    cut : int
        The client holds layers ``[0, cut)``, in ``[1, n_layers)``.
    top : int, optional
        U-shaped split learning: the client also holds layers ``[top, L)`` and the labels
        (``cut < top < L``); the server holds ``[cut, top)``.
    epochs, batch_size, lr, momentum, weight_decay, prox_mu, shuffle, seed, schedule, \
power_t, optimizer, betas, eps, nesterov, l2
        As in :func:`fastmb.sgd` (sample weights and DP-SGD are not offered here).
    microbatches : int, default 1
        Each mini-batch crosses the cuts as this many micro-batches (it must divide
        ``batch_size``; an epoch's last, shorter mini-batch is cut into pieces of
        ``batch_size / microbatches`` rows). The gradients of a mini-batch's micro-batches
        add up to one update.
    pipeline : {"gpipe", "1f1b"}
        The micro-batches' schedule, for the :class:`~fastmb.slicing.Timeline` report (the
        values do not depend on it: each party adds its micro-batches' gradients in order).
    bandwidth, latency : optional
        The link the report's transfers cross (bytes per second, seconds).
    asynchronous : bool, default False
        The client does not wait for the gradient of its last mini-batch before it sends
        the next one: its layers compute each mini-batch with the weights from before its
        last update (one step stale), and the update computed from them is applied to its
        current weights (delayed-gradient SGD). The server's layers are never stale. The
        results then differ from ``fastmb.sgd``'s, as they must.

    Returns
    -------
    SplitResult
        ``params`` equals ``fastmb.sgd(model, params, X, y, ...)`` with the same options,
        bit for bit (with micro-batches too on the sample-by-sample path, batch < 8;
        batched, a mini-batch's matrix products are then summed in pieces: equal to
        rounding). ``bytes_up``/``bytes_down`` count the payloads client -> server and back;
        ``timeline`` lays out one full mini-batch on the parties' measured speeds.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import split_sgd
    >>> model = fastmb.MLP([8, 16, 12, 3])
    >>> X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    >>> y = np.arange(64) % 3
    >>> res = split_sgd(model, model.init(), X, y, cut=1, batch_size=16, lr=0.1, momentum=0.9)
    >>> bool((res.params == fastmb.sgd(model, model.init(), X, y, batch_size=16, lr=0.1,
    ...                                momentum=0.9)).all())
    True
    >>> res.bytes_up, res.bytes_down, res.messages    # 64 rows x 16 floats (+ labels), back
    (4608, 4096, 8)
    """
    V.check_model(model)
    c = check_cut(model, cut)
    L = model.n_layers
    if top is not None:
        top = V.check_number("top", top, low=1, integer=True)
        if not c < top < L:
            raise ValueError(f"top must be in ({c}, {L}) for a U-shaped split at cut={c} "
                             f"(the client's top layers [top, {L})), got {top}")
    options = TrainOptions(batch_size=batch_size, lr=lr, momentum=momentum,
                           weight_decay=weight_decay, prox_mu=prox_mu, shuffle=shuffle,
                           seed=seed, schedule=schedule, power_t=power_t, optimizer=optimizer,
                           betas=betas, eps=eps, nesterov=nesterov, l2=l2)
    epochs = V.check_number("epochs", epochs, low=0, integer=True)
    m = V.check_number("microbatches", microbatches, low=1, integer=True)
    if options.batch_size % m:
        raise ValueError(f"microbatches={m} must divide batch_size={options.batch_size}")
    if pipeline not in SCHEDULES:
        raise ValueError(f"pipeline must be one of {list(SCHEDULES)}, got {pipeline!r}")
    b = Batch(model, params, X, y)
    dtype = b.params.dtype
    parties = [Party(model, b.params, 0, c, options),
               Party(model, b.params, c, L if top is None else top, options)]
    if top is not None:
        parties.append(Party(model, b.params, top, L, options))
    if not isinstance(asynchronous, (bool, np.bool_)):
        raise TypeError(f"asynchronous must be a bool, got {type(asynchronous).__name__}")
    parties[0].stale = bool(asynchronous)
    traffic = {"up": 0, "down": 0, "messages": 0}
    t = _train(parties, b, 0, b.n, client_key(options.seed), options, epochs, m, c, top,
               traffic)
    micro = options.batch_size // m
    out = np.concatenate([p.params for p in parties]).astype(dtype, copy=False)
    return SplitResult(out, traffic["up"], traffic["down"], traffic["messages"], t,
                       _report(parties, model, c, top, micro, m, pipeline, b, bandwidth,
                               latency))


def _train(parties, b, lo, n, key, options, epochs, m, c, top, traffic):
    """``epochs`` of the rows ``lo:lo + n`` of ``b`` through the parties, shuffled with the
    stream ``key`` as the training kernel shuffles a client's rows; returns the steps."""
    perm = np.empty(n, np.int64)
    bs = options.batch_size
    micro = bs // m
    n_batches = -(-n // bs)
    total = max(1, epochs * n_batches)
    t = 0
    for e in range(epochs):
        KS.epoch_order(n, key, e, options.shuffle, perm)
        for s in range(n_batches):
            rows = lo + perm[s * bs:(s + 1) * bs]
            for k, r0 in enumerate(range(0, rows.shape[0], micro)):
                _micro_step(parties, b, np.ascontiguousarray(rows[r0:r0 + micro]), c, top,
                            k == 0, traffic)
            for party in parties:
                party.step(rows.shape[0], t, total)
            t += 1
    return t


def _micro_step(parties, b, rows, c, top, first, traffic):
    """One micro-batch through the parties, every crossing an explicit message (the
    arrays are the parties' own: no checks again on the way)."""
    local = np.arange(rows.shape[0])
    client, server = parties[0], parties[1]
    H = client._forward(b.X, rows)
    if top is None:
        msg = CutMessage("activations", c, H, batch_labels(b, rows))
        G_cut = server._top(msg.array, local, *label_pair(b, msg.labels), first)
        back = CutMessage("gradient", c, G_cut)
        crossings = [msg, back]
        traffic["up"] += msg.nbytes
    else:
        up1 = CutMessage("activations", c, H)
        down1 = CutMessage("activations", top, server._forward(up1.array, local))
        up2 = CutMessage("gradient", top, parties[2]._top(
            down1.array, local, *label_pair(b, batch_labels(b, rows)), first))
        back = CutMessage("gradient", c, server._backward(up1.array, local, up2.array, first))
        crossings = [up1, down1, up2, back]
        traffic["up"] += up1.nbytes + up2.nbytes
        traffic["down"] += down1.nbytes
    traffic["down"] += back.nbytes
    traffic["messages"] += len(crossings)
    client._backward(b.X, rows, back.array, first)


def _report(parties, model, c, top, micro, m, pipeline, b, bandwidth, latency):
    """The timeline of one full mini-batch on the measured speeds. A party that runs a
    top block measures forward and backward in one call: a third of it is counted as
    the forward (an MLP's backward costs about twice its forward's multiply-adds)."""
    fwd, bwd = [], []
    for party in parties:
        f, bk = party.mean_seconds()
        if party.stop == model.n_layers:
            f, bk = bk / 3, 2 * bk / 3
        fwd.append(f)
        bwd.append(bk)
    item = parties[0].params.itemsize
    lab = batch_labels(b, np.zeros(micro, np.int64)).nbytes
    if top is None:
        up = [micro * model.sizes[c] * item + lab]
        down = [micro * model.sizes[c] * item]
    else:
        up = [micro * model.sizes[c] * item, micro * model.sizes[top] * item]
        down = [micro * model.sizes[c] * item, micro * model.sizes[top] * item]
    acts = [party.activation_bytes(micro) for party in parties]
    return timeline(fwd, bwd, m, pipeline, up_bytes=up, down_bytes=down, bandwidth=bandwidth,
                    latency=latency, activation_bytes=acts)


def batch_labels(b, rows):
    """The labels of ``rows`` as they travel with the activations."""
    return (b.yc if b.yc.shape[0] else b.yr)[rows]


def label_pair(b, labels):
    """``(yc, yr)`` as the kernels take them, for a micro-batch's (checked) labels."""
    if b.yc.shape[0]:
        return labels, b.yr
    return b.yc, np.ascontiguousarray(labels)



class SplitFedResult(NamedTuple):
    """:func:`splitfed`'s round: the new global parameters, the bytes each way over all
    clients (activations, gradients and labels at the cut; the client-side blocks sent up
    for averaging and the average sent back), and the messages at the cut."""

    params: np.ndarray
    bytes_up: int
    bytes_down: int
    messages: int


def splitfed(model, params, X, y, client_offsets, cut, *, version=1, clients=None, epochs=1,
             batch_size=32, lr=0.01, momentum=0.0, weight_decay=0.0, prox_mu=0.0, shuffle=True,
             seed=0, schedule="constant", power_t=0.5, optimizer="sgd", betas=(0.9, 0.999),
             eps=1e-8, nesterov=False, l2=0.0, engine="kernel"):
    """One round of SplitFed (Thapa et al. 2022): many clients' split learning, then FedAvg.

    Client k owns rows ``client_offsets[k]:client_offsets[k + 1]`` (as in
    :func:`fastmb.train_clients`) and holds layers ``[0, cut)``; the main server holds
    ``[cut, L)``, and a fed server averages the clients' blocks by their rows.

    * ``version=1`` (SplitFedV1): the main server keeps one copy of its layers per client,
      each trained with its client; at the end both halves are averaged. This is FedAvg of
      the clients' local training, split at the cut: with the same options it equals
      ``fastmb.fedavg(fastmb.train_clients(...), weights=rows)`` bit for bit.
    * ``version=2`` (SplitFedV2): one copy of the server's layers, trained by the clients
      one after the other (in ``clients`` order), its optimizer state carried from client
      to client; the clients' blocks are averaged at the end.

    Parameters
    ----------
    model, params, X, y, client_offsets, clients
        As in :func:`fastmb.train_clients` (``clients``: the round's clients, default all).
    cut : int
        The clients' layers ``[0, cut)``.
    version : {1, 2}
    epochs, batch_size, lr, momentum, weight_decay, prox_mu, shuffle, seed, schedule, \\
power_t, optimizer, betas, eps, nesterov, l2
        As in :func:`fastmb.train_clients`: client k shuffles with its own stream of
        ``seed``, as there.

    Returns
    -------
    SplitFedResult

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import splitfed
    >>> model = fastmb.MLP([6, 8, 3]); p = model.init()
    >>> X = np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32)
    >>> y = np.arange(60) % 3; off = [0, 20, 45, 60]
    >>> res = splitfed(model, p, X, y, off, cut=1, batch_size=8, lr=0.1)
    >>> U = fastmb.train_clients(model, p, X, y, off, batch_size=8, lr=0.1)
    >>> bool((res.params == fastmb.fedavg(U, weights=[20, 25, 15])).all())
    True
    """
    V.check_model(model)
    c = check_cut(model, cut)
    if version not in (1, 2):
        raise ValueError(f"version must be 1 (SplitFedV1) or 2 (SplitFedV2), got {version!r}")
    options = TrainOptions(batch_size=batch_size, lr=lr, momentum=momentum,
                           weight_decay=weight_decay, prox_mu=prox_mu, shuffle=shuffle,
                           seed=seed, schedule=schedule, power_t=power_t, optimizer=optimizer,
                           betas=betas, eps=eps, nesterov=nesterov, l2=l2)
    epochs = V.check_number("epochs", epochs, low=0, integer=True)
    b = Batch(model, params, X, y)
    off = V.as_offsets("client_offsets", client_offsets, b.n, "rows of X")
    K = off.shape[0] - 1
    ids = np.arange(K) if clients is None else V.as_index_array("clients", clients, high=K)
    if ids.shape[0] == 0:
        raise ValueError("clients is empty: a round needs at least one client")
    keys = np.empty(ids.shape[0], np.uint64)
    KT.client_keys(np.uint64(options.seed), ids, keys)
    L = model.n_layers
    traffic = {"up": 0, "down": 0, "messages": 0}
    p_cut = param_range(model, 0, c)[1]
    rows = (off[ids + 1] - off[ids]).astype(np.float64)
    blk = p_cut * b.params.itemsize
    if engine not in ("kernel", "parties"):
        raise ValueError(f"engine must be 'kernel' or 'parties', got {engine!r}")
    if version == 1 and engine == "kernel":
        U = train_clients(model, b.params, X, y, off, clients=ids, epochs=epochs,
                          batch_size=options.batch_size, lr=options.lr,
                          momentum=options.momentum, weight_decay=options.weight_decay,
                          prox_mu=options.prox_mu, shuffle=options.shuffle, seed=options.seed,
                          schedule=options.schedule, power_t=options.power_t,
                          optimizer=options.optimizer, betas=options.betas, eps=options.eps,
                          nesterov=options.nesterov, l2=options.l2)
        # what the cut carried: each epoch, every row's activations (and label) up and its
        # gradient down, two messages a mini-batch; the client blocks up and back once
        item = b.params.itemsize
        label_bytes = batch_labels(b, np.zeros(1, np.int64)).nbytes   # one row's label
        n_rows = int(rows.sum())
        batches = int(sum(-(-int(n) // options.batch_size) for n in rows))
        up = epochs * n_rows * (model.sizes[c] * item + label_bytes) + len(ids) * blk
        down = epochs * n_rows * model.sizes[c] * item + len(ids) * blk
        return SplitFedResult(fedavg(U, weights=rows), up, down, 2 * epochs * batches)
    bottoms, tops = [], []
    server = Party(model, b.params, c, L, options)
    for k, key in zip(ids, keys):
        if version == 1:
            server = Party(model, b.params, c, L, options)
        client = Party(model, b.params, 0, c, options)
        _train([client, server], b, int(off[k]), int(off[k + 1] - off[k]), key, options,
               epochs, 1, c, None, traffic)
        bottoms.append(client.params)
        tops.append(server.params.copy())
    bottom = fedavg(np.stack(bottoms), weights=rows)
    top = fedavg(np.stack(tops), weights=rows) if version == 1 else tops[-1]
    # the clients' blocks go up for averaging and the average comes back
    traffic["up"] += len(ids) * blk
    traffic["down"] += len(ids) * blk
    return SplitFedResult(np.concatenate([bottom, top]), traffic["up"], traffic["down"],
                          traffic["messages"])
