"""Compact models on the device: magnitude pruning, and a model file of sparse, int8 or half
weights that inference reads as stored.

:func:`prune` zeroes the smallest weights (biases are kept) to a target sparsity, per layer
or over the whole model. :class:`CompactModel` holds a model, or a slice ``[start, stop)``
of it, with each layer's weights in a format:

* ``"f32"``: dense float32;  ``"csr"``: the non-zero weights, CSR by input unit, float32;
* ``"int8"`` / ``"csr+int8"``: int8 codes with one float32 scale per input unit
  (``max |w| / 127``, rounded to nearest);
* ``"fp16"`` / ``"csr+fp16"``: IEEE half floats.

Inference (:meth:`CompactModel.decision_function`, :meth:`~CompactModel.predict`) runs
on that form (``kernels/compact.py``), never expanding it. :meth:`~CompactModel.to_bytes`
writes a versioned file (magic, version, a JSON header, the arrays, a CRC-32 of all of
it); :meth:`~CompactModel.from_bytes` checks the checksum and every length, offset and
index before anything reaches a kernel, so a truncated or altered file is a
``ValueError``, never a wrong model.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from .. import _validation as V
from ..kernels import compact as KC
from ..kernels import slicing as KS
from ..learn.gradients import Batch
from ..learn.options import TrainOptions
from ..learn.training import client_key, sgd
from ..models import MLP, Linear
from .depth import check_range
from .split import Party, batch_labels, label_pair

MAGIC = b"FMBCMPCT"
VERSION = 1
FORMATS = ("f32", "csr", "int8", "csr+int8", "fp16", "csr+fp16")
_ACT = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3}
_HEAD = struct.Struct("<8sHI")


def prune(model, params, sparsity, *, scope="layer"):
    """``params`` with the smallest-magnitude weights set to zero (a copy; biases kept).

    Parameters
    ----------
    model : fastmb.Linear or fastmb.MLP
    params : (P,) array
    sparsity : float in [0, 1)
        The share of each layer's weights (``scope="layer"``) or of all weights
        (``"global"``) set to zero: the ``floor(sparsity * n)`` smallest ``|w|``, ties broken
        by position.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import prune
    >>> m = fastmb.MLP([4, 8, 3]); p = prune(m, m.init(seed=0), 0.75)
    >>> [float(np.mean(W == 0)) for W, _ in m.layers(p)]
    [0.75, 0.75]
    """
    V.check_model(model)
    p = V.as_params(model, params).copy()
    s = V.check_number("sparsity", sparsity, low=0)
    if s >= 1:
        raise ValueError(f"sparsity must be in [0, 1), got {s}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    lay = model.layout
    spans = [(int(lay.w_off[l]), int(lay.w_off[l] + model.sizes[l] * model.sizes[l + 1]))
             for l in range(model.n_layers)]
    groups = [[sp] for sp in spans] if scope == "layer" else [spans]
    for group in groups:
        idx = np.concatenate([np.arange(a, b) for a, b in group])
        k = int(np.floor(s * idx.shape[0]))
        if k:
            order = np.argsort(np.abs(p[idx]), kind="stable")
            p[idx[order[:k]]] = 0
    return p


def prune_finetune(model, params, X, y, sparsity, *, epochs=5, scope="layer", seed=0,
                   mask_every="step", **options):
    """Prune to ``sparsity`` and retrain under the mask; the result holds exactly the pruned
    model's zeros.

    ``mask_every="step"`` (default): :func:`fastmb.sgd`'s epochs with the pruned weights
    set to zero after every mini-batch step (masked training: the kept weights learn with
    the pruned ones absent). One party over all the layers runs the training kernel's own
    code a mini-batch at a time (:class:`~fastmb.slicing.split.Party`); with nothing pruned
    it is ``fastmb.sgd(..., epochs=epochs, seed=seed)`` bit for bit. ``"epoch"``: each epoch
    is one ``fastmb.sgd`` call (seed ``seed + e``) and the mask is applied after it
    (iterative magnitude pruning with one fine-tuning epoch between projections).

    Parameters
    ----------
    model, params, X, y
        As in :func:`fastmb.sgd`.
    sparsity, scope
        As in :func:`prune`.
    epochs : int, default 5
    seed : int, default 0
    mask_every : {"step", "epoch"}
    **options
        The options of :func:`fastmb.sgd` (``batch_size``, ``lr``, ``momentum``, ...;
        not DP-SGD).

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import prune_finetune
    >>> X, y = fastmb.data.digits()[:2]
    >>> m = fastmb.MLP([64, 64, 10]); p = fastmb.sgd(m, m.init(), X, y, epochs=5, lr=0.05)
    >>> q = prune_finetune(m, p, X, y, 0.9, epochs=3, lr=0.05)
    >>> round(float(np.mean(m.layers(q)[0][0] == 0)), 3)
    0.9
    """
    if mask_every not in ("step", "epoch"):
        raise ValueError(f"mask_every must be 'step' or 'epoch', got {mask_every!r}")
    q = prune(model, params, sparsity, scope=scope)
    keep = q != 0
    lay = model.layout
    for l in range(model.n_layers):   # biases are never pruned, even when zero
        if lay.b_off[l] >= 0:
            keep[lay.b_off[l]:lay.b_off[l] + model.sizes[l + 1]] = True
    epochs = V.check_number("epochs", epochs, low=0, integer=True)
    if mask_every == "step":
        return masked_sgd(model, q, X, y, keep, epochs=epochs, seed=seed, **options)
    for e in range(epochs):
        q = sgd(model, q, X, y, epochs=1, seed=seed + e, **options)
        q[~keep] = 0
    return q


def masked_sgd(model, params, X, y, keep, *, epochs=1, seed=0, **options):
    """:func:`fastmb.sgd` with the parameters outside ``keep`` (a boolean mask of the
    model's parameters) set to zero before the first step and after every step.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import masked_sgd
    >>> X, y = fastmb.data.digits()[:2]
    >>> m = fastmb.MLP([64, 16, 10]); p = m.init()
    >>> keep = np.ones(m.n_params, bool)
    >>> bool((masked_sgd(m, p, X, y, keep, lr=0.05) == fastmb.sgd(m, p, X, y, lr=0.05)).all())
    True
    """
    opts = TrainOptions(seed=seed, **options)
    if opts.dp:
        raise ValueError("masked_sgd does not run DP-SGD (clip_norm)")
    b = Batch(model, params, X, y)
    keep = np.asarray(keep)
    if keep.dtype != np.bool_ or keep.shape != (model.n_params,):
        raise ValueError(f"keep must be a boolean mask of the model's {model.n_params} "
                         f"parameters, got {keep.dtype} of shape {keep.shape}")
    epochs = V.check_number("epochs", epochs, low=0, integer=True)
    drop = ~keep
    party = Party(model, np.where(keep, b.params, 0).astype(b.params.dtype), 0,
                  model.n_layers, opts)
    key = client_key(opts.seed)
    perm = np.empty(b.n, np.int64)
    bs = opts.batch_size
    n_batches = -(-b.n // bs)
    total = max(1, epochs * n_batches)
    t = 0
    for e in range(epochs):
        KS.epoch_order(b.n, key, e, opts.shuffle, perm)
        for s in range(n_batches):
            rows = np.ascontiguousarray(perm[s * bs:(s + 1) * bs])
            party._top(b.X, rows, *label_pair(b, batch_labels(b, rows)), True)
            party.step(rows.shape[0], t, total)
            party.params[drop] = 0
            t += 1
    return V.finite_result(party.params, "the masked training")


def _fmt(fmt):
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    return fmt.startswith("csr"), fmt.rsplit("+", 1)[-1] if "+" in fmt else (
        "f32" if fmt in ("f32", "csr") else fmt)


def _half_bits(W):
    with np.errstate(over="ignore"):
        h = W.astype(np.float16)
    if not np.isfinite(h).all():
        raise ValueError("a weight is beyond the half-float range (65504): use f32 or int8")
    return h.view(np.uint16)


class CompactModel:
    """A model (or a slice of it) with its weights in a compact format; see the module
    docstring. Build one with :meth:`from_params` or :meth:`from_bytes`.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.slicing import CompactModel, prune
    >>> m = fastmb.MLP([64, 128, 10]); p = prune(m, m.init(seed=0), 0.8)
    >>> cm = CompactModel.from_params(m, p, "csr+int8")
    >>> X = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    >>> bool(np.allclose(cm.decision_function(X), fastmb.decision_function(m, p, X),
    ...                  atol=0.05))
    True
    >>> cm.nbytes < 4 * m.n_params / 3, CompactModel.from_bytes(cm.to_bytes()).format
    (True, 'csr+int8')
    """

    def __init__(self, model, start, stop, fmt, layers):
        self.model, self.start, self.stop, self.format = model, start, stop, fmt
        self.layers = layers

    def __repr__(self):
        return (f"CompactModel({self.model!r}, layers [{self.start}, {self.stop}), "
                f"format={self.format!r}, {self.nbytes:,} bytes)")

    @classmethod
    def from_params(cls, model, params, fmt="csr", *, start=0, stop=None):
        """The layers ``[start, stop)`` of ``model`` with ``params`` in format ``fmt``."""
        start, stop = check_range(model, start, stop)
        p = V.as_params(model, params).astype(np.float32)
        sparse, kind = _fmt(fmt)
        layers = [_encode(W, b, sparse, kind) for W, b in model.layers(p)[start:stop]]
        return cls(model, start, stop, fmt, layers)

    # -- inference ------------------------------------------------------------------
    def decision_function(self, A):
        """The slice's outputs for input rows ``A`` (the model's input, or the activations
        at ``start``): raw outputs when the slice ends at the last layer."""
        A = V._as_numeric("A", A)
        width = self.model.sizes[self.start]
        if A.ndim != 2 or A.shape[1] != width or A.shape[0] == 0:
            raise ValueError(f"A must be a non-empty (n, {width}) array, got shape {A.shape}")
        A = V.kernel_array(A, np.float32)
        L = self.model.n_layers
        act = _ACT[self.model.activation]
        for l, lay in zip(range(self.start, self.stop), self.layers):
            out = np.empty((A.shape[0], self.model.sizes[l + 1]), np.float32)
            row = KC.compact_layer(A, lay["indptr"], lay["indices"], lay["kind"], lay["f32"],
                                   lay["i8"], lay["f16"], _table(), lay["scales"],
                                   lay["bias"], act, l < L - 1, out)
            if row >= 0:
                raise ValueError(f"row {row}: a NaN or Inf in the input, or outputs beyond "
                                 "float32")
            A = out
        return A

    def predict(self, X):
        """Predictions as :func:`fastmb.predict` makes them (the slice must end at the
        model's last layer)."""
        if self.stop != self.model.n_layers:
            raise ValueError("predict needs the model's last layer; this slice ends at "
                             f"{self.stop}")
        F = self.decision_function(X)
        loss = self.model.loss
        if loss == "softmax":
            return F.argmax(axis=1)
        if loss in ("logistic", "hinge"):
            return (F[:, 0] > 0).astype(np.int64)
        return F[:, 0] if F.shape[1] == 1 else F

    # -- file -----------------------------------------------------------------------
    @property
    def nbytes(self):
        """Bytes of the model file."""
        return len(self.to_bytes())

    def to_bytes(self):
        m = self.model
        header = {"sizes": list(m.sizes), "activation": m.activation, "loss": m.loss,
                  "fit_intercept": m.fit_intercept, "huber_delta": m.huber_delta,
                  "start": self.start, "stop": self.stop, "format": self.format,
                  "nnz": [int(lay["nnz"]) for lay in self.layers]}
        head = json.dumps(header, separators=(",", ":")).encode()
        parts = [_HEAD.pack(MAGIC, VERSION, len(head)), head]
        for lay in self.layers:
            for name in ("indptr", "indices", "f32", "i8", "scales", "f16", "bias"):
                parts.append(np.ascontiguousarray(lay[name]).tobytes())
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data):
        """The model of :meth:`to_bytes`'s ``data``, every field checked first."""
        try:
            data = bytes(memoryview(data))
        except TypeError:
            raise TypeError(f"data must be bytes, got {type(data).__name__}") from None
        if len(data) < _HEAD.size + 4:
            raise ValueError("not a compact model file: too short")
        body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
        magic, version, hlen = _HEAD.unpack_from(body)
        if magic != MAGIC:
            raise ValueError("not a compact model file: bad magic bytes")
        if version != VERSION:
            raise ValueError(f"compact model file version {version}; this fastmb reads "
                             f"{VERSION}")
        if zlib.crc32(body) != crc:
            raise ValueError("the compact model file is corrupt: its checksum does not match "
                             "(truncated or altered)")
        if _HEAD.size + hlen > len(body):
            raise ValueError("the compact model file's header runs past its end")
        try:
            h = json.loads(body[_HEAD.size:_HEAD.size + hlen])
        except (ValueError, UnicodeDecodeError):
            raise ValueError("the compact model file's header is not JSON") from None
        model, start, stop, fmt, nnz = _check_header(h)
        sparse, kind = _fmt(fmt)
        reader = _Reader(body, _HEAD.size + hlen)
        layers = []
        for i, l in enumerate(range(start, stop)):
            layers.append(_read_layer(reader, model.sizes[l], model.sizes[l + 1], nnz[i],
                                      sparse, kind, model.fit_intercept, l))
        if reader.pos != len(body):
            raise ValueError("the compact model file has bytes after its last layer")
        return cls(model, start, stop, fmt, layers)

    def save(self, path):
        """Write the model file (see :meth:`to_bytes`)."""
        with open(path, "wb") as fh:
            fh.write(self.to_bytes())

    @classmethod
    def load(cls, path):
        """Read a model file written by :meth:`save`."""
        with open(path, "rb") as fh:
            return cls.from_bytes(fh.read())


