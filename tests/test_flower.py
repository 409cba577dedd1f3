"""fastmb's Flower strategies against Flower's own, on the same client results.

Every strategy of both APIs (Message API: ``fastmb.flower``, legacy: ``fastmb.flower_legacy``)
gets the replies Flower's strategy of the same name gets; the results must agree: exactly
where the arithmetic allows (the median; FedAvg on values whose sums are exact), to float64
rounding elsewhere in float64, to float32 rounding in float32. Then the wire decoder on
hostile bytes, the client, and a real Flower simulation (Ray, in a subprocess).
"""

import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.metadata import Metadata
from flwr.common import (
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import strategy as legacy_flwr
from flwr.serverapp import strategy as msg_flwr
from flwr.supercore.task_identity import TaskIdentity

import fastmb
from fastmb import flower as fm
from fastmb import flower_legacy as fl
from fastmb.adapters._flower_core import array_from_npy, npy_bytes

from .conftest import readme_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(6, 5), (5,), (5, 3), (3,)]


@pytest.fixture(autouse=True)
def _quiet_flower():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def client_models(K, dtype=np.float64, seed=0, grid=False, outliers=0):
    """K models of SHAPES and their example counts. ``grid``: values on a 1/8 grid and
    counts summing to a power of two, so that every weighted sum and mean is exact."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(K):
        arrs = []
        for s in SHAPES:
            a = rng.integers(-64, 64, s) / 8 if grid else rng.standard_normal(s)
            if k < outliers:
                a = a + 50.0
            arrs.append(np.asarray(a, dtype))
        out.append(arrs)
    counts = rng.integers(1, 50, K)
    if grid:
        total = 1 << int(counts[:-1].sum()).bit_length()
        counts[-1] = total - counts[:-1].sum()
    return out, counts


def replies(models, counts):
    out = []
    for i, (arrs, n) in enumerate(zip(models, counts)):
        rec = RecordDict({"arrays": ArrayRecord({f"l{j}": Array(a) for j, a in enumerate(arrs)}),
                          "metrics": MetricRecord({"num-examples": int(n), "loss": float(i)})})
        md = Metadata(run_id=1, message_id=f"m{i}", src_node_id=i + 1, dst_node_id=0,
                      reply_to_message_id="", group_id="1", created_at=0.0, ttl=3600.0,
                      message_type=MessageType.TRAIN)
        out.append(Message(content=rec, metadata=md))
    return out


def fit_results(models, counts):
    return [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), int(n), {}))
            for a, n in zip(models, counts)]


def record_list(record):
    return [record[k].numpy() for k in record]


def assert_same(ours, theirs, exact=False, rtol=1e-12):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            tol = rtol * max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=0, atol=tol)


class FakeGrid:
    """What ``configure_train`` asks a grid: the connected node ids."""


    def __init__(self, n):
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


# --------------------------------------------------------------------------- Message API

MESSAGE_CASES = [
    ("FedAvg", {}, 5, 0),
    ("FedProx", {"proximal_mu": 0.1}, 5, 0),
    ("FedMedian", {}, 6, 1),
    ("FedMedian", {}, 7, 2),
    ("FedTrimmedAvg", {"beta": 0.2}, 10, 2),
    ("Krum", {"num_malicious_nodes": 1}, 7, 1),
    ("MultiKrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 3}, 7, 1),
    ("Bulyan", {"num_malicious_nodes": 1}, 9, 1),
    ("Bulyan", {"num_malicious_nodes": 0}, 4, 0),
]


@pytest.mark.parametrize("name,kwargs,K,outliers", MESSAGE_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in MESSAGE_CASES])
@pytest.mark.parametrize("grid", [True, False], ids=["exact-values", "random"])
def test_message_strategy_matches_flower(name, kwargs, K, outliers, grid):
    models, counts = client_models(K, grid=grid, outliers=outliers)
    ours, theirs = getattr(fm, name)(**kwargs), getattr(msg_flwr, name)(**kwargs)
    assert isinstance(ours, getattr(msg_flwr, name))
    a, ma = ours.aggregate_train(1, replies(models, counts))
    b, mb = theirs.aggregate_train(1, replies(models, counts))
    # exact where every sum is exact (grid values, weights summing to a power of two; a
    # MultiKrum subset's weights need not) and for the median, which adds nothing
    exact = (grid and name != "MultiKrum") or name == "FedMedian"
    assert_same(record_list(a), record_list(b), exact=exact)
    assert list(a.keys()) == list(b.keys())
    assert dict(ma) == pytest.approx(dict(mb))


def test_message_replies_are_not_modified():
    models, counts = client_models(5)
    rs = replies(models, counts)
    fm.FedMedian().aggregate_train(1, rs)
    fm.FedTrimmedAvg().aggregate_train(1, rs)
    for r, arrs in zip(rs, models):
        assert_same(record_list(r.content["arrays"]), arrs, exact=True)


@pytest.mark.parametrize("name,kwargs", [
    ("FedAvgM", {"server_momentum": 0.9, "server_learning_rate": 0.7}),
    ("FedAvgM", {}),
    ("FedAdagrad", {"eta": 0.3}),
    ("FedAdam", {"eta": 0.2, "beta_1": 0.8}),
    ("FedYogi", {"eta": 0.1}),
])
def test_message_server_optimizers_match_flower_over_rounds(name, kwargs, monkeypatch):
    # configure_train builds Messages, which read the run id of the process's task
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    start, _ = client_models(1, seed=9)
    ours, theirs = getattr(fm, name)(**kwargs), getattr(msg_flwr, name)(**kwargs)
    arrays = {s: ArrayRecord({f"l{j}": Array(a) for j, a in enumerate(start[0])})
              for s in ("ours", "theirs")}
    for rnd in range(1, 4):
        models, counts = client_models(5, seed=rnd)
        out = {}
        for key, strat in (("ours", ours), ("theirs", theirs)):
            strat.configure_train(rnd, arrays[key], ConfigRecord(), FakeGrid(5))
            out[key], _ = strat.aggregate_train(rnd, replies(models, counts))
            arrays[key] = out[key]
        assert_same(record_list(out["ours"]), record_list(out["theirs"]), rtol=1e-12)


def test_message_fedavg_float32_to_rounding():
    models, counts = client_models(20, dtype=np.float32, seed=3)
    a, _ = fm.FedAvg().aggregate_train(1, replies(models, counts))
    b, _ = msg_flwr.FedAvg().aggregate_train(1, replies(models, counts))
    assert_same(record_list(a), record_list(b), rtol=2e-6)
    # and ours is the float64 mean rounded once
    w = counts / counts.sum()
    exact = [sum(wk * m[j].astype(np.float64) for wk, m in zip(w, models))
             for j in range(len(SHAPES))]
    for got, ref in zip(record_list(a), exact):
        np.testing.assert_array_equal(got, ref.astype(np.float32))


def test_message_mixed_dtypes_follow_flower():
    rng = np.random.default_rng(1)
    models = [[rng.standard_normal((3, 2)).astype(np.float32), rng.integers(0, 9, 4),
               rng.standard_normal(2).astype(np.float16)] for _ in range(3)]
    counts = np.array([3, 1, 2])
    a, _ = fm.FedAvg().aggregate_train(1, replies(models, counts))
    b, _ = msg_flwr.FedAvg().aggregate_train(1, replies(models, counts))
    for x, y in zip(record_list(a), record_list(b)):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=2e-3)


def test_message_bad_replies_raise():
    models, counts = client_models(3)
    models[1][2] = models[1][2].copy()
    models[1][2][0, 0] = np.nan
    with pytest.raises(ValueError, match="reply 1"):
        fm.FedAvg().aggregate_train(1, replies(models, counts))
    models, counts = client_models(3)
    models[2][0] = models[2][0][:5]
    with pytest.raises(ValueError, match="reply 2.*shape"):
        fm.FedAvg().aggregate_train(1, replies(models, counts))
    models, counts = client_models(3)
    with pytest.raises(ValueError, match="weights"):
        fm.FedAvg().aggregate_train(1, replies(models, [-1, 2, 3]))
    rs = replies(*client_models(3))
    arr = rs[0].content["arrays"]["l0"]
    arr.data = arr.data[:-8]
    with pytest.raises(ValueError, match="payload"):
        fm.FedAvg().aggregate_train(1, rs)


def test_fedrule_runs_registry_rules():
    models, counts = client_models(7, outliers=1)
    for rule, opts in [("geometric_median", {"max_iter": 20}), ("median", {}),
                       ("norm_bounded", {"max_norm": 5.0}), ("fedavg", {})]:
        a, _ = fm.FedRule(rule=rule, rule_options=opts).aggregate_train(
            1, replies(models, counts))
        U = np.stack([np.concatenate([x.ravel() for x in m]) for m in models])
        w = counts if fastmb.aggregate.rules.get(rule).weighted else None
        if rule == "fedavg":
            ref = fastmb.fedavg(U, counts)
        else:
            kw = dict(fastmb.aggregate.rules.options(rule, opts))
            if w is not None:
                kw["weights"] = w
            ref = fastmb.aggregate.rules.get(rule).run(U, **kw).aggregate
        got = np.concatenate([x.ravel() for x in record_list(a)])
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="unknown aggregator"):
        fm.FedRule(rule="nope")
    with pytest.raises(ValueError, match="unknown option"):
        fm.FedRule(rule="median", rule_options={"beta": 1})


def test_rule_names_come_from_the_registry():
    names = set(fastmb.aggregate.rules.names())
    assert set(fm.RULES.values()) <= names
    assert set(fl.RULES.values()) <= names


# --------------------------------------------------------------------------- legacy API

LEGACY_CASES = [
    ("FedAvg", {}, 5, 0),
    ("FedAvg", {"inplace": False}, 5, 0),
    ("FedProx", {"proximal_mu": 0.1}, 5, 0),
    ("FedMedian", {}, 6, 1),
    ("FedTrimmedAvg", {"beta": 0.2}, 10, 2),
    ("Krum", {"num_malicious_clients": 1}, 7, 1),
    ("Krum", {"num_malicious_clients": 1, "num_clients_to_keep": 3}, 7, 1),
    ("Bulyan", {"num_malicious_clients": 1, "to_keep": 0}, 9, 1),
]


@pytest.mark.parametrize("name,kwargs,K,outliers", LEGACY_CASES,
                         ids=[f"{c[0]}-{c[2]}-{len(c[1])}" for c in LEGACY_CASES])
@pytest.mark.parametrize("grid", [True, False], ids=["exact-values", "random"])
def test_legacy_strategy_matches_flower(name, kwargs, K, outliers, grid):
    models, counts = client_models(K, grid=grid, outliers=outliers)
    ours, theirs = getattr(fl, name)(**kwargs), getattr(legacy_flwr, name)(**kwargs)
    assert isinstance(ours, getattr(legacy_flwr, name))
    a, _ = ours.aggregate_fit(1, fit_results(models, counts), [])
    b, _ = theirs.aggregate_fit(1, fit_results(models, counts), [])
    exact = (grid and "num_clients_to_keep" not in kwargs) or name == "FedMedian"
    assert_same(parameters_to_ndarrays(a), parameters_to_ndarrays(b), exact=exact)


@pytest.mark.parametrize("name,kwargs", [
    ("FedAvgM", {"server_momentum": 0.9, "server_learning_rate": 0.7}),
    ("FedAdagrad", {"eta": 0.3}),
    ("FedAdam", {"eta": 0.2, "beta_1": 0.8}),
    ("FedYogi", {"eta": 0.1}),
])
def test_legacy_server_optimizers_match_flower_over_rounds(name, kwargs):
    start, _ = client_models(1, seed=9)
    init = ndarrays_to_parameters(start[0])
    ours = getattr(fl, name)(initial_parameters=init, **kwargs)
    theirs = getattr(legacy_flwr, name)(initial_parameters=init, **kwargs)
    for rnd in range(1, 4):
        models, counts = client_models(5, seed=rnd)
        a, _ = ours.aggregate_fit(rnd, fit_results(models, counts), [])
        b, _ = theirs.aggregate_fit(rnd, fit_results(models, counts), [])
        assert_same(parameters_to_ndarrays(a), parameters_to_ndarrays(b), rtol=1e-12)


def test_legacy_failures_and_empty_results():
    models, counts = client_models(3)
    s = fl.FedAvg(accept_failures=False)
    assert s.aggregate_fit(1, fit_results(models, counts), [RuntimeError()]) == (None, {})
    assert fl.FedAvg().aggregate_fit(1, [], []) == (None, {})
    with pytest.raises(ValueError, match="4 \\* num_malicious"):
        fl.Bulyan(num_malicious_clients=1, to_keep=0).aggregate_fit(
            1, fit_results(*client_models(5)), [])


# --------------------------------------------------------------------------- wire format


def test_npy_round_trip_and_views():
    for a in [np.arange(6.0).reshape(2, 3), np.arange(4, dtype=np.float32), np.int64(3),
              np.zeros((0, 4), np.float32), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              np.arange(3, dtype=">f4")]:
        buf = io.BytesIO()
        np.save(buf, a)
        data = buf.getvalue()
        got = array_from_npy(data)
        np.testing.assert_array_equal(got, a)
        assert got.dtype == a.dtype
        np.testing.assert_array_equal(np.load(io.BytesIO(npy_bytes(a))), a)
    data = npy_bytes(np.arange(1000, dtype=np.float32))
    assert not array_from_npy(data).flags.owndata  # a view of the message's bytes


@pytest.mark.parametrize("data,match", [
    (b"", "magic"), (b"\x93NUMPY\x01\x00\xff\xff{}", "truncated"),
    (b"\x93NUMPY\x03\x00" + bytes(10), "version"),
])
def test_npy_bad_bytes(data, match):
    with pytest.raises(ValueError, match=match):
        array_from_npy(data)


def test_npy_refuses_objects_and_bad_headers():
    good = npy_bytes(np.arange(3.0))
    for old, new in [(b"'<f8'", b"'|O8'"), (b"(3,)", b"(-3,)"), (b"False", b"1    "),
                     (b"'shape'", b"'shapX'"), (b"(3,)", b"(4,)")]:
        with pytest.raises(ValueError):
            array_from_npy(good.replace(old, new))
    with pytest.raises(TypeError, match="bytes"):
        array_from_npy(3.0)


# --------------------------------------------------------------------------- client


def test_numpy_client_trains_with_fastmb_sgd():
    model = fastmb.MLP([4, 6, 3])
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 4)).astype(np.float32), rng.integers(0, 3, 50)
    client = fm.NumPyClient(model, X, y, lr=0.2, epochs=2, batch_size=8, seed=3)
    start = client.get_parameters({})
    arrays, n, metrics = client.fit(start, {"server-round": 4, "proximal-mu": 0.5})
    p0 = fm.params_from_arrays(model, dict(zip(fm.model_arrays(model, client.params), start)))
    ref = fastmb.sgd(model, p0, X, y, lr=0.2, epochs=2, batch_size=8, seed=7, prox_mu=0.5)
    np.testing.assert_array_equal(np.concatenate([a.ravel() for a in arrays]),
                                  np.concatenate([a.ravel() for a in fm.model_arrays(
                                      model, ref).values()]))
    assert n == 50 and metrics["train_loss"] > 0
    _, n, m = client.evaluate(arrays, {})
    assert n == 50 and 0 <= m["accuracy"] <= 1
    with pytest.raises(ValueError, match="4 arrays"):
        client.fit(start[:2], {})
    with pytest.raises(ValueError, match="shape"):
        client.fit([start[1], start[0], start[2], start[3]], {})


def test_model_arrays_round_trip():
    model = fastmb.MLP([3, 4, 2])
    p = model.init(seed=1)
    assert np.array_equal(fm.params_from_arrays(model, fm.model_arrays(model, p)), p)
    with pytest.raises(ValueError, match="keys"):
        fm.params_from_arrays(model, {"0.W": np.zeros((3, 4))})


SIMULATION = r"""
import json, sys, logging
import numpy as np
import fastmb
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as fs
from flwr.simulation import run_simulation
from fastmb import flower as fm

