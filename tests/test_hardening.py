"""Every case of the hardening issue, kept closed: no input may crash the interpreter,
corrupt memory, hang, lose work or give a silently wrong answer.

Cases that could crash or hang run in a subprocess (a crash or a timeout fails the test,
not the run): the byte-decoder fuzzing, the sweep of the public API, Ctrl-C.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import fastmb
from fastmb import partition as Pt
from fastmb.cli import main as cli
from fastmb.compress import QuantizedUpdate, SparseUpdate

from . import naive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(args, timeout, **kw):
    """Run ``python args`` from the repository root; a crash shows as the return code."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False, **kw)


def _tiny_sim(**kw):
    data = kw.pop("data", None) or fastmb.data.synthetic(240, 4, 3, n_test=30, seed=0)
    part = Pt.iid(len(data.y), 8, seed=0)
    model = kw.pop("model", None) or fastmb.Linear(4, 3, loss="softmax")
    kw = {"clients_per_round": 4, "epochs": 1, "batch_size": 8, "seed": 0, **kw}
    return fastmb.Simulation(model, data, part, **kw)


# ---------------------------------------------------------------- memory safety


@pytest.mark.parametrize("offsets, clients", [
    ([0.0, 5.0, 1e19], None),                                   # float beyond int64
    ([0.0, 5.0, -1e19, 40.0], None),
    (np.array([0, 5, 2**63 - 1, -2**63 + 10, 40]), [2]),       # int64 differences that wrap
    (np.array([0, 5, 2**64 - 1, 40], np.uint64), None),          # uint64 beyond int64
    ([0, 5, float("inf"), 40], None),
])
def test_client_offsets_that_would_wrap_are_refused(offsets, clients):
    m = fastmb.Linear(2)
    X, y = np.zeros((40, 2), "f4"), np.zeros(40, "f4")
    with pytest.raises((ValueError, TypeError), match="client_offsets"):
        fastmb.train_clients(m, m.init(), X, y, offsets, clients=clients)


