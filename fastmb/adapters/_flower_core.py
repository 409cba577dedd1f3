"""What both of Flower's strategy APIs share: the wire format, a round's updates, the rules.

Flower sends every array as the bytes of a ``.npy`` file (``np.save``), in a Message API
``Array`` (``stype="numpy.ndarray"``) or in a legacy ``Parameters.tensors`` list alike.
:func:`array_from_npy` reads one as a NumPy view of those bytes (no copy; the header is
parsed once per distinct header and cached), and :class:`RoundUpdates` holds a round's K
models as such views: the weighted mean reads them through their addresses in one kernel
call (``kernels.aggregation.weighted_mean_at``), so K models are never stacked for FedAvg;
the rules that need every update at once (median, trimmed mean, the Krum family) gather
one (K, P) stack in one parallel copy.

The formulas here are Flower's where Flower's differ from fastmb's own rules (the README's
"Flower" section lists each); the arithmetic is fastmb's: float64 sums, fixed orders.
This module imports nothing from Flower: the two strategy modules do.
"""

from __future__ import annotations

import ast

import numpy as np

from .. import _validation as V
from ..aggregate import robust as R
from ..aggregate import rules
from ..kernels import aggregation as KA
from ..kernels import robust as KR
from ..kernels import server as KS

_MAGIC = b"\x93NUMPY"
_HEADERS: dict[bytes, tuple] = {}  # the header's bytes -> (dtype, shape, fortran, offset)
_MAX_HEADERS = 4096


# ----------------------------------------------------------------------------- wire format


def _parse_header(head, name):
    """``(dtype, shape, fortran_order)`` of a ``.npy`` header dictionary (a Python literal,
    read with ``ast.literal_eval``, as NumPy reads it), checked."""
    try:
        d = ast.literal_eval(head.decode("latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise ValueError(f"{name}: the .npy header is not a Python literal") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"{name}: the .npy header must have exactly the keys descr, "
                         f"fortran_order and shape")
    shape, fortran = d["shape"], d["fortran_order"]
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and not isinstance(n, bool)
                                             and 0 <= n < 2**62 for n in shape)):
        raise ValueError(f"{name}: the .npy shape must be a tuple of non-negative ints, got "
                         f"{shape!r}")
    if not isinstance(fortran, bool):
        raise ValueError(f"{name}: fortran_order must be True or False, got {fortran!r}")
    try:
        dtype = np.dtype(d["descr"]) if isinstance(d["descr"], str) else None
    except Exception:  # np.dtype parses a hostile string with ast: SyntaxError and others
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise ValueError(f"{name}: the array must hold real numbers (bool, int or float), "
                         f"got descr {d['descr']!r}")
    return dtype, shape, fortran


def array_from_npy(data, name="data"):
    """The array in the ``.npy`` bytes ``data``, as a read-only view of them (no copy).

    This is how Flower ships arrays (``flwr.app.Array.data`` with ``stype
    "numpy.ndarray"``, and each of a legacy ``Parameters``' tensors). The header is
    checked (format versions 1 and 2, a real dtype, no pickled objects) and the payload
    must hold exactly the shape's elements; anything else raises ``ValueError``, so a
    truncated or altered message is refused, never read past its end.

    Parameters
    ----------
    data : bytes-like
    name : str
        How errors name the array.

    Examples
    --------
    >>> import io, numpy as np
    >>> from fastmb.adapters._flower_core import array_from_npy
    >>> buf = io.BytesIO(); np.save(buf, np.arange(3.0))
    >>> array_from_npy(buf.getvalue())
    array([0., 1., 2.])
    """
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError(f"{name} must be bytes, got {type(data).__name__}") from None
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    size = mv.nbytes
    if size < 10 or mv[:6] != _MAGIC:
        raise ValueError(f"{name} is not a .npy array (bad magic bytes)")
    major = mv[6]
    if major == 1:
        start = 10
        hlen = int.from_bytes(mv[8:10], "little")
    elif major == 2:
        start = 12
        if size < 12:
            raise ValueError(f"{name}: truncated .npy header")
        hlen = int.from_bytes(mv[8:12], "little")
    else:
        raise ValueError(f"{name}: unsupported .npy format version {major}")
    end = start + hlen
    if end > size:
        raise ValueError(f"{name}: truncated .npy header ({hlen} bytes announced, "
                         f"{size - start} present)")
    key = bytes(mv[:end])
    parsed = _HEADERS.get(key)
    if parsed is None:
        parsed = _parse_header(key[start:], name)
        if len(_HEADERS) >= _MAX_HEADERS:
            _HEADERS.clear()
        _HEADERS[key] = parsed
    dtype, shape, fortran = parsed
    count = 1
    for n in shape:
        count *= n
    if size - end != count * dtype.itemsize:
        raise ValueError(f"{name}: the .npy payload holds {size - end} bytes, the header's "
                         f"shape {shape} of {dtype} needs {count * dtype.itemsize}")
    flat = np.frombuffer(mv, dtype, count, end)
    return flat.reshape(shape, order="F" if fortran else "C")


