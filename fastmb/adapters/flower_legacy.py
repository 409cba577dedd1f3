"""Flower's legacy strategies (``flwr.server.strategy``) on fastmb's kernels.

The same set as :mod:`fastmb.adapters.flower` for the ``Strategy`` API of ``start_server``
and ``ServerConfig`` (``aggregate_fit`` over ``FitRes``): each is a subclass of Flower's
legacy strategy of the same name, with its constructor, and reproduces its formulas, which
are not always the Message API's (legacy Bulyan runs Krum theta times; legacy Krum with
``num_clients_to_keep=0`` returns the chosen client's arrays as they are; legacy FedOpt
strategies default to ``tau=1e-9``). The tensors of each ``FitRes.parameters`` are read
in place (no ``np.load`` copy).

Examples
--------
>>> import numpy as np
>>> from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
>>> from fastmb.flower_legacy import FedAvg
>>> results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.full(2, v)]), n, {}))
...            for v, n in ((1.0, 3), (5.0, 1))]
>>> params, _ = FedAvg(fit_metrics_aggregation_fn=lambda m: {}).aggregate_fit(1, results, [])
>>> parameters_to_ndarrays(params)
[array([2., 2.])]
"""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server import strategy as fs
from flwr.server.strategy.aggregate import aggregate_krum

from . import _flower_core as C

RULES = {name: C.check_rule(rule) for name, rule in
         {"FedAvg": "fedavg", "FedProx": "fedavg", "FedAvgM": "fedavg", "FedAdagrad": "fedavg",
          "FedAdam": "fedavg", "FedYogi": "fedavg", "FedMedian": "median",
          "FedTrimmedAvg": "trimmed_mean", "Krum": "krum", "Bulyan": "bulyan"}.items()}


def _round(results):
    models, who, weights = [], [], []
    for i, (_, res) in enumerate(results):
        name = f"result {i}"
        params = res.parameters
        if params.tensor_type not in ("numpy.ndarray", ""):
            raise ValueError(f"{name}: tensor_type {params.tensor_type!r} is not "
                             "'numpy.ndarray'")
        models.append([(j, C.array_from_npy(t, f"{name}, tensor {j}"))
                       for j, t in enumerate(params.tensors)])
        who.append(name)
        weights.append(res.num_examples)
    return C.RoundUpdates(models, who), np.asarray(weights, np.float64)


def _parameters(rnd, arrays):
    return Parameters(tensors=[C.npy_bytes(arrays[k]) for k in rnd.keys],
                      tensor_type="numpy.ndarray")


def _skip(strategy, results, failures):
    return not results or (not strategy.accept_failures and failures)


def _metrics(strategy, server_round, results):
    if strategy.fit_metrics_aggregation_fn:
        return strategy.fit_metrics_aggregation_fn(
            [(res.num_examples, res.metrics) for _, res in results])
    if server_round == 1:
        log(WARNING, "No fit_metrics_aggregation_fn provided")
    return {}


def _fedavg_fit(self, server_round, results, failures):
    if _skip(self, results, failures):
        return None, {}
    rnd, w = _round(results)
    return _parameters(rnd, rnd.mean(w)), _metrics(self, server_round, results)


class FedAvg(fs.FedAvg):
    """Flower's legacy ``FedAvg``, with fastmb's float64 weighted mean (``inplace`` or not:
    the same result). Integer arrays are averaged as float64 (Flower's ``inplace=True``
    path truncates their weights to integers, giving zeros)."""

    aggregate_fit = _fedavg_fit


class FedProx(fs.FedProx):
    """Flower's legacy ``FedProx`` (sends ``proximal_mu``), aggregated as :class:`FedAvg`."""

    aggregate_fit = _fedavg_fit


class FedAvgM(fs.FedAvgM):
    """Flower's legacy ``FedAvgM``: from ``initial_parameters`` (required when the server
    learning rate is not 1 or the momentum not 0), ``m = server_momentum * m + g`` with
    ``g = x - mean`` (m is the first g in round 1), ``x -= server_learning_rate * m``."""

    def aggregate_fit(self, server_round, results, failures):
        if _skip(self, results, failures):
            return None, {}
        rnd, w = _round(results)
        mean = rnd.mean(w)
        if self.server_opt:
            if self.initial_parameters is None:
                raise ValueError("FedAvgM with server optimization needs initial_parameters")
            if server_round == 1 or not hasattr(self, "_fastmb_state"):
                self._fastmb_state = C.ServerState("FedAvgM")
            current = dict(zip(rnd.keys, parameters_to_ndarrays(self.initial_parameters)))
            x = C.flat_groups(rnd, current)
            new = self._fastmb_state.step(x, C.flat_groups(rnd, mean), self.server_learning_rate,
                                          max(self.server_momentum, 0.0))
            mean = rnd._shaped(new)
            self.initial_parameters = _parameters(rnd, mean)
            return self.initial_parameters, _metrics(self, server_round, results)
        return _parameters(rnd, mean), _metrics(self, server_round, results)