def test_row_and_client_indices_beyond_int64_are_refused():
    m = fastmb.Linear(2)
    X, y = np.zeros((40, 2), "f4"), np.zeros(40, "f4")
    with pytest.raises(ValueError, match="rows must lie in"):
        fastmb.train_clients(m, m.init(), X, y, [0, 2], rows=np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(ValueError, match="clients must lie in"):
        fastmb.train_clients(m, m.init(), X, y, [0, 20, 40], clients=[1e19])
    with pytest.raises(ValueError, match="epochs.*more than 2\\*\\*62"):
        fastmb.train_clients(m, m.init(), X, y, [0, 40], epochs=2**61, batch_size=1)
    with pytest.raises(ValueError, match="epochs.*more than 2\\*\\*62"):
        _tiny_sim(epochs=2**61)


def test_partition_refuses_what_would_wrap():
    with pytest.raises(ValueError, match="client 1 owns none"):
        Pt.Partition(np.arange(10), np.array([0, 8, 3, 10], np.uint64))
    with pytest.raises(ValueError, match="rows must lie in"):
        Pt.Partition(np.array([0, 2**64 - 1], np.uint64), [0, 1, 2])
    with pytest.raises(ValueError, match="keys"):
        Pt.Partition.from_state_dict({"rows": np.arange(3)})


def test_quantized_update_fields_checked_at_every_door():
    u = np.random.default_rng(0).normal(size=20).astype(np.float32)
    good = fastmb.quantize_int8(u, block=8)
    long_codes = QuantizedUpdate(np.ones(2_000_000, "i1"), np.ones(1, "f4"), 8, 2_000_000, "int8")
    bad = [
        (long_codes, "codes must be int8 of shape"),
        (QuantizedUpdate(np.ones(3, "i1"), np.ones(2, "f4"), 10, 8, "int8"), "codes"),
        (good._replace(block=0), "block must be >= 1"),
        (good._replace(block=2.5), "block must be an integer"),
        (good._replace(n_params=-4), "n_params must be >= 1"),
        (good._replace(scheme="int4"), "scheme"),
        (good._replace(scales=np.full(3, 3e38, np.float32)), "scales must be at most"),
        (good._replace(scales=np.array([1, np.nan, 1], np.float32)), "finite"),
        (good._replace(scales=np.array([1, -1, 1], np.float32)), "non-negative"),
    ]
    wm = fastmb.WeightedMean(20)
    fb = fastmb.FedBuff(np.zeros(20), buffer_size=2)
    for q, match in bad:
        for door in (q.dequantize, q.to_bytes, lambda q=q: wm.add_quantized(q),
                     lambda q=q: fastmb.mean_compressed([good, q]), lambda q=q: fb.add(q, 0)):
            with pytest.raises((ValueError, TypeError), match=match):
                door()
    assert wm.count == 0 and fb.pending == 0  # nothing was added on the way
    np.testing.assert_allclose(good.dequantize(), u, atol=float(good.scales.max()))
    # at the largest scale even the code -128 (never made by quantize_int8) stays finite
    edge = good._replace(codes=np.full(20, -128, np.int8),
                         scales=np.full(3, fastmb.compress.SCALE_MAX, np.float32))
    assert np.isfinite(edge.dequantize()).all()


def test_sparse_update_fields_checked_at_every_door():
    bad = [
        (SparseUpdate(np.array([0.7, 2.2]), np.array([1.0, 2.0]), 4), TypeError, "indices"),
        (SparseUpdate(np.array([0, 2]), np.array([1 + 1j, 2.0]), 4), TypeError, "values"),
        (SparseUpdate(np.array([0, 9]), np.array([1.0, 2.0]), 4), ValueError, "indices"),
        (SparseUpdate(np.array([2, 2]), np.array([1.0, 2.0]), 4), ValueError, "increasing"),
        (SparseUpdate(np.array([0]), np.array([1.0]), 0), ValueError, "n_params"),
        (SparseUpdate(np.array([0]), np.array([np.inf]), 4), ValueError, "NaN or Inf"),
    ]
    wm = fastmb.WeightedMean(4)
    for s, exc, match in bad:
        for door in (s.densify, s.to_bytes, lambda s=s: wm.add_sparse(s)):
            with pytest.raises(exc, match=match):
                door()
    assert wm.count == 0


def _write_checkpoint(path, arrays):
    np.savez(path, **arrays)
    return path


def test_checkpoint_fields_validated_before_anything_changes(tmp_path):
    sim = _tiny_sim(server="fedadam")
    ck = tmp_path / "ck.npz"
    sim.run(2, checkpoint=ck)
    with np.load(ck) as z:
        good = {k: z[k] for k in z.files}
    p = good["params"]
    history = json.loads(str(good["history"]))
    cases = [
        ({"params": p[:-1]}, "params of shape"),
        ({"params": np.concatenate([p, [0]]).astype(p.dtype)}, "params of shape"),
        ({"params": p.astype(np.float64)}, "dtype float64"),
        ({"params": np.where(np.arange(p.size) == 3, np.nan, p).astype(p.dtype)}, "finite"),
        ({"params": p.reshape(1, -1)}, "params of shape"),
        ({"round": np.int64(-1)}, "round -1"),
        ({"round": np.int64(3)}, "history records for 3 rounds"),
        ({"round": np.array([2, 2])}, "round an array"),
        ({"version": np.int64(2)}, "version 2"),
        ({"config": np.array("{not json")}, "not valid JSON"),
        ({"history": np.array(json.dumps(history[:1]))}, "1 history records for 2 rounds"),
        ({"history": np.array(json.dumps([{"round": 1}] * 2))}, "fields of a round"),
        ({"opt.lr": np.float64(-1)}, "server optimizer state: lr must be > 0"),
        ({"opt.v": -np.ones(p.size)}, "non-negative"),
        ({"opt.params": p + 1}, "differ from its params"),
        ({"extra": np.zeros(1)}, "holds"),
    ]
    fresh = _tiny_sim(server="fedadam")
    for change, match in cases:
        bad = _write_checkpoint(tmp_path / "bad.npz", {**good, **change})
        with pytest.raises(ValueError, match=match):
            fresh.load(bad)
        assert fresh.round == 0 and fresh.history == []  # nothing changed
    missing = {k: v for k, v in good.items() if k != "params"}
    with pytest.raises(ValueError, match="holds"):
        fresh.load(_write_checkpoint(tmp_path / "bad.npz", missing))
    data = ck.read_bytes()
    for content in (b"", data[: len(data) // 2], b"not a zip archive"):
        (tmp_path / "bad.npz").write_bytes(content)
        with pytest.raises(ValueError, match="not a readable fastmb checkpoint"):
            fresh.load(tmp_path / "bad.npz")
    np.save(tmp_path / "array.npy", p)
    with pytest.raises(ValueError, match="not a fastmb checkpoint"):
        fresh.load(tmp_path / "array.npy")
    assert fresh.load(ck).round == 2  # and the good one still loads


# ---------------------------------------------------------------- silent wrong answers


def _krum_attack(seed):
    """Honest updates N(0, 0.01^2), one attacker just outside them (row 8), one far (row 9)."""
    U = np.random.default_rng(seed).normal(0, 0.01, size=(10, 1000)).astype(np.float32)
    U[8] = 0.05
    U[9] = 1e4
    return U


@pytest.mark.parametrize("seed", range(4))
def test_krum_picks_no_attacker_by_rounding(seed):
    U = _krum_attack(seed)
    want, _ = naive.multi_krum(U, 2, 1)
    assert fastmb.krum(U, 2).used.tolist() == want
    assert fastmb.krum(U.astype(np.float64), 2).used.tolist() == want
    sel, mean = naive.multi_krum(U, 2, 8)
    agg, used, _ = fastmb.multi_krum(U, 2)
    assert used.tolist() == sel and 8 not in sel and 9 not in sel
    np.testing.assert_allclose(agg, mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fastmb.pairwise_sq_distances(U), naive.sq_distances(U),
                               rtol=1e-12)
    U11 = np.concatenate([U, _krum_attack(seed + 10)[:1]])  # 11 rows: Bulyan's 4f + 3 with f=2
    want, _ = naive.bulyan(U11, 2)
    assert fastmb.bulyan(U11, 2).used.tolist() == want
    assert fastmb.bulyan(U11.astype(np.float64), 2).used.tolist() == want


def test_distances_of_huge_updates():
    U = np.array([[1e19, 1e19], [-1e19, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(fastmb.pairwise_sq_distances(U), naive.sq_distances(U),
                               rtol=1e-12)
    U64 = np.zeros((6, 3))
    U64[:5] = np.random.default_rng(0).normal(size=(5, 3))
    U64[5] = 1e200  # an attacker whose distances exceed float64: ranked last, never chosen
    with pytest.raises(ValueError, match="squared distance overflows float64"):
        fastmb.pairwise_sq_distances(U64)
    assert 5 not in fastmb.multi_krum(U64, 1).used
    with pytest.raises(ValueError, match="Krum score"):  # every distance beyond float64
        fastmb.krum(np.full((5, 3), 1e200) * [[1], [-1], [2], [-2], [3]], 1)


def test_resume_refuses_other_data_and_settings(tmp_path):
    data = fastmb.data.synthetic(240, 4, 3, n_test=30, seed=0)
    sim = _tiny_sim(data=data)
    ck = tmp_path / "ck.npz"
    sim.run(1, checkpoint=ck)

    def changed(field, i, j, value):
        arr = getattr(data, field).copy()
        arr[(i, j) if arr.ndim == 2 else i] = value
        return data._replace(**{field: arr})

    for other in (changed("y", 7, 0, (data.y[7] + 1) % 3), changed("X", 200, 1, 0.5),
                  changed("X_test", 3, 0, 9.0), changed("y_test", 0, 0, (data.y_test[0] + 1) % 3)):
        with pytest.raises(ValueError, match="different settings: data_digest"):
            _tiny_sim(data=other).load(ck)
    reg = data._replace(y=data.X @ [1.0, 2, 3, 4], y_test=data.X_test @ [1.0, 2, 3, 4])
    huber = _tiny_sim(data=reg, model=fastmb.Linear(4, loss="huber", huber_delta=1.0))
    huber.run(1, checkpoint=ck)
    with pytest.raises(ValueError, match="different settings: model"):
        _tiny_sim(data=reg, model=fastmb.Linear(4, loss="huber", huber_delta=2.0)).load(ck)


def test_sample_weights_are_relative():
    rng = np.random.default_rng(0)
    model = fastmb.Linear(3)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    y = X @ [1.0, -2.0, 0.5]
    p0 = model.init()
    plain = fastmb.sgd(model, p0, X, y, epochs=2, batch_size=8, lr=0.1)
    for w in (1e-50, 1e-300, 1e39, 1e300):
        got = fastmb.sgd(model, p0, X, y, epochs=2, batch_size=8, lr=0.1,
                         sample_weight=np.full(40, w))
        np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            fastmb.grad(model, p0, X, y, sample_weight=np.full(40, w)),
            fastmb.grad(model, p0, X, y), rtol=1e-5)
    w = rng.uniform(0.1, 3.0, 40)
    ref = fastmb.sgd(model, p0, X, y, epochs=2, batch_size=8, lr=0.1, sample_weight=w)
    for k in (-170, 120):  # a power-of-two rescaling changes no bit
        np.testing.assert_array_equal(
            fastmb.sgd(model, p0, X, y, epochs=2, batch_size=8, lr=0.1,
                       sample_weight=w * 2.0**k), ref)


def test_weighted_mean_weights_from_subnormal_to_huge():
    wm = fastmb.WeightedMean(3)
    wm.add(np.ones(3), 1e-310)
    np.testing.assert_array_equal(wm.result(), np.ones(3, np.float32))
    U = np.random.default_rng(1).normal(size=(4, 5))
    for w in ([1e-300, 1e-310, 2e-300, 0.0], [1e300, 1.0, 1e-300, 1.7e308], [3, 1e10, 1, 0]):
        wm = fastmb.WeightedMean(5, np.float64)
        for row, wk in zip(U, w):
            wm.add(row, wk)
        np.testing.assert_allclose(wm.result(), fastmb.fedavg(U, w), rtol=1e-12)
    a, b, single = (fastmb.WeightedMean(5, np.float64) for _ in range(3))
    a.add(U[0], 3.0)
    b.add(U[1], 1e10)
    a.merge(b)
    single.add(U[0], 3.0)
    single.add(U[1], 1e10)
    np.testing.assert_array_equal(a.result(), single.result())
    big = fastmb.WeightedMean(2)  # float32 result of a float64 mean beyond its range
    big.add(np.array([1e300, 0.0]))
    with pytest.raises(ValueError, match="overflows float32"):
        big.result()
    state = single.state_dict()
    np.testing.assert_array_equal(
        fastmb.WeightedMean.from_state_dict(state).result(), single.result())
    with pytest.raises(ValueError, match="power of two"):
        fastmb.WeightedMean.from_state_dict({**state, "scale": 3.0})


def test_finite_inputs_never_give_silent_infinities():
    lin, logit = fastmb.Linear(2), fastmb.Linear(2, loss="logistic")
    with pytest.raises(ValueError, match="training diverged"):
        fastmb.sgd(lin, lin.init(), np.full((4, 2), 1e10, "f4"), np.ones(4, "f4"), lr=1e30,
                   batch_size=4)
    X = np.full((3, 2), 1e20, "f4")
    p = np.array([1e-21, -2e-21, 0.3], "f4")
    want = naive.per_sample_grad_norm(logit, p.astype(np.float64), X.astype(np.float64), [0, 1, 0])
    np.testing.assert_allclose(fastmb.per_sample_grad_norm(logit, p, X, [0, 1, 0]), want,
                               rtol=1e-5)
    for f in (fastmb.grad, fastmb.per_sample_grad, fastmb.per_sample_grad_norm):
        with pytest.raises(ValueError, match="overflow"):
            f(lin, lin.init() + 1, X, [0.0, 1.0, 2.0])
        got = f(lin, lin.init(dtype=np.float64) + 1, X, [0.0, 1.0, 2.0])  # float64 holds it
        assert np.isfinite(got).all()
    with pytest.raises(ValueError, match="overflow"):
        fastmb.decision_function(lin, np.array([1e30, 1e30, 0], "f4"), X)
    # A hidden layer's gradient overflows while the outputs and loss stay finite (tanh caps
    # the activations; huge output weights blow up the hidden deltas times |x| = 1e10).
    mlp = fastmb.MLP([2, 3, 2], activation="tanh")
    pm = mlp.init(dtype=np.float64)
    (W0, _), (W1, _) = mlp.layers(pm)
    W1[...] = [[1e30, -1e30], [1e30, 1e30], [-1e30, 1e30]]
    W0 *= 1e-10
    Xm = np.full((2, 2), 1e10)
    assert np.isfinite(fastmb.per_sample_grad(mlp, pm, Xm, [0, 1])).all()  # float64 holds it
    with pytest.raises(ValueError, match="overflowed float32 at row 0"):
        fastmb.per_sample_grad(mlp, pm.astype("f4"), Xm, [0, 1])
    with pytest.raises(ValueError, match="too large for int8"):
        fastmb.quantize_int8(np.array([1e300, 1.0]))
    with pytest.raises(ValueError, match="too large for qsgd"):
        fastmb.qsgd(np.array([1e200, 1.0]))
    with pytest.raises(ValueError, match="scales must be at most"):
        fastmb.quantize_int8(np.ones(2, "f4"))._replace(scales=np.array([3e38], "f4")).dequantize()
    data = fastmb.data.synthetic(240, 4, 3, n_test=30, seed=0)
    X_test = data.X_test.copy()
    X_test[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"X_test contains NaN or Inf \(first at row 4\)"):
        _tiny_sim(data=data._replace(X_test=X_test))


def test_server_state_checked_like_the_constructor():
    good = fastmb.FedAdam(np.zeros(3), lr=0.1).state_dict()
    for change, match in [({"lr": -1}, "lr must be > 0"), ({"tau": 0.0}, "tau must be > 0"),
                          ({"beta1": 2.0}, "beta1 must be in"), ({"round": -3}, "round"),
                          ({"beta2": 1.5}, "beta2 must be in"), ({"lr": "0.1"}, "lr must be"),
                          ({"m": np.full(3, np.nan)}, "finite"),
                          ({"v": -np.ones(3)}, "non-negative"),
                          ({"params": np.zeros(2)}, "shapes")]:
        with pytest.raises((ValueError, TypeError), match=match):
            fastmb.ServerOptimizer.from_state_dict({**good, **change})
    with pytest.raises(TypeError, match="beta2 must be a real number"):
        fastmb.FedAdam(np.zeros(2), beta2="0.9")


def test_out_overlapping_an_input_is_refused():
    m = fastmb.Linear(2)
    buf = np.zeros(60)
    X = buf[:8].reshape(4, 2)
    p = np.zeros(3)
    with pytest.raises(ValueError, match="out shares memory with X"):
        fastmb.per_sample_grad(m, p, X, np.ones(4), out=buf[6:18].reshape(4, 3))
    big = np.zeros(12)
    with pytest.raises(ValueError, match="out shares memory with params"):
        fastmb.per_sample_grad(m, big[:3], X, np.ones(4), out=big.reshape(4, 3))


# ---------------------------------------------------------------- hangs and lost work


def test_absurd_class_counts_are_refused_up_front(tmp_path):
    code = (
        "import numpy as np, fastmb\n"
        "y = np.arange(1000) % 10\n"
        "y[5] = 10**9\n"
        "p = fastmb.partition.dirichlet(y, 100)\n"
        "assert sorted(p.rows.tolist()) == list(range(1000))\n"
        "for bad in (lambda: fastmb.data.synthetic(100_000, 64, 100_000),\n"
        "            lambda: fastmb.partition.dirichlet(np.arange(10**6) % 50_000, 1000)):\n"
        "    try:\n"
        "        bad()\n"
        "    except ValueError as e:\n"
        "        print('refused:', e)\n"
        "    else:\n"
        "        raise SystemExit('accepted')\n"
    )
    res = _python(["-c", code], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("refused:") == 2
    X = np.random.default_rng(0).normal(size=(50, 3))
    y = np.arange(50) % 3
    y[7] = 10**9
    np.savez(tmp_path / "stray.npz", X=X, y=y)
    with pytest.raises(ValueError, match="reach 1000000000 with only 50 rows"):
        fastmb.data.load(tmp_path / "stray.npz")


CTRL_C = """
import signal, numpy as np, fastmb
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
m = fastmb.Linear(3)
X = np.random.default_rng(0).normal(size=(200, 3)).astype("f4")
fastmb.sgd(m, m.init(), X, X.sum(1), epochs=1)
print("ready", flush=True)
fastmb.sgd(m, m.init(), X, X.sum(1), epochs=10**12)
print("finished", flush=True)
"""


def test_ctrl_c_stops_a_long_training():
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # a kernel that never returns times out here
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err and "finished" not in out, err


def test_chunked_training_is_bit_identical(monkeypatch):
    from fastmb.learn import training as T

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = rng.integers(0, 3, 120)
    off = [0, 30, 31, 70, 120]
    runs = [(fastmb.MLP([5, 6, 3]), dict(momentum=0.9, batch_size=4)),
            (fastmb.Linear(5, 3, loss="softmax"), dict(batch_size=8, schedule="cosine")),
            (fastmb.MLP([5, 6, 3]), dict(momentum=0.5, batch_size=8, clip_norm=1.0,
                                         noise_multiplier=0.3)),
            (fastmb.MLP([5, 6, 3]), dict(optimizer="adam", lr=0.01, batch_size=4)),
            (fastmb.MLP([5, 6, 3]), dict(momentum=0.9, nesterov=True, l2=0.1, batch_size=8))]
    def train(model, p0, kw):
        return (fastmb.train_clients(model, p0, X, y, off, epochs=[3, 2, 5, 1],
                                     max_steps=[-1, -1, 7, 20], **kw),
                fastmb.sgd(model, p0, X, y, epochs=3, **kw))

    for model, kw in runs:
        p0 = model.init(dtype=np.float64)
        ref = train(model, p0, kw)
        for budget in (1, 5_000):  # every epoch of every client a call; a few groups
            monkeypatch.setattr(T, "CHUNK_WORK", budget)
            for a, b in zip(train(model, p0, kw), ref):
                np.testing.assert_array_equal(a, b)
        monkeypatch.undo()


def _cli_small(out, *extra):
    return cli(["simulate", "--data", "synthetic", "--n-samples", "300", "--n-features", "4",
                "--n-classes", "2", "--model", "linear", "--clients", "5", "--rounds", "1",
                "--no-plot", "--no-progress", "--out", str(out), *extra])


def test_a_second_writer_of_the_output_folder_is_refused(tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / ".fastmb.lock"), timeout=0):  # another run holds the folder
        assert _cli_small(out) == 2
        assert "another fastmb simulate is writing to" in capsys.readouterr().err
    assert not (out / "checkpoint.npz").exists()
    assert _cli_small(out) == 0 and _cli_small(out) == 0  # released after each run


# ---------------------------------------------------------------- messages and conversions


def test_cli_errors_are_one_line_messages(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    cases = [(["--rounds", "0"], "rounds must be >= 1"),
             (["--out", str(tmp_path / "a_file")], "exists and is not a folder"),
             (["--task", "bogus"], "task must be one of")]
    for text, match in [("epochs = true", "epochs: expected an integer, got True"),
                        ("lr = true", "lr: expected a number, got True"),
                        ("clients_per_round = 2.5", "clients_per_round: expected an integer"),
                        ("hidden = [64.9, 32.2]", "hidden: expected an integer, got 64.9"),
                        ('data = 5', "data: expected a string")]:
        cfg = tmp_path / f"c{len(cases)}.toml"
        cfg.write_text(text + "\n")
        cases.append((["--config", str(cfg)], match))
    run = tmp_path / "run"
    run.mkdir()
    for content in (b"", b"PK\x03\x04 truncated", b"not a zip"):
        (run / "checkpoint.npz").write_bytes(content)
        cases.append((["--resume"], "not a readable fastmb checkpoint"))
    for args, match in cases:
        assert _cli_small(run, *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("fastmb simulate: error:") and match in err, (args, err)
        assert "Traceback" not in err


def test_labels_never_silently_become_regression(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    for y, match in [(np.arange(60) % 3 - 1, "include -1"),
                     (np.where(np.arange(60) == 5, 20_000, np.arange(60) % 2), "reach 20000")]:
        np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",")
        with pytest.raises(ValueError, match=f"{match}.*task='regression'"):
            fastmb.data.load(tmp_path / "d.csv")
        reg = fastmb.data.load(tmp_path / "d.csv", task="regression")
        assert reg.y.dtype == np.float64 and reg.n_classes is None
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, X[:, 0]]), delimiter=",")
    with pytest.raises(ValueError, match="needs integer class labels"):
        fastmb.data.load(tmp_path / "d.csv", task="classification")
    X[3, 0] = 1e300  # beyond float32: refused, not Inf
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, np.arange(60) % 2]), delimiter=",")
    with pytest.raises(ValueError, match="beyond the float32 range"):
        fastmb.data.load(tmp_path / "d.csv")


# ---------------------------------------------------------------- fuzzing and the sweep


@pytest.mark.parametrize("target", ["sparse", "quantized", "checkpoints", "states", "csr", "npy",
                                    "compact", "envelope", "model_file"])
def test_decoders_fuzzed_in_a_subprocess(target):
    res = _python(["-W", "error::RuntimeWarning", "-m", "tests.fuzz_decoders", target],
                  timeout=900)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    assert f"fuzz {target}: ok" in res.stdout


def test_public_api_sweep_in_a_subprocess():
    res = _python(["-m", "tests.sweep_public"], timeout=900)
    tail = res.stdout[-4000:]
    assert res.returncode == 0, f"exit {res.returncode} (last case: the line before)\n{tail}\n" \
                                f"{res.stderr[-3000:]}"
    assert ", 0 failures" in tail