_TABLE = []


def _table():
    """The half-float decoding table, built on first use."""
    if not _TABLE:
        _TABLE.append(KC.half_table())
    return _TABLE[0]


def _encode(W, b, sparse, kind):
    nin, nout = W.shape
    if sparse:
        mask = W != 0
        indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
        indices = np.nonzero(mask)[1].astype(np.int32)
        vals = W[mask]
    else:
        indptr, indices = np.zeros(0, np.int32), np.zeros(0, np.int32)
        vals = W.ravel()
    lay = {"indptr": indptr, "indices": indices, "nnz": vals.shape[0] if sparse else -1,
           "kind": KC.KIND_F32, "f32": np.zeros(0, np.float32), "i8": np.zeros(0, np.int8),
           "f16": np.zeros(0, np.uint16), "scales": np.zeros(0, np.float32),
           "bias": np.zeros(0, np.float32) if b is None else np.asarray(b, np.float32)}
    if kind == "f32":
        lay["f32"] = np.ascontiguousarray(vals, np.float32)
    elif kind == "fp16":
        lay["kind"], lay["f16"] = KC.KIND_F16, _half_bits(vals)
    else:
        scales = (np.abs(W).max(axis=1) / 127.0).astype(np.float32)
        rows = np.repeat(np.arange(nin), np.diff(indptr)) if sparse else \
            np.repeat(np.arange(nin), nout)
        safe = np.where(scales > 0, scales, 1.0)
        lay["kind"], lay["scales"] = KC.KIND_I8, scales
        lay["i8"] = np.clip(np.rint(vals / safe[rows]), -127, 127).astype(np.int8)
    return lay


