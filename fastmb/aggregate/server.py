"""Server optimizers: FedAvgM, FedAdagrad, FedAdam, FedYogi (Reddi et al. 2021).

Each holds the global parameters and its optimizer state as flat arrays and moves
them towards the round's aggregate (e.g. the :func:`fastmb.fedavg` of the clients'
models, or any robust rule's aggregate): the pseudo-gradient is
``params - aggregate``. ``state_dict()`` returns plain arrays and numbers for
checkpoints; ``from_state_dict`` rebuilds the optimizer exactly.
"""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from ..kernels import aggregation as KA
from ..kernels import server as KS

_KINDS = {"FedAvgM": 0, "FedAdagrad": 1, "FedAdam": 2, "FedYogi": 3}


class ServerOptimizer:
    """Base class: the flat parameters and the state of one server optimizer.

    Parameters
    ----------
    params : (P,) array
        Initial global parameters; copied (float32 and float64 are kept).
    lr : float > 0
        Server learning rate (eta in the paper).
    """

    _adaptive = True

    def __init__(self, params, lr, beta1, beta2=0.0, tau=0.0, beta1_name="beta1"):
        p = V._as_numeric("params", params)
        if p.ndim != 1 or p.shape[0] == 0:
            raise ValueError(f"params must be a non-empty 1-D array, got shape {p.shape}")
        p = np.array(p, dtype=V.float_dtype(p))
        if not np.isfinite(p).all():
            raise ValueError("params contains NaN or Inf")
        self.lr, self.beta1, self.beta2, self.tau = self._hyper(lr, beta1, beta2, tau,
                                                                beta1_name)
        self._x = p
        self._m = np.zeros_like(p)
        # Reddi et al. start the second moment at tau^2 (their v_{-1} >= tau^2).
        self._v = np.full_like(p, self.tau**2) if self._adaptive else np.zeros(0, p.dtype)
        self.round = 0

    @classmethod
    def _hyper(cls, lr, beta1, beta2, tau, beta1_name="beta1"):
        """Checked ``(lr, beta1, beta2, tau)``: the one place they are validated, for the
        constructors and for :meth:`from_state_dict` alike."""
        lr = V.check_number("lr", lr, low=0, low_open=True)
        beta1 = V.check_number(beta1_name, beta1, low=0)
        if beta1 >= 1:
            raise ValueError(f"{beta1_name} must be in [0, 1), got {beta1}")
        if not cls._adaptive:
            return lr, beta1, 0.0, 0.0
        beta2 = V.check_number("beta2", beta2, low=0)
        if beta2 >= 1:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        # tau^2 seeds the second moment: it must be a finite float64.
        return lr, beta1, beta2, V.check_number("tau", tau, low=0, high=1e150, low_open=True)

    def __repr__(self):
        return (f"{type(self).__name__}(n_params={self._x.shape[0]}, lr={self.lr}, "
                f"round={self.round})")

    @property
    def params(self):
        """A copy of the current global parameters."""
        return self._x.copy()

    def step(self, aggregate):
        """Move the parameters towards ``aggregate``; returns a copy of the new parameters.

        A NaN/Inf or wrongly shaped aggregate raises before anything changes.
        """
        a = V._as_numeric("aggregate", aggregate)
        if a.ndim != 1 or a.shape[0] != self._x.shape[0]:
            raise ValueError(f"aggregate must be a 1-D array of length {self._x.shape[0]}, "
                             f"got shape {a.shape}")
        a = np.ascontiguousarray(a, dtype=self._x.dtype)
        if KA.count_nonfinite(a):
            raise ValueError("aggregate contains NaN or Inf")
        x, m, v = self._x.copy(), self._m.copy(), self._v.copy()
        KS.server_step(x, a, m, v, _KINDS[type(self).__name__], self.lr, self.beta1, self.beta2,
                       self.tau)
        if KA.count_nonfinite(x):
            raise ValueError("the server step overflowed; lower lr")
        self._x, self._m, self._v = x, m, v
        self.round += 1
        return x.copy()

    def state_dict(self):
        """Parameters, state and hyper-parameters as plain arrays and numbers."""
        return {"kind": type(self).__name__, "params": self._x.copy(), "m": self._m.copy(),
                "v": self._v.copy(), "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2,
                "tau": self.tau, "round": self.round}

    @classmethod
    def from_state_dict(cls, state):
        """Rebuild the optimizer saved by :meth:`state_dict` (any of the four kinds).

        Every field is checked as the constructors check their arguments (and the state
        arrays for shape, dtype and finiteness) before an optimizer is built."""
        kinds = {c.__name__: c for c in (FedAvgM, FedAdagrad, FedAdam, FedYogi)}
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        kind = state.get("kind")
        if not isinstance(kind, str) or kind not in kinds:
            raise ValueError(f"state['kind'] must be one of {sorted(kinds)}, got {kind!r}")
        keys = {"kind", "params", "m", "v", "lr", "beta1", "beta2", "tau", "round"}
        if set(state) != keys:
            raise ValueError(f"state must have the keys {sorted(keys)}, got {sorted(state)}")
        target = kinds[kind]
        if cls is not ServerOptimizer and cls is not target:
            raise ValueError(f"state is for {kind}, not {cls.__name__}")
        opt = object.__new__(target)
        opt.lr, opt.beta1, opt.beta2, opt.tau = target._hyper(
            state["lr"], state["beta1"], state["beta2"], state["tau"],
            "momentum" if target is FedAvgM else "beta1")
        x = np.array(state["params"])
        if x.ndim != 1 or x.shape[0] == 0 or x.dtype not in V.FLOATS \
                or not np.isfinite(x).all():
            raise ValueError("state['params'] must be a finite, non-empty 1-D float32/float64 "
                             "array")
        nv = x.shape[0] if target._adaptive else 0
        m, v = np.asarray(state["m"]), np.asarray(state["v"])
        if m.shape != x.shape or v.shape != (nv,) or m.dtype.kind not in "biuf" \
                or v.dtype.kind not in "biuf":
            raise ValueError(f"state['m'] and state['v'] must be real arrays of shapes "
                             f"{x.shape} and ({nv},)")
        opt._x = x
        with np.errstate(over="ignore"):  # beyond the dtype becomes Inf: refused just below
            opt._m = np.array(m, x.dtype)
            opt._v = np.array(v, x.dtype)
        if not (np.isfinite(opt._m).all() and np.isfinite(opt._v).all()
                and (opt._v >= 0).all()):
            raise ValueError("state['m'] and state['v'] must be finite, and state['v'] "
                             "non-negative")
        opt.round = V.check_number("state['round']", state["round"], low=0, integer=True)
        return opt


