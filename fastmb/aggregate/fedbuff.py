"""Asynchronous buffered aggregation: FedBuff (Nguyen et al. 2022, "Federated learning
with buffered asynchronous aggregation").

Clients train from whatever model version they downloaded and send their change
``delta = trained - downloaded`` whenever they finish. The server does not wait for a
round: each arrival is weighted by its staleness ``s`` (how many server updates
happened since the client's download) and added to a buffer; every ``buffer_size``
arrivals the server applies the buffered mean

    x <- x + lr * (1 / K) * sum_i  w(s_i) * weight_i * delta_i

through a :class:`fastmb.ServerOptimizer` (plain ``x + lr * mean`` by default, or
FedAdam, FedYogi, ... given one), and the model version advances by one.
"""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from ..compress import QuantizedUpdate, SparseUpdate
from .mean import WeightedMean
from .server import FedAvgM, ServerOptimizer

STALENESS = ("constant", "sqrt", "polynomial")


class FedBuff:
    """FedBuff server: staleness-weighted buffer of client deltas, applied every K arrivals.

    Parameters
    ----------
    server : (P,) array or ServerOptimizer
        Initial global parameters (then the step is ``x += server_lr * mean``: FedAvgM
        without momentum), or a server optimizer that owns them.
    buffer_size : int >= 1, default 10
        K, the arrivals per server update.
    staleness : {"sqrt", "polynomial", "constant"}, default "sqrt"
        ``w(s)``: ``1 / sqrt(1 + s)`` (the FedBuff paper), ``(1 + s)^-a`` with
        ``a = staleness_exponent`` (FedAsync, Xie et al. 2019), or 1.
    staleness_exponent : float >= 0, default 0.5
    max_staleness : int, optional
        Arrivals staler than this are dropped (counted in ``dropped``), not added.
    server_lr : float > 0, default 1.0
        Used only when ``server`` is an array.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> fb = fastmb.FedBuff(np.zeros(2), buffer_size=2)
    >>> fb.add([1.0, 0.0], version=0)          # buffered
    False
    >>> fb.add([0.0, 3.0], version=0)          # second arrival: the buffer is applied
    True
    >>> fb.params, fb.version
    (array([0.5, 1.5]), 1)
    >>> fb.add([4.0, 4.0], version=0)          # staleness 1: weight 1/sqrt(2)
    False
    """

    def __init__(self, server, buffer_size=10, *, staleness="sqrt", staleness_exponent=0.5,
                 max_staleness=None, server_lr=1.0):
        if isinstance(server, ServerOptimizer):
            self.server = server
        else:
            self.server = FedAvgM(server, lr=server_lr, momentum=0.0)
        self.buffer_size = V.check_number("buffer_size", buffer_size, low=1, integer=True)
        if staleness not in STALENESS:
            raise ValueError(f"staleness must be one of {STALENESS}, got {staleness!r}")
        self.staleness = staleness
        self.staleness_exponent = V.check_number("staleness_exponent", staleness_exponent,
                                                 low=0)
        self.max_staleness = (None if max_staleness is None else
                              V.check_number("max_staleness", max_staleness, low=0,
                                             integer=True))
        x = self.server._x
        self._buf = WeightedMean(x.shape[0], np.float64)
        self.received = 0
        self.dropped = 0

    def __repr__(self):
        return (f"FedBuff(n_params={self.n_params}, buffer_size={self.buffer_size}, "
                f"staleness={self.staleness!r}, version={self.version}, "
                f"pending={self.pending})")

    @property
    def n_params(self):
        return self._buf.n_params

    @property
    def params(self):
        """A copy of the current global parameters."""
        return self.server.params

    @property
    def version(self):
        """How many times the buffer has been applied: the current model version."""
        return self.server.round

    @property
    def pending(self):
        """Arrivals in the buffer, not yet applied."""
        return self._buf.count

    def staleness_weight(self, s):
        """``w(s)`` for a staleness ``s >= 0``."""
        if self.staleness == "constant":
            return 1.0
        a = 0.5 if self.staleness == "sqrt" else self.staleness_exponent
        return (1.0 + s) ** -a

    def add(self, update, version, weight=1.0):
        """One client's delta, trained from model ``version``; returns True if it triggered
        a server update.

        Parameters
        ----------
        update : (P,) array, SparseUpdate or QuantizedUpdate
            ``trained - downloaded`` (compressed updates are added from their codes).
        version : int
            The :attr:`version` the client downloaded; staleness = current - version.
        weight : float >= 0, default 1
            Multiplies the staleness weight (e.g. the client's share of the data).

        A bad update raises and leaves the buffer and the model as they were.
        """
        v = V.check_number("version", version, low=0, integer=True)
        if v > self.version:
            raise ValueError(f"version must be <= the current version {self.version} (a "
                             f"client cannot have trained from a future model), got {v}")
        s = self.version - v
        w = V.check_number("weight", weight, low=0)
        if self.max_staleness is not None and s > self.max_staleness:
            self.dropped += 1
            return False
        w *= self.staleness_weight(s)
        if isinstance(update, SparseUpdate):
            self._buf.add_sparse(update, w)
        elif isinstance(update, QuantizedUpdate):
            self._buf.add_quantized(update, w)
        else:
            self._buf.add(update, w)
        self.received += 1
        if self._buf.count >= self.buffer_size:
            self._apply(self.buffer_size)
            return True
        return False

    def flush(self):
        """Apply a partly filled buffer now (its mean over the arrivals it holds).

        Returns True if anything was applied.
        """
        if self._buf.count == 0:
            return False
        self._apply(self._buf.count)
        return True

    def _apply(self, denominator):
        x = self.server._x
        with np.errstate(over="ignore", invalid="ignore"):  # refused just below
            agg = x + self._buf.weighted_sum(denominator)
        if not np.isfinite(agg).all():
            raise ValueError("the buffered mean overflows; the buffer is kept (call "
                             "discard() to drop it)")
        self.server.step(agg.astype(x.dtype))
        self._buf = WeightedMean(self.n_params, np.float64)

    def discard(self):
        """Drop the buffered arrivals without applying them."""
        self._buf = WeightedMean(self.n_params, np.float64)

    def state_dict(self):
        """Server optimizer state, buffer and counters, as plain arrays and numbers."""
        return {"server": self.server.state_dict(), "buffer": self._buf.state_dict(),
                "received": self.received, "dropped": self.dropped}

    def load_state_dict(self, state):
        """Resume from :meth:`state_dict`; validated before anything changes."""
        keys = {"server", "buffer", "received", "dropped"}
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError(f"state must be a dict with keys {sorted(keys)}")
        server = ServerOptimizer.from_state_dict(state["server"])
        buf = WeightedMean.from_state_dict(state["buffer"])
        if server._x.shape != (self.n_params,) or buf.n_params != self.n_params:
            raise ValueError(f"state holds parameters or a buffer of the wrong length "
                             f"(expected {self.n_params})")
        if buf.dtype != np.float64:
            raise ValueError("state['buffer'] must be a float64 buffer")
        if buf.count >= self.buffer_size:
            raise ValueError(f"the buffer's count must be < buffer_size={self.buffer_size}, "
                             f"got {buf.count}")
        received = V.check_number("state['received']", state["received"], low=0, integer=True)
        dropped = V.check_number("state['dropped']", state["dropped"], low=0, integer=True)
        self.server, self._buf = server, buf
        self.received, self.dropped = received, dropped
        return self
