"""Flower strategies and clients on fastmb's kernels (``pip install "fastmb[flower]"``).

Each strategy here is a subclass of Flower's strategy of the same name in
``flwr.serverapp.strategy`` (the Message API), with Flower's constructor arguments,
sampling, configuration, logging and metric aggregation; only the aggregation of the
clients' arrays is replaced, by fastmb's kernels, and it reproduces Flower's formulas
(the README's "Flower" section lists where those differ from fastmb's own rules). The
legacy ``flwr.server.strategy`` API has the same set in :mod:`fastmb.flower_legacy`.

The reply arrays are read in place from the messages' bytes (no copy, no ``np.load``);
FedAvg sums them through their addresses in one kernel call, in float64. The replies are
never modified (Flower's FedMedian and FedTrimmedAvg empty their ArrayRecords).

:class:`FedRule` runs any rule of fastmb's registry (geometric median, centered clipping,
...) as a Flower strategy. :class:`NumPyClient` and :func:`client_app` train a fastmb
model with fastmb's local SGD on a Flower node.
"""

from __future__ import annotations

from logging import INFO, WARNING

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.client import NumPyClient as _FlowerNumPyClient
from flwr.clientapp import ClientApp
from flwr.common.constant import SType
from flwr.common.logger import log
from flwr.serverapp import strategy as fs
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from .. import _validation as V
from ..aggregate import rules
from ..aggregate.server import OPTIMIZERS
from ..learn import gradients as G
from ..learn import training as T
from ..models import _Model
from . import _flower_core as C

# The registry names of the rules these strategies run (checked against the registry at
# import: the registry is the one list of rule names).
RULES = {name: C.check_rule(rule) for name, rule in
         {"FedAvg": "fedavg", "FedProx": "fedavg", "FedAvgM": "fedavg", "FedAdagrad": "fedavg",
          "FedAdam": "fedavg", "FedYogi": "fedavg", "FedMedian": "median",
          "FedTrimmedAvg": "trimmed_mean", "Krum": "krum", "MultiKrum": "multi_krum",
          "Bulyan": "bulyan"}.items()}
assert {"fedavgm", "fedadagrad", "fedadam", "fedyogi"} <= set(OPTIMIZERS)


# ----------------------------------------------------------------------------- replies

_DTYPE_NAMES: dict = {}


def _dtype_name(dtype):
    name = _DTYPE_NAMES.get(dtype)
    if name is None:  # str(dtype) costs 30 us (NumPy's issubdtype); once per dtype here
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


def arrays_of(record, who="a reply"):
    """``[(key, array)]`` of an ``ArrayRecord``, read in place from its bytes."""
    out = []
    for key, arr in record.items():
        if arr.stype != SType.NUMPY:
            raise ValueError(f"{who}, array {key!r}: serialization {arr.stype!r} is not "
                             f"{SType.NUMPY!r}")
        a = C.array_from_npy(arr.data, f"{who}, array {key!r}")
        if a.shape != tuple(arr.shape) or _dtype_name(a.dtype) != arr.dtype:
            raise ValueError(f"{who}, array {key!r}: the metadata says {arr.dtype} "
                             f"{tuple(arr.shape)}, the bytes hold {a.dtype} {a.shape}")
        out.append((key, a))
    return out


def array_record(arrays):
    """An ``ArrayRecord`` of ``{key: ndarray}`` (each serialized once, as Flower does)."""
    return ArrayRecord({k: Array(dtype=_dtype_name(v.dtype),
                                 shape=tuple(int(n) for n in v.shape),
                                 stype=SType.NUMPY, data=C.npy_bytes(v))
                        for k, v in arrays.items()})


class _Reply:
    """A valid reply's records, found in one pass over its content (Flower's
    ``RecordDict.array_records``/``metric_records`` build a new dictionary per access)."""

    __slots__ = ("arrays", "content", "metrics")

    def __init__(self, content):
        self.content = content
        self.arrays, self.metrics = [], []
        for key, rec in content.items():
            if isinstance(rec, ArrayRecord):
                self.arrays.append((key, rec))
            elif isinstance(rec, MetricRecord):
                self.metrics.append((key, rec))


def _inconsistent(reason):
    raise InconsistentMessageReplies(reason=reason)