which, out = sys.argv[1], sys.argv[2]
model = fastmb.MLP([8, 6, 3])
rng = np.random.default_rng(0)
X = rng.standard_normal((120, 8)).astype(np.float32)
y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)

def client_fn(context):
    k = int(context.node_config["partition-id"])
    return fm.NumPyClient(model, X[k::3], y[k::3], lr=0.1, batch_size=8, seed=k)

app = ServerApp()

@app.main()
def main(grid: Grid, context: Context):
    cls = fm.FedAvg if which == "fastmb" else fs.FedAvg
    # every round waits for all three nodes (else a round can start with two connected)
    strategy = cls(min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)
    res = strategy.start(grid=grid, initial_arrays=fm.initial_arrays(model, model.init(seed=5)),
                         num_rounds=3)
    arrays = {k: v.numpy().tolist() for k, v in res.arrays.items()}
    start = {k: v.tolist() for k, v in fm.model_arrays(model, model.init(seed=5)).items()}
    evals = {int(r): dict(m) for r, m in res.evaluate_metrics_clientapp.items()}
    json.dump({"arrays": arrays, "start": start, "evaluate": evals}, open(out, "w"))

run_simulation(server_app=app, client_app=fm.client_app(client_fn), num_supernodes=3,
               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                               "init_args": {"num_cpus": 2, "include_dashboard": False}})
