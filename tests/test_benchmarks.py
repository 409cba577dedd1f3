"""pytest-benchmark suite: in the normal run (--benchmark-disable) each runs once as a smoke test.

Time them for real with ``pytest tests/test_benchmarks.py --benchmark-enable``.
"""

import importlib.util

import numpy as np
import pytest

import fastmb
from fastmb.cli.bench import flower_fedavg, numpy_mlp_per_sample


@pytest.fixture(scope="module")
def logistic_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4096, 32)).astype(np.float32)
    y = (rng.random(4096) < 0.5).astype(np.int64)
    return fastmb.Linear(32, loss="logistic"), X, y


def test_bench_per_sample_grad(benchmark, logistic_data):
    model, X, y = logistic_data
    p = model.init()
    out = np.empty((len(X), model.n_params), np.float32)
    res = benchmark(fastmb.per_sample_grad, model, p, X, y, out=out)
    np.testing.assert_allclose(res.mean(axis=0), fastmb.grad(model, p, X, y), rtol=1e-5, atol=1e-6)


def test_bench_sgd_epoch(benchmark, logistic_data):
    model, X, y = logistic_data
    p = benchmark(fastmb.sgd, model, model.init(), X, y, lr=0.1)
    assert fastmb.loss(model, p, X, y) < np.log(2) + 0.05


def test_bench_mlp_per_sample_and_numpy_peer(benchmark):
    model = fastmb.MLP([16, 8, 4])
    rng = np.random.default_rng(1)
    p = model.init(seed=0)
    X, y = rng.normal(size=(256, 16)).astype(np.float32), rng.integers(0, 4, 256)
    G = benchmark(fastmb.per_sample_grad, model, p, X, y)
    # the NumPy peer in `fastmb bench` computes the same thing
    peer = numpy_mlp_per_sample(model, p, X, y)()
    flat = np.concatenate([np.concatenate([gW.reshape(len(X), -1), gb], axis=1) for gW, gb in peer],
                          axis=1)
    np.testing.assert_allclose(G, flat, rtol=1e-4, atol=1e-5)


def test_bench_fedavg_and_flower_peer(benchmark):
    rng = np.random.default_rng(2)
    U = rng.normal(size=(16, 50_000)).astype(np.float32)
    w = rng.integers(1, 100, 16)
    avg = benchmark(fastmb.fedavg, U, w)
    flower = flower_fedavg(U, w)()[0]
    np.testing.assert_allclose(avg, flower, rtol=1e-5, atol=1e-6)