def _same_keys(replies, name, record, cls):
    """The keys of ``record`` (the first reply's ``cls`` record ``name``), which every reply's
    record of that name must have."""
    keys = set(record.keys())
    for r in replies[1:]:
        other = r.content.get(name)
        if not isinstance(other, cls) or set(other.keys()) != keys:
            _inconsistent(f"All {cls.__name__}s must have the same keys for aggregation. This "
                          "condition wasn't met. Skipping aggregation.")
    return keys


def _check(replies, weighted_by_key, train):
    """Flower's ``validate_message_reply_consistency`` (the same checks and reasons) in one
    pass: one ArrayRecord (for training) with the same keys in every reply, one
    MetricRecord with the same keys and a single-valued ``weighted_by_key``."""
    first = replies[0]
    if train:
        if any(len(r.arrays) != 1 for r in replies):
            _inconsistent("Expected exactly one ArrayRecord in replies. Skipping aggregation.")
        _same_keys(replies, *first.arrays[0], ArrayRecord)
    if any(len(r.metrics) != 1 for r in replies):
        _inconsistent("Expected exactly one MetricRecord in replies, but found more. "
                      "Skipping aggregation.")
    name, rec = first.metrics[0]
    keys = _same_keys(replies, name, rec, MetricRecord)
    if weighted_by_key not in keys:
        _inconsistent(f"Missing required key `{weighted_by_key}` in the MetricRecord of reply "
                      "messages. Cannot average ArrayRecords and MetricRecords. Skipping "
                      "aggregation.")
    if any(isinstance(r.content[name][weighted_by_key], list) for r in replies):
        _inconsistent(f"Key `{weighted_by_key}` in the MetricRecord of reply messages must be "
                      "a single value (int or float), but a list was found. Skipping "
                      "aggregation.")


def _valid(strategy, replies):
    """The valid train replies, checked as Flower's ``_check_and_log_replies`` checks them
    (errors counted and logged, the rest validated), as :class:`_Reply` objects."""
    replies = list(replies)
    good = [m for m in replies if not m.has_error()]
    log(INFO, "aggregate_train: Received %s results and %s failures", len(good),
        len(replies) - len(good))
    for m in replies:
        if m.has_error():
            log(INFO, "\t> Received error in reply from node %d: %s", m.metadata.src_node_id,
                m.error.reason)
    out = [_Reply(m.content) for m in good]
    if out:
        _check(out, strategy.weighted_by_key, True)
    return out


def _metrics(strategy, replies):
    """The strategy's train metrics of ``replies``: Flower's ``aggregate_metricrecords``
    (the default) computed in one pass with the same arithmetic in the same order, or the
    user's function."""
    fn = strategy.train_metrics_aggr_fn
    key = strategy.weighted_by_key
    if fn is not aggregate_metricrecords:
        return fn([r.content for r in replies], key)
    weights = [r.metrics[0][1][key] for r in replies]
    total = sum(weights)
    out = MetricRecord()
    for r, w in zip(replies, weights):
        f = w / total
        for _, rec in r.metrics:
            for name, value in rec.items():
                if name == key:
                    continue
                if name not in out:
                    out[name] = [v * f for v in value] if isinstance(value, list) else value * f
                elif isinstance(value, list):
                    out[name] = [c + v * f for c, v in zip(out[name], value, strict=True)]
                else:
                    out[name] = out[name] + value * f
    return out


def _round(replies, weighted_by_key):
    """The round's updates and weights from valid replies."""
    models, who, weights = [], [], []
    for i, r in enumerate(replies):
        name = f"reply {i}"
        models.append(arrays_of(r.arrays[0][1], name))
        who.append(name)
        weights.append(r.metrics[0][1][weighted_by_key])
    return C.RoundUpdates(models, who), np.asarray(weights, dtype=np.float64)


def _fedavg_train(self, server_round, replies):
    replies = _valid(self, replies)
    if not replies:
        return None, None
    rnd, w = _round(replies, self.weighted_by_key)
    return array_record(rnd.mean(w)), _metrics(self, replies)


# ----------------------------------------------------------------------------- strategies


class FedAvg(fs.FedAvg):
    """Flower's ``FedAvg`` (Message API) with fastmb's weighted mean.

    The same constructor as ``flwr.serverapp.strategy.FedAvg``. The mean is summed in
    float64 and rounded once to the arrays' dtype (Flower sums ``array * weight`` in the
    arrays' dtype), so float32 results agree with Flower's to float32 rounding and are
    more accurate. NaN/Inf in a reply, a missing or negative weight raise ``ValueError``.

    Examples
    --------
    >>> from fastmb.flower import FedAvg
    >>> strategy = FedAvg(fraction_train=0.5, min_available_nodes=2)
    """

    aggregate_train = _fedavg_train