def npy_bytes(a):
    """``a`` as ``.npy`` bytes (``np.save``'s format, version 1): a header, then the
    values in C order. One copy of the values; what Flower's own serializers write."""
    a = np.asarray(a)
    descr = np.lib.format.dtype_to_descr(a.dtype)
    head = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {a.shape!r}, }}"
    # pad with spaces to a multiple of 64 bytes, newline-terminated (as np.save does)
    pad = 64 - (10 + len(head) + 1) % 64
    head = (head + " " * (pad % 64) + "\n").encode("latin1")
    if len(head) > 65535:
        raise ValueError(f"array shape {a.shape} needs a .npy header beyond format 1.0")
    return _MAGIC + b"\x01\x00" + len(head).to_bytes(2, "little") + head \
        + np.ascontiguousarray(a).tobytes()


# ----------------------------------------------------------------------------- a round


def result_dtype(dtypes):
    """The dtype Flower's arithmetic gives an average of arrays of ``dtypes``
    (``array * float``: float16/32/64 stay, integers and booleans become float64)."""
    return np.result_type(*dtypes, 1.0)  # (any iterable of dtypes)


def _tasks(lengths):
    """``(s, lo)`` blocks of ``KA.MEAN_BLOCK`` values over segments of ``lengths``."""
    parts = [np.stack([np.full(-(-n // KA.MEAN_BLOCK), s), np.arange(0, n, KA.MEAN_BLOCK)], 1)
             for s, n in enumerate(lengths) if n]
    if not parts:
        return np.zeros((0, 2), np.int64)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.int64)


class _Group:
    """The segments (arrays) of a model that are computed in one dtype (float32 or float64):
    each client's array of each segment by address, with the place in a flat vector."""

    def __init__(self, dtype, keys, lengths, addrs, keep):
        self.dtype = dtype
        self.keys = keys
        self.off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.addrs = addrs
        self.tasks = _tasks(lengths)
        self._keep = keep  # the buffers the addresses point into: alive while the group is

    @property
    def size(self):
        return int(self.off[-1])

    def mean(self, rel, inv_total):
        out = np.empty(self.size, self.dtype)
        if self.size:
            kernel = KA.weighted_mean_at.for_size(self.addrs.shape[0] * self.size)
            if kernel(self.addrs, self.off, self.tasks, rel, inv_total, out):
                raise ValueError("the weighted mean overflows the dtype of the arrays")
        return out

    def stack(self):
        U = np.empty((self.addrs.shape[0], self.size), self.dtype)
        if self.size:
            KA.gather_at.for_size(U.size)(self.addrs, self.off, self.tasks, U)
        return U

    def split(self, flat):
        return {k: flat[self.off[i]:self.off[i + 1]] for i, k in enumerate(self.keys)}


class RoundUpdates:
    """One round's K client models, each a mapping key -> array (same keys and shapes),
    read in place where their dtype allows it.

    Parameters
    ----------
    models : list of list of (key, array)
        Client k's arrays in order (the first client's order is the result's order).
    clients : list of str
        How errors name each client.
    """

    def __init__(self, models, clients):
        if not models:
            raise ValueError("no client results to aggregate")
        self.K = len(models)
        first = models[0]
        self.keys = [k for k, _ in first]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"{clients[0]}: repeated array keys")
        self.shapes = {k: a.shape for k, a in first}
        per_key = {k: [] for k in self.keys}
        for model, who in zip(models, clients):
            if [k for k, _ in model] != self.keys:
                got = sorted(k for k, _ in model)
                if got != sorted(self.keys):
                    raise ValueError(f"{who} sent the arrays {got}; {clients[0]} sent "
                                     f"{sorted(self.keys)}")
                model = sorted(model, key=lambda kv: self.keys.index(kv[0]))
            for k, a in model:
                if a.shape != self.shapes[k]:
                    raise ValueError(f"{who}: array {k!r} has shape {a.shape}, "
                                     f"{clients[0]}'s has {self.shapes[k]}")
                per_key[k].append(a)
        self.out_dtype = {k: result_dtype({a.dtype for a in per_key[k]}) for k in self.keys}
        self.groups = []
        for dt in (np.dtype(np.float32), np.dtype(np.float64)):
            keys = [k for k in self.keys
                    if (self.out_dtype[k] == np.float32) == (dt == np.float32)]
            if not keys:
                continue
            addrs, keep = [], []
            for k in keys:
                for a in per_key[k]:
                    if not (a.dtype is dt or a.dtype == dt) or not a.flags.c_contiguous:
                        a = np.ascontiguousarray(a, dt)  # the one copy: a converted array
                    keep.append(a)
                    addrs.append(a.__array_interface__["data"][0])
            addrs = np.array(addrs, np.int64).reshape(len(keys), self.K).T.copy()
            lengths = [keep[i * self.K].size for i in range(len(keys))]
            self.groups.append(_Group(dt, keys, lengths, addrs, keep))
        self.clients = clients
        self._per_key = per_key

    @property
    def n_params(self):
        return sum(g.size for g in self.groups)

    def arrays(self, k):
        """Client k's arrays, as sent (views), in key order."""
        return [self._per_key[key][k] for key in self.keys]

    def _shaped(self, flats):
        """key -> array of the key's shape and Flower's result dtype, from per-group flats."""
        out = {}
        for g, flat in zip(self.groups, flats):
            for k, v in g.split(flat).items():
                out[k] = v.reshape(self.shapes[k]).astype(self.out_dtype[k], copy=False)
        return {k: out[k] for k in self.keys}

    def check_finite(self):
        """Raise, naming the clients, when an array holds NaN or Inf."""
        bad = set()
        for g in self.groups:
            bad.update(np.flatnonzero(R.nonfinite_rows(g.stack())).tolist())
        if bad:
            raise ValueError("NaN or Inf in the arrays of "
                             + ", ".join(self.clients[i] for i in sorted(bad)))

    # -- rules ------------------------------------------------------------------------
    def mean(self, weights, subset=None):
        """Weighted mean (FedAvg) of the clients (or of ``subset``), by ``weights``."""
        w = V.as_weights(weights, self.K, "weights", "client")
        groups = self.groups
        if subset is not None:
            subset = np.asarray(subset, np.int64)
            w = w[subset]
            if not w.any():
                raise ValueError("weights of the selected clients are all zero")
            groups = [_Group(g.dtype, g.keys, np.diff(g.off), np.ascontiguousarray(
                g.addrs[subset]), g._keep) for g in self.groups]
        rel, inv = V.relative_weights(w)
        try:
            return self._shaped([g.mean(rel, inv) for g in groups])
        except ValueError:
            self.check_finite()
            raise

    def flats(self):
        """The groups' (K, P_g) stacks, checked finite."""
        stacks = [g.stack() for g in self.groups]
        for S in stacks:
            bad = np.flatnonzero(R.nonfinite_rows(S))
            if bad.size:
                raise ValueError("NaN or Inf in the arrays of "
                                 + ", ".join(self.clients[i] for i in bad))
        return stacks

    def coordinate_rule(self, name, **options):
        """A registered coordinate-wise rule (median, trimmed mean) of every coordinate."""
        rule = rules.get(name)
        opts = rules.options(name, options)
        return self._shaped([rule.run(S, **opts).aggregate for S in self.flats()])

    def sq_distances(self, stacks=None):
        """(K, K) squared distances between the clients' whole models (float64)."""
        D = np.zeros((self.K, self.K))
        for S in (self.flats() if stacks is None else stacks):
            D += R.pairwise_sq_distances(S)
        return V.finite_result(D, "a squared distance")

    def closest_to_median(self, subset, beta, stacks):
        """Bulyan's coordinate step over the clients ``subset``: each coordinate is the mean
        of the ``beta`` values closest to their median."""
        subset = np.sort(np.asarray(subset, np.int64))
        flats = []
        for S in stacks:
            sub = np.ascontiguousarray(S[subset])
            out = np.empty(S.shape[1], S.dtype)
            KR.closest_to_median_mean(sub, R.sorting_network(subset.size), beta, out)
            flats.append(out)
        return self._shaped(flats)


def krum_scores(D, n_malicious):
    """Flower's Krum scores: each client's sum of its ``max(1, n - f - 2)`` smallest
    distances after the smallest (itself) in its row of ``D``."""
    n = D.shape[0]
    c = max(1, n - n_malicious - 2)
    return np.sort(D, axis=1)[:, 1:c + 1].sum(axis=1)


def multikrum_select(D, n_malicious, m):
    """The ``m`` lowest Krum scores, best first (ties: lowest index; Flower's Message API)."""
    return np.argsort(krum_scores(D, n_malicious), kind="stable")[:m]


def bulyan_legacy_select(D, n_malicious, theta):
    """Flower's legacy Bulyan selection: Krum ``theta`` times, each time on the clients not
    chosen yet (and Flower's neighbourhood ``max(1, n - f - 2)`` of those)."""
    left = list(range(D.shape[0]))
    chosen = []
    for _ in range(theta):
        sub = np.array(left)
        best = int(sub[np.argmin(krum_scores(D[np.ix_(sub, sub)], n_malicious))])
        chosen.append(best)
        left.remove(best)
    return chosen


# ----------------------------------------------------------------------------- server step


class ServerState:
    """Flower's server optimizers (FedAvgM, FedAdagrad, FedAdam, FedYogi) on flat arrays.

    Flower's formulas, with fastmb's elementwise kernel (``kernels.server``): the moments
    start at zero (fastmb's own optimizers start v at tau^2), FedAdam's learning rate is
    Flower's bias-corrected ``eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))`` at server round
    t, and FedAvgM's momentum is a running sum ``m = mu m + g`` (``g = x - aggregate``), so
    fastmb keeps ``-m``. ``x`` is per group (float32/float64) in the groups' key order.
    """

    KINDS = {"FedAvgM": KS.FEDAVGM, "FedAdagrad": KS.FEDADAGRAD, "FedAdam": KS.FEDADAM,
             "FedYogi": KS.FEDYOGI}

    def __init__(self, kind):
        self.kind = self.KINDS[kind]
        self.m = None
        self.v = None

    def step(self, x_groups, agg_groups, lr, b1, b2=0.0, tau=0.0):
        """New flat parameters per group from the current ``x_groups`` and the FedAvg
        aggregate ``agg_groups``; the state moves on."""
        if self.m is None:
            self.m = [np.zeros_like(a) for a in agg_groups]
            self.v = [np.zeros_like(a) for a in agg_groups]
        elif [a.shape for a in self.m] != [a.shape for a in agg_groups]:
            raise ValueError("the model's arrays changed shape since the last round")
        out = []
        for x, a, m, v in zip(x_groups, agg_groups, self.m, self.v):
            x = np.array(x, a.dtype)
            KS.server_step(x, a, m, v, self.kind, float(lr), float(b1), float(b2),
                           float(tau))
            if not np.isfinite(x).all():
                raise ValueError("the server step overflowed; lower the server learning "
                                 "rate")
            out.append(x)
        return out


def fedadam_eta(eta, beta_1, beta_2, server_round):
    """Flower's FedAdam step size at ``server_round``: ``eta * sqrt(1 - beta_2^(t+1)) /
    (1 - beta_1^(t+1))`` (its bias correction, with Flower's exponent t + 1)."""
    return (eta * np.sqrt(1 - np.power(beta_2, server_round + 1.0))
            / (1 - np.power(beta_1, server_round + 1.0)))


def flat_groups(rnd, arrays):
    """``arrays`` (key -> array, the model's current parameters) as flat vectors per group
    of ``rnd`` (checked against the round's keys and shapes)."""
    if set(arrays) != set(rnd.keys):
        raise ValueError(f"the current parameters have the arrays {sorted(arrays)}, the "
                         f"clients sent {sorted(rnd.keys)}")
    out = []
    for g in rnd.groups:
        flat = np.empty(g.size, g.dtype)
        for k, v in g.split(flat).items():
            a = np.asarray(arrays[k])
            if a.shape != rnd.shapes[k]:
                raise ValueError(f"current array {k!r} has shape {a.shape}, the clients "
                                 f"sent {rnd.shapes[k]}")
            v[:] = a.ravel()
        out.append(flat)
    return out


def check_rule(name):
    """``name`` as registered in fastmb's one rule registry (so the adapter never lists a
    rule the registry does not have)."""
    return rules.get(name).name