def test_bench_robust_rules_and_numpy_peers(benchmark):
    from fastmb.cli.bench import numpy_krum, numpy_median, numpy_trimmed_mean, robust_data

    (U,) = robust_data(K=24, P=3000)
    med = benchmark(fastmb.coordinate_median, U)
    # the peers `fastmb bench` times compute the same aggregates
    np.testing.assert_array_equal(med.aggregate, numpy_median(U)())
    np.testing.assert_allclose(fastmb.trimmed_mean(U, 0.1).aggregate, numpy_trimmed_mean(U)(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fastmb.krum(U, 5).aggregate, numpy_krum(U, 5)())


def test_bench_dp_step_and_plain_step_peer(benchmark):
    from fastmb.cli.bench import PEERS, mlp_data

    model, p, X, y = mlp_data(sizes=(8, 16, 4), batch=64)
    new = benchmark(fastmb.sgd, model, p, X, y, batch_size=64, shuffle=False, lr=0.01,
                    clip_norm=1e30)
    # with an infinite clip and no noise the DP step is the plain step the peer times
    plain = dict(PEERS["dp_step"])["fastmb non-private step"](model, p, X, y)()
    np.testing.assert_allclose(new, plain, rtol=1e-6, atol=1e-7)


def test_bench_int8_mean_and_numpy_peer(benchmark):
    from fastmb.cli.bench import numpy_int8_mean

    rng = np.random.default_rng(3)
    U, w = rng.normal(size=(6, 5000)).astype(np.float32), rng.uniform(1, 3, 6)
    qs = [fastmb.quantize_int8(u, 256) for u in U]
    got = benchmark(fastmb.mean_compressed, qs, w)
    peer = numpy_int8_mean([q.codes for q in qs], [q.scales for q in qs], w, 256)()
    np.testing.assert_allclose(got, peer, rtol=1e-5, atol=1e-6)


def test_bench_federated_round_and_numpy_peer(benchmark):
    # The Flower-comparison workload: fastmb's round and the NumPy loop's reach the same
    # accuracy round after round (float32 vs float64 arithmetic).
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.flower_comparison import fastmb_simulation, numpy_round, numpy_setup

    sim, st = fastmb_simulation(10), numpy_setup(10)
    for _ in range(3):
        acc = sim.step()["accuracy"]
        assert abs(acc - numpy_round(st)) <= 2 / 297
    benchmark(sim.step)


def test_bench_torch_backend_and_its_peers(benchmark):
    # The rows `fastmb bench` adds for fastmb.torch: its peers compute the same thing.
    pytest.importorskip("opacus")
    import torch

    from fastmb.cli.bench import PEERS, torch_mlp_data

    tm, net, X, y = torch_mlp_data(sizes=(6, 8, 3), batch=32)
    G = benchmark(tm.per_sample_grad, X, y).clone()
    grads = [p.grad_sample for p in tm.module.parameters()]
    peers = dict(PEERS["torch_per_sample"])
    out = peers["torch.func vmap(grad)"](tm, net, X, y)()
    for a, b in zip(grads, out.values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    out = peers["Opacus GradSampleModule (hooks)"](tm, net, X, y)()
    for a, b in zip(grads, out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    norms = dict(PEERS["torch_norms"])["Opacus ghost clipping"](tm, net, X, y)()
    torch.testing.assert_close(tm.per_sample_grad_norm(X, y), norms, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(G.norm(dim=1), norms, rtol=1e-4, atol=1e-6)


def test_bench_sklearn_sgd_fit_and_its_peer(benchmark):
    # The rows `fastmb bench` adds for fastmb.sklearn: the peer fits the same model.
    from fastmb.cli.bench import SGD_FIT, logistic_data, sklearn_sgd_fit
    from fastmb.sklearn import SGDClassifier

    _, _, X, y = logistic_data(n=500, d=8)
    X = X.astype(np.float64)
    ours = benchmark(SGDClassifier(**SGD_FIT).fit, X, y)
    theirs = sklearn_sgd_fit(X, y)()
    assert ours.n_iter_ == theirs.n_iter_ == 5
    assert abs(ours.score(X, y) - theirs.score(X, y)) < 0.05


def test_bench_sklearn_mlp_fit_and_its_peer(benchmark):
    # The MLP rows: one epoch each, fastmb's estimator and scikit-learn's, same shapes.
    from fastmb.cli.bench import MLP_FIT, _quiet_fit, mlp_data, sklearn_mlp_fit
    from fastmb.sklearn import MLPClassifier

    _, _, X, y = mlp_data(sizes=(16, 8, 4), batch=400)
    ours = {"sgd": benchmark(_quiet_fit(lambda: MLPClassifier(**MLP_FIT["sgd"]), X, y)),
            "adam": _quiet_fit(lambda: MLPClassifier(**MLP_FIT["adam"]), X, y)()}
    for solver, est in ours.items():
        theirs = sklearn_mlp_fit(X, y, solver)()
        assert est.n_iter_ == theirs.n_iter_ == 1
        assert [c.shape for c in est.coefs_] == [c.shape for c in theirs.coefs_]


def test_bench_flower_strategies_and_their_peers(benchmark):
    # The rows `fastmb bench` adds for fastmb.flower: both APIs agree with Flower's FedAvg.
    pytest.importorskip("flwr")
    from flwr.common import parameters_to_ndarrays

    from fastmb.cli.bench import flower_legacy_fedavg, flower_message_fedavg, flower_strategy_data
    from fastmb.flower import FedAvg
    from fastmb.flower_legacy import FedAvg as LegacyFedAvg

    msgs, fits, P = data = flower_strategy_data(K=6, P=1000)
    ours = benchmark(FedAvg().aggregate_train, 1, msgs)[0]
    theirs = flower_message_fedavg(*data)()[0]
    for k in theirs:
        np.testing.assert_allclose(ours[k].numpy(), theirs[k].numpy(), rtol=1e-5, atol=1e-6)
    ours = parameters_to_ndarrays(LegacyFedAvg().aggregate_fit(1, fits, [])[0])
    theirs = parameters_to_ndarrays(flower_legacy_fedavg(*data)()[0])
    assert sum(a.size for a in ours) == P
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bench_split_epoch_and_its_peer(benchmark):
    # The row `fastmb bench` adds for split learning: its peer is the same epoch unsplit.
    from fastmb.cli.bench import mlp_data, unsplit_sgd_epoch
    from fastmb.slicing import split_sgd

    model, p, X, y = mlp_data(sizes=(8, 6, 6, 3), batch=100)
    res = benchmark(split_sgd, model, p, X, y, 1, batch_size=32, lr=0.05)
    np.testing.assert_array_equal(res.params, unsplit_sgd_epoch(model, p, X, y, 1)())


def test_bench_splitfed_round_and_its_peer(benchmark):
    # The SplitFed row's peer is the FedAvg round SplitFed V1 equals bit for bit.
    from fastmb.cli.bench import fedavg_round, mlp_data
    from fastmb.slicing import splitfed

    model, p, X, y = mlp_data(sizes=(8, 6, 6, 3), batch=120)
    off = np.linspace(0, 120, 5).astype(np.int64)
    res = benchmark(splitfed, model, p, X, y, off, 1, batch_size=32, lr=0.05)
    np.testing.assert_array_equal(res.params, fedavg_round(model, p, X, y, off, 1)())


def test_bench_hetero_round_and_its_peer(benchmark):
    # The width-sliced round with every rate 1 is FedAvg's round (to rounding).
    from fastmb.cli.bench import hetero_round, homogeneous_round, mlp_data

    model, p, X, y = mlp_data(sizes=(8, 6, 6, 3), batch=120)
    off = np.linspace(0, 120, 5).astype(np.int64)
    benchmark(hetero_round(model, p, X, y, off, np.array([1.0, 0.5, 0.5, 0.25])))
    np.testing.assert_allclose(hetero_round(model, p, X, y, off, np.ones(4))(),
                               homogeneous_round(model, p, X, y, off, np.ones(4))(),
                               rtol=1e-6, atol=1e-7)


def test_bench_compact_predict_and_its_peer(benchmark):
    # Compact inference's peer is the dense model: f32 CSR keeps its predictions exactly.
    from fastmb.cli.bench import dense_predict, mlp_data
    from fastmb.slicing import CompactModel, prune

    model, p, X, _ = mlp_data(sizes=(16, 12, 4), batch=100)
    q = prune(model, p, 0.5)
    cm = CompactModel.from_params(model, q, "csr")
    got = benchmark(cm.predict, X)
    np.testing.assert_array_equal(got, dense_predict(model, q, X, cm)())


def test_bench_secure_aggregation_and_its_peers(benchmark):
    """Masking beside Flower's SecAgg+ masking, unmasking beside plain FedAvg, envelopes
    beside Fernet, a secure round beside a plain one: each runs once, small."""
    pytest.importorskip("cryptography")
    from fastmb.cli import bench as B
    from fastmb.secure import SecAggConfig, mask_update
    from fastmb.secure.secagg import MaskPlan

    u, seeds = B.secagg_client_data(P=5000)
    plan = MaskPlan(0, seeds[0], tuple((i + 1, s, i % 2 == 0) for i, s in
                                       enumerate(seeds[1:])), "aes-ctr")
    fq = SecAggConfig().quantizer
    y = benchmark(lambda: mask_update(plan, fq.quantize(u, 1, 5)))
    assert y.dtype == np.uint32 and y.shape == (5001,)
    if importlib.util.find_spec("flwr") is not None:
        assert B.flower_secagg_mask(u, seeds)()[-1].shape == (5000,)
    server, responses, U, n_streams = data = B.secagg_server_data(12, 300)
    total = server.finish(responses)
    mean = SecAggConfig().quantizer.dequantize(total)
    np.testing.assert_allclose(mean, B.plain_fedavg_survivors(*data)(), atol=1e-4)
    assert n_streams >= len(U)
    assert B.fernet_encrypt(b"abc", None)() != b"abc"
    assert B.fernet_decrypt(b"abc", None)() == b"abc"
    model, d, part = B.secure_round_data(10)
    sec, plain = B._round_sim(model, d, part, True)(), B.plain_round(model, d, part)()
    assert sec["used"] == plain["used"] == 10