class FedProx(fs.FedProx):
    """Flower's ``FedProx`` (Message API): it sends ``proximal-mu`` to the clients (which
    :func:`client_app` passes to fastmb's ``prox_mu``) and aggregates as :class:`FedAvg`."""

    aggregate_train = _fedavg_train


class FedAvgM(fs.FedAvgM):
    """Flower's ``FedAvgM`` (Message API): ``m = server_momentum * m + g`` (m starts at the
    first pseudo-gradient ``g = x - mean``), ``x -= server_learning_rate * m``; with the
    defaults (momentum 0, learning rate 1) it returns the mean as it is, as Flower does.
    fastmb's own ``FedAvgM`` defaults to momentum 0.9."""

    def aggregate_train(self, server_round, replies):
        replies = _valid(self, replies)
        if not replies:
            return None, None
        rnd, w = _round(replies, self.weighted_by_key)
        mean = rnd.mean(w)
        if self.server_opt:
            if self.current_arrays is None:
                raise ValueError("FedAvgM has no current arrays: configure_train must run "
                                 "before aggregate_train")
            if not hasattr(self, "_fastmb_state"):
                self._fastmb_state = C.ServerState("FedAvgM")
            x = C.flat_groups(rnd, {k: a.numpy() for k, a in self.current_arrays.items()})
            agg = C.flat_groups(rnd, mean)
            new = self._fastmb_state.step(x, agg, self.server_learning_rate,
                                          max(self.server_momentum, 0.0))
            mean = rnd._shaped(new)
            self.current_arrays = array_record(mean)
            return self.current_arrays, _metrics(self, replies)
        return array_record(mean), _metrics(self, replies)


class _FedOpt:
    """Flower's FedOpt family (Message API): ``current_arrays`` (set by configure_train)
    moves by ``eta * m / (sqrt(v) + tau)``, m and v starting at zero."""

    _kind = ""

    def _eta(self, server_round):
        return self.eta

    def aggregate_train(self, server_round, replies):
        replies = _valid(self, replies)
        if not replies:
            return None, None
        if self.current_arrays is None:
            raise ValueError(f"{type(self).__name__} has no current arrays: configure_train "
                             "must run before aggregate_train")
        rnd, w = _round(replies, self.weighted_by_key)
        x = C.flat_groups(rnd, self.current_arrays)
        agg = C.flat_groups(rnd, rnd.mean(w))
        if not hasattr(self, "_fastmb_state"):
            self._fastmb_state = C.ServerState(self._kind)
        st = self._fastmb_state
        new = st.step(x, agg, self._eta(server_round), self.beta_1, self.beta_2, self.tau)
        # Flower's attributes, as views of fastmb's state
        self.m_t = rnd._shaped(st.m)
        self.v_t = rnd._shaped(st.v)
        return array_record(rnd._shaped(new)), _metrics(self, replies)


class FedAdagrad(_FedOpt, fs.FedAdagrad):
    """Flower's ``FedAdagrad`` (Message API): ``v += delta^2`` from zero, and beta_1 = 0
    (fastmb's own ``FedAdagrad`` has momentum beta1 = 0.9 and starts v at tau^2)."""

    _kind = "FedAdagrad"


class FedAdam(_FedOpt, fs.FedAdam):
    """Flower's ``FedAdam`` (Message API): moments from zero and the learning rate
    ``eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` at server round t (fastmb's own
    ``FedAdam`` has no bias correction and starts v at tau^2)."""

    _kind = "FedAdam"

    def _eta(self, server_round):
        return C.fedadam_eta(self.eta, self.beta_1, self.beta_2, server_round)


class FedYogi(_FedOpt, fs.FedYogi):
    """Flower's ``FedYogi`` (Message API): v from zero (fastmb's own starts at tau^2)."""

    _kind = "FedYogi"


def _coordinate_train(self, server_round, replies, name, **options):
    replies = _valid(self, replies)
    if not replies:
        return None, None
    rnd, _ = _round(replies, self.weighted_by_key)
    return array_record(rnd.coordinate_rule(name, **options)), _metrics(self, replies)