class _FedOpt:
    _kind = ""

    def _eta(self, server_round):
        return self.eta

    def aggregate_fit(self, server_round, results, failures):
        if _skip(self, results, failures):
            return None, {}
        rnd, w = _round(results)
        x = C.flat_groups(rnd, dict(zip(rnd.keys, self.current_weights)))
        agg = C.flat_groups(rnd, rnd.mean(w))
        if not hasattr(self, "_fastmb_state"):
            self._fastmb_state = C.ServerState(self._kind)
        st = self._fastmb_state
        new = rnd._shaped(st.step(x, agg, self._eta(server_round), self.beta_1, self.beta_2,
                                  self.tau))
        self.current_weights = [new[k] for k in rnd.keys]
        self.m_t = list(rnd._shaped(st.m).values())
        self.v_t = list(rnd._shaped(st.v).values())
        return ndarrays_to_parameters(self.current_weights), _metrics(self, server_round,
                                                                      results)


class FedAdagrad(_FedOpt, fs.FedAdagrad):
    """Flower's legacy ``FedAdagrad`` (beta_1 = 0, v from zero, tau 1e-9 by default)."""

    _kind = "FedAdagrad"


class FedAdam(_FedOpt, fs.FedAdam):
    """Flower's legacy ``FedAdam`` (Flower's bias-corrected eta, moments from zero)."""

    _kind = "FedAdam"

    def _eta(self, server_round):
        return C.fedadam_eta(self.eta, self.beta_1, self.beta_2, server_round)


class FedYogi(_FedOpt, fs.FedYogi):
    """Flower's legacy ``FedYogi`` (v from zero)."""

    _kind = "FedYogi"


class FedMedian(fs.FedMedian):
    """Flower's legacy ``FedMedian``: the coordinate-wise median, exactly ``np.median``'s."""

    def aggregate_fit(self, server_round, results, failures):
        if _skip(self, results, failures):
            return None, {}
        rnd, _ = _round(results)
        return (_parameters(rnd, rnd.coordinate_rule("median")),
                _metrics(self, server_round, results))


class FedTrimmedAvg(fs.FedTrimmedAvg):
    """Flower's legacy ``FedTrimmedAvg``: ``int(beta * n)`` values cut at each end."""

    def aggregate_fit(self, server_round, results, failures):
        if _skip(self, results, failures):
            return None, {}
        rnd, _ = _round(results)
        return (_parameters(rnd, rnd.coordinate_rule("trimmed_mean", beta=self.beta)),
                _metrics(self, server_round, results))


class Krum(fs.Krum):
    """Flower's legacy ``Krum``: ``num_clients_to_keep=0`` returns the arrays of the client
    with the lowest Krum score as they are; ``k > 0`` averages the k lowest (MultiKrum) by
    their number of examples."""

    def aggregate_fit(self, server_round, results, failures):
        if _skip(self, results, failures):
            return None, {}
        rnd, w = _round(results)
        scores = C.krum_scores(rnd.sq_distances(), self.num_malicious_clients)
        if self.num_clients_to_keep > 0:
            sel = np.argsort(scores, kind="stable")[:self.num_clients_to_keep]
            arrays = rnd.mean(w, subset=sel)
        else:
            arrays = dict(zip(rnd.keys, rnd.arrays(int(np.argmin(scores)))))
        return _parameters(rnd, arrays), _metrics(self, server_round, results)


class Bulyan(fs.Bulyan):
    """Flower's legacy ``Bulyan``: Krum ``theta = n - 2f`` times on the clients left (the
    paper's selection), then the mean of the ``theta - 2f`` values of each coordinate
    closest to their median. Fewer than ``4f + 3`` results raise ``ValueError``, as in
    Flower. Only ``first_aggregation_rule=aggregate_krum`` with ``to_keep=0`` (what Flower
    can run) is accepted."""

    def aggregate_fit(self, server_round, results, failures):
        if self.first_aggregation_rule is not aggregate_krum or \
                self.aggregation_rule_kwargs.get("to_keep", 0) != 0:
            raise ValueError("fastmb's Bulyan runs Krum (to_keep=0) as its first rule only")
        if _skip(self, results, failures):
            return None, {}
        f = self.num_malicious_clients
        if len(results) < 4 * f + 3:
            raise ValueError(f"Bulyan needs at least 4 * num_malicious_clients + 3 = "
                             f"{4 * f + 3} results, got {len(results)}")
        rnd, _ = _round(results)
        stacks = rnd.flats()
        theta = len(results) - 2 * f
        sel = C.bulyan_legacy_select(rnd.sq_distances(stacks), f, theta)
        return (_parameters(rnd, rnd.closest_to_median(sel, theta - 2 * f, stacks)),
                _metrics(self, server_round, results))


__all__ = ["RULES", "Bulyan", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedMedian",
           "FedProx", "FedTrimmedAvg", "FedYogi", "Krum"]