def _check_header(h):
    if not isinstance(h, dict):
        raise ValueError("the compact model file's header is not an object")
    want = {"sizes", "activation", "loss", "fit_intercept", "huber_delta", "start", "stop",
            "format", "nnz"}
    if set(h) != want:
        raise ValueError(f"the compact model file's header must have the keys {sorted(want)}")
    sizes = h["sizes"]
    if not (isinstance(sizes, list) and 2 <= len(sizes) <= 64 and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 1 << 20
            for s in sizes)):
        raise ValueError("the compact model file's sizes must be 2 to 64 layer widths in "
                         "[1, 2**20]")
    try:
        kw = dict(loss=h["loss"], fit_intercept=h["fit_intercept"],
                  huber_delta=h["huber_delta"])
        model = (Linear(sizes[0], sizes[1], **kw) if len(sizes) == 2
                 else MLP(sizes, activation=h["activation"], **kw))
        start, stop = check_range(model, h["start"], h["stop"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the compact model file describes no valid model: {exc}") from None
    if h["format"] not in FORMATS:
        raise ValueError(f"the compact model file's format {h['format']!r} is unknown")
    nnz = h["nnz"]
    sparse = h["format"].startswith("csr")
    if not (isinstance(nnz, list) and len(nnz) == stop - start):
        raise ValueError("the compact model file needs one nnz per layer")
    for i, l in enumerate(range(start, stop)):
        k = nnz[i]
        full = sizes[l] * sizes[l + 1]
        if not isinstance(k, int) or isinstance(k, bool) or (
                (k < 0 or k > full) if sparse else k != -1):
            raise ValueError(f"the compact model file's nnz of layer {l} is out of range")
    return model, start, stop, h["format"], nnz


class _Reader:
    def __init__(self, buf, pos):
        self.buf, self.pos = buf, pos

    def take(self, dtype, count, what):
        dtype = np.dtype(dtype)
        end = self.pos + count * dtype.itemsize
        if end > len(self.buf):
            raise ValueError(f"the compact model file ends inside {what}")
        out = np.frombuffer(self.buf, dtype, count, self.pos).copy()
        self.pos = end
        return out


def _read_layer(r, nin, nout, nnz, sparse, kind, has_b, l):
    lay = {"nnz": nnz, "kind": KC.KIND_F32, "f32": np.zeros(0, np.float32),
           "i8": np.zeros(0, np.int8), "f16": np.zeros(0, np.uint16),
           "scales": np.zeros(0, np.float32)}
    n = nnz if sparse else nin * nout
    if sparse:
        indptr = r.take(np.int32, nin + 1, f"layer {l}'s row offsets")
        if indptr[0] != 0 or indptr[-1] != nnz or (np.diff(indptr) < 0).any():
            raise ValueError(f"layer {l}'s row offsets must rise from 0 to nnz={nnz}")
        indices = r.take(np.int32, nnz, f"layer {l}'s column indices")
        if nnz and (indices.min() < 0 or indices.max() >= nout):
            raise ValueError(f"layer {l}'s column indices must lie in [0, {nout})")
        rows = np.repeat(np.arange(nin), np.diff(indptr))
        if nnz > 1 and ((np.diff(indices) <= 0) & (np.diff(rows) == 0)).any():
            raise ValueError(f"layer {l}'s column indices must increase within each row")
    else:
        indptr, indices = np.zeros(0, np.int32), np.zeros(0, np.int32)
    lay["indptr"], lay["indices"] = indptr, indices
    if kind == "f32":
        lay["f32"] = r.take(np.float32, n, f"layer {l}'s weights")
        ok = np.isfinite(lay["f32"]).all()
    elif kind == "int8":
        lay["kind"] = KC.KIND_I8
        lay["i8"] = r.take(np.int8, n, f"layer {l}'s int8 weights")
        lay["scales"] = r.take(np.float32, nin, f"layer {l}'s scales")
        ok = np.isfinite(lay["scales"]).all() and (lay["scales"] >= 0).all() and \
            (lay["i8"] != -128).all()
    else:
        lay["kind"] = KC.KIND_F16
        lay["f16"] = r.take(np.uint16, n, f"layer {l}'s half weights")
        ok = np.isfinite(lay["f16"].view(np.float16)).all()
    if not ok:
        raise ValueError(f"layer {l}'s weights hold NaN, Inf or out-of-range values")
    lay["bias"] = r.take(np.float32, nout if has_b else 0, f"layer {l}'s bias")
    if not np.isfinite(lay["bias"]).all():
        raise ValueError(f"layer {l}'s bias holds NaN or Inf")
    return lay