class FedMedian(fs.FedMedian):
    """Flower's ``FedMedian`` (Message API): the coordinate-wise median (``np.median``'s
    value exactly), by fastmb's sorting-network kernel; the replies are left intact."""

    def aggregate_train(self, server_round, replies):
        return _coordinate_train(self, server_round, replies, "median")


class FedTrimmedAvg(fs.FedTrimmedAvg):
    """Flower's ``FedTrimmedAvg`` (Message API): drop ``int(beta * n)`` values at each end
    of every coordinate, average the rest (in float64)."""

    def aggregate_train(self, server_round, replies):
        return _coordinate_train(self, server_round, replies, "trimmed_mean", beta=self.beta)


def _krum_train(self, server_round, replies):
    replies = _valid(self, replies)
    if not replies:
        return None, None
    rnd, w = _round(replies, self.weighted_by_key)
    sel = C.multikrum_select(rnd.sq_distances(), self.num_malicious_nodes,
                             self.num_nodes_to_select)
    chosen = [replies[i] for i in sel]
    return array_record(rnd.mean(w, subset=sel)), _metrics(self, chosen)


class MultiKrum(fs.MultiKrum):
    """Flower's ``MultiKrum`` (Message API): the ``num_nodes_to_select`` lowest Krum scores
    (each the sum of the ``max(1, n - f - 2)`` nearest squared distances), averaged by
    their ``weighted_by_key`` (fastmb's ``multi_krum`` averages them equally). Distances
    are summed from coordinate differences in float64, where Flower expands
    ``|x|^2 + |y|^2 - 2 x.y``."""

    aggregate_train = _krum_train


class Krum(fs.Krum):
    """Flower's ``Krum`` (Message API): :class:`MultiKrum` with one node selected."""

    aggregate_train = _krum_train


class Bulyan(fs.Bulyan):
    """Flower's ``Bulyan`` (Message API): ``theta = n - 2f`` replies chosen at once by their
    Krum scores (fastmb's ``bulyan`` and Flower's legacy one run Krum theta times), then
    each coordinate is the mean of the ``theta - 2f`` values closest to their median.
    Fewer than ``4f + 3`` replies: the round is skipped (None), as in Flower. Only the
    default ``selection_rule`` (Flower's MultiKrum) is accepted."""

    def aggregate_train(self, server_round, replies):
        if self.selection_rule is not fs.multikrum.select_multikrum:
            raise ValueError("fastmb's Bulyan runs Flower's MultiKrum selection only; got "
                             f"selection_rule={self.selection_rule!r}")
        replies = _valid(self, replies)
        f = self.num_malicious_nodes
        if len(replies) < 4 * f + 3:
            log(WARNING, "Insufficient replies, skipping Bulyan aggregation: Required at least "
                "%d (4*num_malicious_nodes + 3), but received %d.", 4 * f + 3, len(replies))
            return None, None
        rnd, _ = _round(replies, self.weighted_by_key)
        stacks = rnd.flats()
        theta = len(replies) - 2 * f
        sel = C.multikrum_select(rnd.sq_distances(stacks), f, theta)
        arrays = rnd.closest_to_median(sel, theta - 2 * f, stacks)
        return array_record(arrays), _metrics(self, [replies[i] for i in sel])


class FedRule(fs.FedAvg):
    """Any rule of fastmb's registry as a Flower strategy (Message API).

    Flower's ``FedAvg`` constructor plus ``rule`` (a name from
    ``fastmb.aggregate.rules.names()``: ``"geometric_median"``, ``"centered_clipping"``,
    ``"norm_bounded"``, ``"median"``, ...) and ``rule_options`` (that rule's options).
    The rule runs with fastmb's semantics on the replies' whole models (float64 when
    their dtypes differ), weighted by ``weighted_by_key`` where the rule takes weights;
    replies with NaN/Inf are rejected by the rule, and a round the rule cannot aggregate
    returns None (Flower then keeps the arrays).

    Examples
    --------
    >>> from fastmb.flower import FedRule
    >>> strategy = FedRule(rule="geometric_median", rule_options={"max_iter": 50})
    """

    def __init__(self, *, rule="fedavg", rule_options=None, **kwargs):
        r = rules.get(rule)
        if r.make is not None:
            raise ValueError(f"rule {rule!r} keeps state across rounds (e.g. central DP): use "
                             "fastmb's Simulation for it")
        self.rule = rule
        self.rule_options = rules.options(rule, rule_options)
        super().__init__(**kwargs)

    def aggregate_train(self, server_round, replies):
        replies = _valid(self, replies)
        if not replies:
            return None, None
        rnd, w = _round(replies, self.weighted_by_key)
        if self.rule == "fedavg":
            return array_record(rnd.mean(w)), _metrics(self, replies)
        stacks = [g.stack() for g in rnd.groups]
        D = stacks[0] if len(stacks) == 1 else np.concatenate(
            [s.astype(np.float64) for s in stacks], axis=1)
        delta, used, _ = rules.apply(self.rule, self.rule_options, D,
                                     V.as_weights(w, rnd.K, "weights", "client"))
        if delta is None:
            return None, None
        flats, lo = [], 0
        for g in rnd.groups:
            flats.append(np.asarray(delta[lo:lo + g.size], g.dtype))
            lo += g.size
        return array_record(rnd._shaped(flats)), _metrics(self, [replies[i] for i in used])