class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum (Hsu et al. 2019): ``m = b1 m + delta; x += lr m``.

    ``lr=1, momentum=0`` is plain FedAvg (the parameters become the aggregate).

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> opt = fastmb.FedAvgM(np.zeros(2), lr=1.0, momentum=0.5)
    >>> opt.step([1.0, 2.0])
    array([1., 2.])
    >>> opt.step([1.0, 2.0])
    array([1.5, 3. ])
    """

    _adaptive = False

    def __init__(self, params, lr=1.0, momentum=0.9):
        super().__init__(params, lr, momentum, beta1_name="momentum")


class FedAdagrad(ServerOptimizer):
    """FedAdagrad (Reddi et al. 2021): ``v += delta^2``.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> opt = fastmb.FedAdagrad(np.zeros(2), lr=0.1)
    >>> np.round(opt.step([1.0, -1.0]), 4)
    array([ 0.01, -0.01])
    """

    def __init__(self, params, lr=0.1, beta1=0.9, tau=1e-3):
        super().__init__(params, lr, beta1, 0.0, tau)


class FedAdam(ServerOptimizer):
    """FedAdam (Reddi et al. 2021): ``v = b2 v + (1 - b2) delta^2``, no bias correction.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> opt = fastmb.FedAdam(np.zeros(2), lr=0.01)
    >>> np.round(opt.step([1.0, -1.0]), 4)
    array([ 0.0099, -0.0099])
    """

    def __init__(self, params, lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3):
        super().__init__(params, lr, beta1, beta2, tau)


class FedYogi(ServerOptimizer):
    """FedYogi (Reddi et al. 2021): ``v -= (1 - b2) delta^2 sign(v - delta^2)``.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> opt = fastmb.FedYogi(np.zeros(2), lr=0.01)
    >>> np.round(opt.step([1.0, -1.0]), 4)
    array([ 0.0099, -0.0099])
    """

    def __init__(self, params, lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3):
        super().__init__(params, lr, beta1, beta2, tau)


#: Server optimizers by name (what the simulation and ``fastmb simulate`` accept), with their
#: option defaults; ``"none"`` applies the aggregate as it is.
OPTIMIZERS = {
    "none": (None, {}),
    "fedavgm": (FedAvgM, {"lr": 1.0, "momentum": 0.9}),
    "fedadagrad": (FedAdagrad, {"lr": 0.1, "beta1": 0.9, "tau": 1e-3}),
    "fedadam": (FedAdam, {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}),
    "fedyogi": (FedYogi, {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}),
}


def optimizer_options(name, given):
    """The optimizer ``name`` and ``given`` over its defaults: ``(class or None, options)``;
    an unknown name or option raises, listing the valid ones."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"unknown server optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    cls, defaults = OPTIMIZERS[name]
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ValueError(f"unknown option(s) {unknown} for server optimizer {name!r}; valid: "
                         f"{valid}")
    return cls, {**defaults, **given}
