"""The federation engine: partitions, data loaders, rounds against a naive FedAvg round,
faults, robust rules, server optimizers, checkpoints and resume, the `simulate` command."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastmb
from fastmb import partition as Pt
from fastmb.aggregate import rules
from fastmb.cli import main
from fastmb.federation.simulation import Faults, Simulation

from . import naive

DATA = fastmb.data.digits()
LINEAR = fastmb.Linear(64, 10, loss="softmax")
SMALL_MLP = fastmb.MLP([64, 16, 10])


# ---------------------------------------------------------------- partitions


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "quantity"])
def test_partitions_cover_every_row_once(kind):
    part = Pt.make(kind, DATA.y, 37, alpha=0.3, seed=4)
    assert part.n_clients == 37 and (part.sizes >= 1).all()
    np.testing.assert_array_equal(np.sort(part.rows), np.arange(len(DATA.y)))
    assert naive.dirichlet_counts_ok(part.label_counts(DATA.y), np.bincount(DATA.y))
    again = Pt.make(kind, DATA.y, 37, alpha=0.3, seed=4)
    np.testing.assert_array_equal(part.rows, again.rows)
    with pytest.raises(ValueError):  # read-only: a simulation relies on it
        part.rows[0] = 1


def test_partition_skews():
    y = np.repeat(np.arange(10), 200)
    skewed = Pt.dirichlet(y, 20, alpha=0.05, seed=0).label_counts(y)
    mild = Pt.dirichlet(y, 20, alpha=100.0, seed=0).label_counts(y)
    # classes per client: few under strong skew, nearly all when close to IID
    assert (skewed > 0).sum(1).mean() < 4 < 9 < (mild > 0).sum(1).mean()
    sizes = Pt.quantity_skew(10_000, 50, alpha=0.2, seed=0, min_size=5).sizes
    assert sizes.sum() == 10_000 and sizes.min() >= 5 and sizes.max() > 20 * np.median(sizes) / 4
    iid = Pt.iid(1500, 100, seed=0)
    assert set(iid.sizes.tolist()) == {15}
    # the Flower comparison's shards: np.random.default_rng(0).permutation(1500), array_split
    want = np.array_split(np.random.default_rng(0).permutation(1500), 100)
    np.testing.assert_array_equal(iid.client_rows(7), want[7])


def test_partition_bad_input():
    with pytest.raises(ValueError, match="n_clients=20 clients of at least min_size=1 rows "
                                         "need 20 rows; the data has 10"):
        Pt.iid(10, 20)
    with pytest.raises(ValueError, match="alpha"):
        Pt.dirichlet(DATA.y, 10, alpha=0)
    with pytest.raises(ValueError, match="class indices"):
        Pt.dirichlet(np.linspace(0, 1, 100), 10)
    with pytest.raises(ValueError, match="no Dirichlet.*larger alpha"):
        Pt.dirichlet(np.repeat([0, 1], 50), 40, alpha=0.01, min_size=2, max_tries=3)
    with pytest.raises(ValueError, match="partition must be one of"):
        Pt.make("random", DATA.y, 10)
    with pytest.raises(ValueError, match="client 1 owns none"):
        Pt.Partition(np.arange(4), [0, 2, 2, 4])
    with pytest.raises(ValueError, match="offsets must run from 0 to len"):
        Pt.Partition(np.arange(4), [0, 2, 3])


# ---------------------------------------------------------------- data


def test_data_loaders(tmp_path):
    d = fastmb.data.digits(shuffle=False)
    assert d.X.shape == (1500, 64) and d.X_test.shape == (297, 64) and d.n_classes == 10
    # Read from scikit-learn's file without importing it: the same values as load_digits.
    from sklearn.datasets import load_digits

    ref = load_digits()
    np.testing.assert_array_equal(np.concatenate([d.X, d.X_test]),
                                  (ref.data / 16.0).astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([d.y, d.y_test]), ref.target)
    assert d.X.dtype == np.float32 and d.X.min() >= 0 and d.X.max() <= 1
    s = fastmb.data.synthetic(2000, 8, 3, seed=1)
    assert s.X.shape == (2000, 8) and s.X_test.shape == (200, 8) and set(s.y) == {0, 1, 2}
    np.testing.assert_array_equal(s.X, fastmb.data.synthetic(2000, 8, 3, seed=1).X)
    X = np.random.default_rng(0).normal(size=(50, 3))
    y = np.arange(50) % 3
    np.savez(tmp_path / "a.npz", X=X, y=y)
    np.save(tmp_path / "a.npy", np.column_stack([X, y]))
    np.savetxt(tmp_path / "a.csv", np.column_stack([X, y]), delimiter=",", header="a,b,c,label",
               comments="")
    for name in ("a.npz", "a.npy", "a.csv"):
        got = fastmb.data.load(tmp_path / name, test_fraction=0.2, seed=0)
        assert got.X.shape == (40, 3) and got.X_test.shape == (10, 3) and got.n_classes == 3
        assert_allclose(np.sort(np.concatenate([got.X, got.X_test]), 0), np.sort(X, 0),
                        rtol=1e-6)
    reg = tmp_path / "r.npz"
    np.savez(reg, X=X, y=X[:, 0] * 0.37, X_test=X[:5], y_test=X[:5, 0])
    got = fastmb.data.load(reg)
    assert got.n_classes is None and got.X_test.shape == (5, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastmb.data.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="unknown format '.txt'"):
        (tmp_path / "a.txt").write_text("1,2\n")
        fastmb.data.load(tmp_path / "a.txt")
    np.savez(tmp_path / "b.npz", features=X)
    with pytest.raises(ValueError, match=r"arrays named 'X' and 'y'.*\['features'\]"):
        fastmb.data.load(tmp_path / "b.npz")
    bad = X.copy()
    bad[3, 1] = np.nan
    np.savez(tmp_path / "c.npz", X=bad, y=y)
    with pytest.raises(ValueError, match="finite"):
        fastmb.data.load(tmp_path / "c.npz")


# ---------------------------------------------------------------- rounds


def _sim(**kw):
    opts = dict(fraction=0.3, epochs=1, batch_size=8, lr=0.1, seed=2)
    opts.update(kw)
    part = opts.pop("part", None) or Pt.dirichlet(DATA.y, 30, alpha=0.5, seed=1)
    return Simulation(opts.pop("model", LINEAR), DATA, part, **opts)


@pytest.mark.parametrize("model", [LINEAR, SMALL_MLP], ids=["linear", "mlp"])
def test_round_matches_naive_fedavg(model):
    faults = Faults(straggler=0.4, straggler_work=0.5, malicious=0.3, attack="scale",
                    attack_scale=3.0)
    sim = _sim(model=model, momentum=0.5, faults=faults, shard_size=3)
    for _ in range(2):
        task, _, _, stragglers = sim._select(sim.round)
        attack = np.isin(task.ids, sim.malicious)
        before = sim.params
        rec = sim.step()
        want, rejected = naive.fedavg_round(
            model, before, DATA.X.astype(np.float64), DATA.y, sim.partition, task.ids, task.seed,
            epochs=1, batch_size=8, lr=0.1, momentum=0.5, max_steps=task.steps,
            attack=attack, attack_kind="scale", attack_scale=3.0)
        assert_allclose(sim.params, want, rtol=2e-4, atol=2e-5)
        assert rec["rejected"] == rejected == []
        assert rec["stragglers"] == stragglers.tolist() and len(rec["stragglers"]) > 0
        assert rec["malicious"] == task.ids[attack].tolist()


def test_faults_are_reported_and_the_round_completes():
    faults = Faults(dropout=0.3, malicious=0.2, attack="nan")
    sim = _sim(faults=faults, fraction=0.5)
    hist = sim.run(6)
    assert len(hist) == 6 and np.isfinite(sim.params).all()
    dropped = sum(len(h["dropped"]) for h in hist)
    assert dropped > 0
    for h in hist:
        assert h["reported"] == h["sampled"] - len(h["dropped"])
        assert h["rejected"] == h["malicious"]  # every NaN update is rejected, by id
        assert h["used"] == h["reported"] - len(h["rejected"])
        assert h["bytes_up"] == h["reported"] * LINEAR.n_params * 4
        assert h["bytes_down"] == h["sampled"] * LINEAR.n_params * 4
    assert any(h["rejected"] for h in hist)
    assert {c for h in hist for c in h["malicious"]} <= set(sim.malicious.tolist())


def test_every_update_rejected_keeps_the_params():
    sim = _sim(faults=Faults(malicious=0.99, attack="nan"), fraction=0.1)
    before = sim.params
    rec = sim.step()
    if rec["used"] == 0:
        np.testing.assert_array_equal(sim.params, before)
        assert rec["rejected"] == rec["malicious"]


@pytest.mark.parametrize("aggregator", sorted(rules.names()))
def test_every_aggregator_runs_and_learns(aggregator):
    opts = {"norm_bounded": {"max_norm": 5.0}, "centered_clipping": {"tau": 5.0},
            "central_dp": {"noise_multiplier": 0.05, "clip_norm": 5.0},
            "bulyan": {"n_byzantine": 1}}.get(aggregator, {})
    sim = _sim(aggregator=aggregator, aggregator_options=opts, fraction=0.5, epochs=2,
               part=Pt.iid(len(DATA.y), 30, seed=0))
    hist = sim.run(4)
    assert hist[-1]["accuracy"] > 0.6, (aggregator, [h["accuracy"] for h in hist])


def test_robust_rule_resists_sign_flip_where_fedavg_fails():
    # 20% of the clients send -10x their update: FedAvg collapses to chance (0.1),
    # the median keeps learning (0.80 here, 0.89 without attackers).
    faults = Faults(malicious=0.2, attack="sign_flip", attack_scale=10.0)
    part = Pt.iid(len(DATA.y), 30, seed=0)
    accs = {}
    for agg in ("fedavg", "median"):
        sim = _sim(aggregator=agg, faults=faults, fraction=0.5, part=part)
        accs[agg] = sim.run(8)[-1]["accuracy"]
    assert accs["median"] > 0.7 and accs["fedavg"] < 0.3, accs


@pytest.mark.parametrize("server", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizers(server):
    opts = {"fedavgm": {"lr": 1.0, "momentum": 0.5}}.get(server, {"lr": 0.05})
    plain, opt = _sim(fraction=0.5), _sim(server=server, server_options=opts, fraction=0.5)
    p0 = plain.params
    plain.step()
    opt.step()
    # round 1 trains the same clients from the same params: the server optimizer then
    # steps from p0 towards FedAvg's result
    cls = {"fedavgm": fastmb.FedAvgM, "fedadam": fastmb.FedAdam, "fedyogi": fastmb.FedYogi,
           "fedadagrad": fastmb.FedAdagrad}[server]
    np.testing.assert_array_equal(opt.params, cls(p0, **opts).step(plain.params))
    hist = opt.run(5)
    assert hist[-1]["accuracy"] > 0.4


def _strip_times(history):
    """The history without its timings (the only fields that differ between runs)."""
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in history]


def test_same_seed_same_bits_and_seed_matters():
    a, b, c = _sim(seed=5), _sim(seed=5), _sim(seed=6)
    for s in (a, b, c):
        s.run(3)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    assert _strip_times(a.history) == _strip_times(b.history)


class _Kill(Exception):
    pass


@pytest.mark.parametrize("server,aggregator", [("fedadam", "fedavg"), ("none", "central_dp")])
def test_checkpoint_resume_is_bit_identical(tmp_path, server, aggregator):
    kw = dict(server=server, aggregator=aggregator, model=SMALL_MLP, momentum=0.9,
              faults=Faults(dropout=0.2, straggler=0.3, malicious=0.1, attack="nan"),
              aggregator_options={"target_quantile": 0.5, "noise_multiplier": 0.1}
              if aggregator == "central_dp" else None)
    full = _sim(**kw)
    full.run(6)
    ckpt = tmp_path / "ck.npz"

    def kill_after_3(rec):
        if rec["round"] == 3:
            raise _Kill

    first = _sim(**kw)
    with pytest.raises(_Kill):
        first.run(6, checkpoint=ckpt, callback=kill_after_3)
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]  # no temporary left behind
    resumed = _sim(**kw).load(ckpt)
    assert resumed.round == 3
    resumed.run(6, checkpoint=ckpt)
    np.testing.assert_array_equal(resumed.params, full.params)
    assert _strip_times(resumed.history) == _strip_times(full.history)
    # a different configuration refuses the checkpoint, naming what differs
    with pytest.raises(ValueError, match="different settings: lr"):
        _sim(**{**kw, "lr": 0.2}).load(ckpt)
    with pytest.raises(FileNotFoundError):
        _sim(**kw).load(tmp_path / "nope.npz")


def test_simulation_bad_input():
    part = Pt.iid(len(DATA.y), 10)
    with pytest.raises(ValueError, match="unknown aggregator 'fedmedian'; valid: fedavg, median"):
        Simulation(LINEAR, DATA, part, aggregator="fedmedian")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bta'\] for aggregator "
                                         r"'trimmed_mean'; valid: beta"):
        Simulation(LINEAR, DATA, part, aggregator="trimmed_mean", aggregator_options={"bta": 1})
    with pytest.raises(ValueError, match="unknown server optimizer 'adam'"):
        Simulation(LINEAR, DATA, part, server="adam")
    with pytest.raises(ValueError, match="clients_per_round must be"):
        Simulation(LINEAR, DATA, part, clients_per_round=11)
    with pytest.raises(ValueError, match="partition refers to row"):
        Simulation(LINEAR, DATA, Pt.iid(5000, 10))
    with pytest.raises(TypeError, match="partition must be"):
        Simulation(LINEAR, DATA, [0, 1])
    with pytest.raises(ValueError, match="dropout must be < 1"):
        Faults(dropout=1.0)
    with pytest.raises(ValueError, match="attack must be one of"):
        Faults(attack="flip")
    X = DATA.X.copy()
    X[17, 3] = np.inf
    with pytest.raises(ValueError, match="row 17"):
        Simulation(LINEAR, (X, DATA.y, DATA.X_test, DATA.y_test), part)


# ---------------------------------------------------------------- command line


def _cli(tmp_path, *args):
    return main(["simulate", "--out", str(tmp_path / "run"), "--no-progress", *args])


def test_simulate_command_writes_results(tmp_path, capsys):
    assert _cli(tmp_path, "--rounds", "3", "--clients", "20", "--hidden", "16",
                "--dropout", "0.2", "--aggregator", "trimmed_mean",
                "--aggregator-option", "beta=0.2") == 0
    out = capsys.readouterr().out
    assert "round 3/3" in out and "done: 3 rounds" in out and "dropped" in out
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"history.csv", "history.json", "summary.json",
                                               "history.png", "checkpoint.npz", ".fastmb.lock"}
    hist = json.loads((run / "history.json").read_text())
    assert [h["round"] for h in hist] == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["settings"]["aggregator_options"] == {"beta": 0.2}
    assert (run / "history.csv").read_text().splitlines()[0].startswith("round,loss,accuracy")
    assert (run / "history.png").read_bytes()[:4] == b"\x89PNG"
    # resume: nothing left to do at 3 rounds; 5 rounds continues from the checkpoint
    assert _cli(tmp_path, "--rounds", "5", "--clients", "20", "--hidden", "16", "--dropout",
                "0.2", "--aggregator", "trimmed_mean", "--aggregator-option", "beta=0.2",
                "--resume") == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "round 4/5" in out and "round 3/5" not in out


def test_simulate_config_file_and_errors(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('data = "synthetic"\nn_samples = 3000\nn_features = 8\nn_classes = 3\n'
                   'model = "linear"\nclients = 30\nrounds = 2\npartition = "quantity"\n'
                   '[server_options]\nlr = 0.5\n')
    assert _cli(tmp_path, "--config", str(cfg), "--server", "fedavgm", "--no-plot") == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "30 clients, quantity" in out and "server fedavgm" in out
    cases = [
        (['--data', str(tmp_path / "missing.npz")], "does not exist"),
        (["--aggregator", "fedmedian"], "unknown aggregator 'fedmedian'; valid: fedavg"),
        (["--aggregator-option", "beta"], "expected KEY=VALUE"),
        (["--rounds", "many"], "rounds: cannot read 'many' as int"),
    ]
    for args, msg in cases:
        assert _cli(tmp_path, "--rounds", "1", *args) == 2
        assert msg in capsys.readouterr().err
    typo = tmp_path / "typo.toml"
    typo.write_text("round = 3\n")
    assert _cli(tmp_path, "--config", str(typo)) == 2
    err = capsys.readouterr().err
    assert "unknown key 'round'" in err and "did you mean 'rounds'" in err and "batch_size" in err


def test_simulate_user_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    np.savetxt(tmp_path / "mine.csv", np.column_stack([X, y]), delimiter=",")
    assert _cli(tmp_path, "--data", str(tmp_path / "mine.csv"), "--clients", "10",
                "--rounds", "3", "--model", "linear", "--partition", "iid", "--no-plot") == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final_accuracy"] > 0.8


def test_simulate_default_help():
    res = subprocess.run([sys.executable, "-m", "fastmb", "simulate", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0
    for flag in ("--partition", "--alpha", "--aggregator", "--dropout", "--scheduler",
                 "--workers", "--resume", "--config"):
        assert flag in res.stdout


def test_killed_process_resumes_bit_identical(tmp_path):
    # A real kill -9 at an arbitrary moment (possibly mid-checkpoint): the checkpoint is
    # whole, and the resumed run ends with the same bits as an uninterrupted one.
    import signal
    import time

    args = ["--rounds", "300", "--clients", "20", "--hidden", "8", "--epochs", "1",
            "--eval-every", "50", "--no-plot", "--no-progress", "--dropout", "0.1"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fastmb", "simulate", "--out", str(out),
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.npz"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with np.load(ckpt) as z:
        stopped = int(z["round"])
    assert 1 <= stopped < 300
    assert main(["simulate", "--out", str(out), "--resume", *args]) == 0
    assert main(["simulate", "--out", str(tmp_path / "whole"), *args]) == 0
    with np.load(ckpt) as a, np.load(tmp_path / "whole" / "checkpoint.npz") as b:
        np.testing.assert_array_equal(a["params"], b["params"])
        assert int(a["round"]) == int(b["round"]) == 300


def test_regression_simulation():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=600)
    data = (X[:500], y[:500], X[500:], y[500:])
    sim = Simulation(fastmb.Linear(4), data, Pt.quantity_skew(500, 10, seed=0), fraction=0.5,
                     lr=0.1, epochs=2, eval_every=2, seed=0)
    hist = sim.run(5)
    assert all(h["accuracy"] is None for h in hist)
    assert [h["loss"] is None for h in hist] == [True, False, True, False, False]
    assert hist[-1]["loss"] < 0.1 * hist[1]["loss"]  # towards the noise floor 0.005