# ----------------------------------------------------------------------------- clients


def model_arrays(model, params):
    """``{"0.W": W_0, "0.b": b_0, "1.W": ...}``: views of ``params`` per layer (W is
    ``(n_in, n_out)``, as :meth:`fastmb.MLP.layers` gives it)."""
    out = {}
    for i, (W, b) in enumerate(model.layers(params)):
        out[f"{i}.W"] = W
        if b is not None:
            out[f"{i}.b"] = b
    return out


def params_from_arrays(model, arrays, dtype=None):
    """A flat parameter vector of ``model`` from ``{key: array}`` as :func:`model_arrays`
    names them (a copy; every key and shape checked). ``dtype`` defaults to the arrays'
    (float32 or float64)."""
    V.check_model(model)
    want = {k: v.shape for k, v in model_arrays(model, np.zeros(model.n_params)).items()}
    if set(arrays) != set(want):
        raise ValueError(f"the arrays must have the keys {sorted(want)}, got "
                         f"{sorted(arrays)}")
    if dtype is None:
        dts = {np.asarray(a).dtype for a in arrays.values()}
        dtype = dts.pop() if len(dts) == 1 and dts <= set(V.FLOATS) else np.float64
    params = np.empty(model.n_params, dtype)
    views = model_arrays(model, params)
    for k, shape in want.items():
        a = np.asarray(arrays[k])
        if a.shape != shape:
            raise ValueError(f"array {k!r} must have shape {shape}, got {a.shape}")
        views[k][...] = a
    if not np.isfinite(params).all():
        raise ValueError("the arrays contain NaN or Inf")
    return params


_TRAIN_KEYS = {"lr": "lr", "local-epochs": "epochs", "local_epochs": "epochs",
               "batch-size": "batch_size", "batch_size": "batch_size",
               "proximal-mu": "prox_mu", "proximal_mu": "prox_mu", "momentum": "momentum"}