"""


def test_flower_simulation_matches_flower_fedavg(tmp_path):
    """A real Flower simulation (``run_simulation``, Ray) with fastmb's strategy and
    ClientApp runs its 3 rounds to the end and ends where Flower's own FedAvg does."""
    import json

    script = tmp_path / "sim.py"
    script.write_text(SIMULATION)
    results = {}
    for which in ("fastmb", "flower"):
        out = tmp_path / f"{which}.json"
        res = subprocess.run([sys.executable, str(script), which, str(out)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600, check=False,
                             env={**os.environ, "RAY_DEDUP_LOGS": "0"})
        assert res.returncode == 0 and out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
        results[which] = json.loads(out.read_text())
    a, b = results["fastmb"], results["flower"]
    assert sorted(a["arrays"]) == sorted(b["arrays"]) == ["0.W", "0.b", "1.W", "1.b"]
    for k in a["arrays"]:
        np.testing.assert_allclose(a["arrays"][k], b["arrays"][k], rtol=1e-5, atol=1e-6)
        assert np.abs(np.subtract(a["arrays"][k], a["start"][k])).max() > 1e-3  # it trained
    assert sorted(a["evaluate"]) == ["1", "2", "3"]  # (JSON keys)
    assert a["evaluate"]["3"]["eval_loss"] == pytest.approx(b["evaluate"]["3"]["eval_loss"],
                                                            rel=1e-5)
    assert a["evaluate"]["3"]["eval_loss"] < a["evaluate"]["1"]["eval_loss"]


def test_readme_example_runs(tmp_path):
    """The README's Flower example, as written, in its own process (it starts Ray)."""
    code = readme_code("## Flower strategies")
    script = tmp_path / "readme_flower.py"
    script.write_text(code)
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    acc = float(res.stdout.split("accuracy")[-1].split()[0])
    assert acc > 0.8
