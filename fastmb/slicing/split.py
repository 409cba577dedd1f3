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

from typing import NamedTuple

import numpy as np

from .. import _validation as V
from ..kernels import slicing as KS
from ..kernels import training as KT
from ..learn.gradients import Batch
from ..learn.options import TrainOptions
from ..models import Layout
from .depth import check_cut, param_range


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
    of messages and of mini-batch steps."""

    params: np.ndarray
    bytes_up: int
    bytes_down: int
    messages: int
    steps: int


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

    @property
    def nbytes(self):
        """Bytes of the party's parameters."""
        return int(self.params.nbytes)

    def forward(self, X, rows):
        """The block's outputs for rows ``rows`` of ``X`` (the model's input, or what the
        party below sent)."""
        out = np.empty((rows.shape[0], self.model.sizes[self.stop]), self.params.dtype)
        bad = KS.step_forward(self.params, self.spec, X, rows, self.start, self.stop,
                              self.batched, out)
        if bad >= 0:
            raise ValueError(f"a NaN or Inf reached layer {self.start} (input row {bad})")
        return out

    def _g_in(self, b):
        shape = (b, self.model.sizes[self.start]) if self.start > 0 else (0, 0)
        return np.empty(shape, self.params.dtype)

    def backward(self, X, rows, G_out, t, total):
        """Backward pass given the gradient at the block's outputs, then the step ``t`` of
        ``total``; returns the gradient at the block's input (None for the first block)."""
        G_in = self._g_in(rows.shape[0])
        bad = KS.step_backward(self.params, self.spec, X, rows, self.start, self.stop,
                               self.batched, G_out, self.grad, G_in)
        if bad >= 0:
            raise ValueError(f"a NaN or Inf reached layer {self.start} (input row {bad})")
        self._step(rows.shape[0], t, total)
        return G_in if self.start > 0 else None

    def top(self, X, rows, labels, yc, yr, t, total):
        """The top block with the loss on the labels of rows ``labels``; steps and returns
        the gradient at the block's input."""
        G_in = self._g_in(rows.shape[0])
        bad = KS.step_top(self.params, self.spec, X, rows, labels, yc, yr, self.start,
                          self.batched, self.grad, G_in)
        if bad >= 0:
            raise ValueError(f"training diverged: the loss became NaN or Inf at row {bad}; "
                             "lower lr or scale the inputs")
        self._step(rows.shape[0], t, total)
        return G_in

    def _step(self, b, t, total):
        r = self.record
        lr_t = KT.lr_at(r.lr_schedule, r.lr, r.power_t, t, total)
        KT.apply_update(self.params, self.grad, self.state, self.params0, 0,
                        self.params.shape[0], self.start, self.stop, self.spec.sizes,
                        self.spec.w_off, 1.0 / b, lr_t, t, r)


def split_sgd(model, params, X, y, cut, *, top=None, epochs=1, batch_size=32, lr=0.01,
              momentum=0.0, weight_decay=0.0, prox_mu=0.0, shuffle=True, seed=0,
              schedule="constant", power_t=0.5, optimizer="sgd", betas=(0.9, 0.999), eps=1e-8,
              nesterov=False, l2=0.0):
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

    Returns
    -------
    SplitResult
        ``params`` equals ``fastmb.sgd(model, params, X, y, ...)`` with the same options,
        bit for bit; ``bytes_up``/``bytes_down`` count the payloads client -> server and
        back.

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
    b = Batch(model, params, X, y)
    dtype = b.params.dtype
    client = Party(model, b.params, 0, c, options)
    server = Party(model, b.params, c, L if top is None else top, options)
    client_top = None if top is None else Party(model, b.params, top, L, options)
    n = b.n
    keys = np.empty(1, np.uint64)
    KT.client_keys(np.uint64(options.seed), np.zeros(1, np.int64), keys)
    perm = np.empty(n, np.int64)
    n_batches = -(-n // options.batch_size)
    total = max(1, epochs * n_batches)
    up = down = messages = 0
    t = 0
    for e in range(epochs):
        KS.epoch_order(n, keys[0], e, options.shuffle, perm)
        for s in range(n_batches):
            rows = np.ascontiguousarray(perm[s * options.batch_size:(s + 1) *
                                             options.batch_size])
            local = np.arange(rows.shape[0])
            H = client.forward(b.X, rows)
            if client_top is None:
                msg = CutMessage("activations", c, H, _labels(b, rows))
                up += msg.nbytes
                G_cut = server.top(msg.array, local, local, *_label_arrays(b, msg.labels),
                                   t, total)
                back = CutMessage("gradient", c, G_cut)
                down += back.nbytes
                messages += 2
            else:
                up += CutMessage("activations", c, H).nbytes
                H2 = server.forward(H, local)
                down += CutMessage("activations", top, H2).nbytes
                G2 = client_top.top(H2, local, rows, b.yc, b.yr, t, total)
                up += CutMessage("gradient", top, G2).nbytes
                G_cut = server.backward(H, local, G2, t, total)
                back = CutMessage("gradient", c, G_cut)
                down += back.nbytes
                messages += 4
            client.backward(b.X, rows, back.array, t, total)
            t += 1
    parts = [client, server] + ([] if client_top is None else [client_top])
    out = np.concatenate([p.params for p in parts]).astype(dtype, copy=False)
    return SplitResult(out, up, down, messages, t)


def _labels(b, rows):
    """The labels of ``rows`` as they travel with the activations."""
    return (b.yc if b.yc.shape[0] else b.yr)[rows]


def _label_arrays(b, labels):
    """``(yc, yr)`` as the kernels take them, from the labels a message carried."""
    if b.yc.shape[0]:
        return labels, b.yr
    return b.yc, labels