class NumPyClient(_FlowerNumPyClient):
    """A Flower ``NumPyClient`` that trains a fastmb model with :func:`fastmb.sgd`.

    Parameters
    ----------
    model : fastmb.Linear or fastmb.MLP
    X, y : the node's training data
    X_test, y_test : optional evaluation data (default: the training data)
    epochs, batch_size, lr, momentum, weight_decay, seed :
        :func:`fastmb.sgd`'s options. The server's config may override ``lr``,
        ``local-epochs``, ``batch-size``, ``momentum`` and ``proximal-mu`` (FedProx sends
        it) per round; each round shuffles with ``seed + server-round``.
    dtype : float32 or float64

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.flower import NumPyClient
    >>> model = fastmb.Linear(4, 3, loss="softmax")
    >>> X, y = np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 3
    >>> client = NumPyClient(model, X, y, lr=0.1)
    >>> arrays, n, metrics = client.fit(client.get_parameters({}), {"server-round": 1})
    >>> n, sorted(metrics)
    (40, ['train_loss'])
    """

    def __init__(self, model, X, y, X_test=None, y_test=None, *, epochs=1, batch_size=32,
                 lr=0.01, momentum=0.0, weight_decay=0.0, seed=0, dtype=np.float32):
        if not isinstance(model, _Model):
            raise TypeError(f"model must be a fastmb.Linear or fastmb.MLP, got "
                            f"{type(model).__name__}")
        self.model, self.X, self.y = model, X, y
        self.X_test = X if X_test is None else X_test
        self.y_test = y if y_test is None else y_test
        self.options = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                        "momentum": momentum, "weight_decay": weight_decay}
        self.seed = V.check_number("seed", seed, low=0, integer=True)
        self.params = model.init(seed=self.seed, dtype=dtype)

    def _params(self, parameters):
        keys = list(model_arrays(self.model, self.params))
        if len(parameters) != len(keys):
            raise ValueError(f"parameters must be {len(keys)} arrays ({', '.join(keys)}), "
                             f"got {len(parameters)}")
        return params_from_arrays(self.model, dict(zip(keys, parameters)),
                                  dtype=self.params.dtype)

    def get_parameters(self, config):
        return [np.array(a) for a in model_arrays(self.model, self.params).values()]

    def train(self, params, config):
        """fastmb's local SGD from ``params`` with the server's ``config``: ``(new params,
        number of examples, metrics)``."""
        opts = dict(self.options)
        for key, name in _TRAIN_KEYS.items():
            if key in config:
                opts[name] = config[key]
        rnd = int(config.get("server-round", config.get("server_round", 0)))
        new = T.sgd(self.model, params, self.X, self.y, seed=self.seed + rnd, **opts)
        self.params = new
        loss = G.evaluate(self.model, new, self.X, self.y)["loss"]
        return new, V.n_samples(self.X), {"train_loss": float(loss)}

    def fit(self, parameters, config):
        _, n, metrics = self.train(self._params(parameters), config)
        return self.get_parameters(config), n, metrics

    def evaluate(self, parameters, config):
        res = G.evaluate(self.model, self._params(parameters), self.X_test, self.y_test)
        metrics = {} if res["accuracy"] is None else {"accuracy": float(res["accuracy"])}
        return float(res["loss"]), V.n_samples(self.X_test), metrics


def client_app(client_fn):
    """A Flower ``ClientApp`` (Message API) whose nodes train with fastmb.

    ``client_fn(context)`` returns the node's :class:`NumPyClient` (e.g. from
    ``context.node_config["partition-id"]``). The app answers ``train`` messages with
    ``{"arrays": ArrayRecord, "metrics": MetricRecord(train_loss, num-examples)}`` and
    ``evaluate`` messages with ``{"metrics": MetricRecord(eval_loss, eval_acc,
    num-examples)}``: the keys Flower's strategies weight and aggregate by default.

    Examples
    --------
    >>> import numpy as np, fastmb
    >>> from fastmb.flower import NumPyClient, client_app
    >>> X, y = np.zeros((8, 2)), np.arange(8) % 2
    >>> app = client_app(lambda context: NumPyClient(fastmb.Linear(2, 2, loss="softmax"), X, y))
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context):
        client = client_fn(context)
        record = next(iter(msg.content.array_records.values()))
        params = params_from_arrays(client.model, dict(arrays_of(record, "the server's arrays")),
                                    dtype=client.params.dtype)
        config = _config(msg)
        new, n, metrics = client.train(params, config)
        reply = RecordDict({"arrays": array_record(model_arrays(client.model, new)),
                            "metrics": MetricRecord({**metrics, "num-examples": n})})
        return Message(content=reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context):
        client = client_fn(context)
        record = next(iter(msg.content.array_records.values()))
        arrays = dict(arrays_of(record, "the server's arrays"))
        loss, n, metrics = client.evaluate(
            [arrays[k] for k in model_arrays(client.model, client.params)], _config(msg))
        out = {"eval_loss": loss, "num-examples": n}
        if "accuracy" in metrics:
            out["eval_acc"] = metrics["accuracy"]
        return Message(content=RecordDict({"metrics": MetricRecord(out)}), reply_to=msg)

    return app


def _config(msg):
    for record in msg.content.config_records.values():
        return dict(record)
    return {}


def initial_arrays(model, params):
    """The ``ArrayRecord`` to start a strategy with (``strategy.start(grid,
    initial_arrays=...)``): ``model``'s layers from ``params``."""
    V.check_model(model)
    return array_record(model_arrays(model, V.as_params(model, params)))


__all__ = ["RULES", "Bulyan", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM",
           "FedMedian", "FedProx", "FedRule", "FedTrimmedAvg", "FedYogi", "Krum", "MultiKrum",
           "NumPyClient", "array_record", "arrays_of", "client_app", "initial_arrays",
           "model_arrays", "params_from_arrays"]
