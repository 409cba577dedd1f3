"""One FedAvg workload three ways, side by side: fastmb, a hand-written NumPy loop, Flower.

The workload (issue 4): sklearn's digits scaled to [0, 1], rows 0-1499 train and
1500-1796 test; IID shards from ``np.random.default_rng(0).permutation(1500)`` split into
K nearly equal parts; softmax regression from zeros; each round every client runs one
local epoch of consecutive mini-batches of 16 (no reshuffling) with lr 0.1; FedAvg
weighted by the clients' example counts; 20 rounds; test accuracy after every round.

Run in fastmb's environment::

    python benchmarks/flower_comparison.py                       # fastmb and NumPy
    python benchmarks/flower_comparison.py --flower-python /path/to/venv/bin/python

Flower (``flwr[simulation]``, Ray backend) brings its own heavy dependencies, so it runs in
whichever Python has it: this one if ``flwr`` imports, else the ``--flower-python`` given
(this same file is run there with ``--only-flower`` and prints JSON). Time per round is
the median over rounds 2-20 of the time between consecutive server evaluations; Flower's
start-up (Ray, client processes) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROUNDS, LR, BATCH = 20, 0.1, 16


def load():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data / 16.0).astype(np.float64)
    y = d.target.astype(np.int64)
    return X[:1500], y[:1500], X[1500:], y[1500:]


def shards(K):
    return np.array_split(np.random.default_rng(0).permutation(1500), K)


# ---------------------------------------------------------------- NumPy, written the fast way


def local_epoch(X, Y, w, c):
    """One client's epoch of consecutive mini-batches, in place on ``w`` and ``c``: the same
    NumPy code in the hand-written loop and in the Flower client."""
    for s in range(0, len(X), BATCH):
        xb, yb = X[s:s + BATCH], Y[s:s + BATCH]
        z = xb @ w + c
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = (p - yb) / len(xb)
        w -= LR * (xb.T @ g)
        c -= LR * g.sum(0)


def numpy_setup(K):
    """The NumPy loop's state: shards sliced once, one-hot labels, zero parameters."""
    Xtr, ytr, Xte, yte = load()
    parts = [(Xtr[idx], np.eye(10)[ytr[idx]]) for idx in shards(K)]
    n = np.array([len(p[0]) for p in parts], np.float64)
    return {"parts": parts, "n": n, "W": np.zeros((64, 10)), "b": np.zeros(10),
            "test": (Xte, yte)}


def numpy_round(st):
    """One FedAvg round of softmax regression in plain NumPy (float64): vectorized
    mini-batch gradients, the weighted average as one running sum; returns the test
    accuracy."""
    W, b, n = st["W"], st["b"], st["n"]
    Wsum, bsum = np.zeros_like(W), np.zeros_like(b)
    for (Xc, Yc), nk in zip(st["parts"], n):
        w, c = W.copy(), b.copy()
        local_epoch(Xc, Yc, w, c)
        Wsum += nk * w
        bsum += nk * c
    st["W"], st["b"] = Wsum / n.sum(), bsum / n.sum()
    Xte, yte = st["test"]
    return float(((Xte @ st["W"] + st["b"]).argmax(1) == yte).mean())


def numpy_loop(K, rounds=ROUNDS):
    """``rounds`` rounds of :func:`numpy_round`: per-round times and accuracies."""
    st = numpy_setup(K)
    stamps, accs = [time.perf_counter()], []
    for _ in range(rounds):
        accs.append(numpy_round(st))
        stamps.append(time.perf_counter())
    return np.diff(stamps), accs


# ---------------------------------------------------------------- fastmb


def fastmb_simulation(K):
    """The workload as a :class:`fastmb.Simulation` (float32; all K clients every round)."""
    import fastmb

    data = fastmb.data.digits(shuffle=False)
    model = fastmb.Linear(64, 10, loss="softmax")
    part = fastmb.partition.iid(1500, K, seed=0)  # the same shards as above
    return fastmb.Simulation(model, data, part, clients_per_round=K, epochs=1,
                             batch_size=BATCH, lr=LR, shuffle=False,
                             params=np.zeros(model.n_params, np.float32), seed=0)


def fastmb_run(K, rounds=ROUNDS):
    fastmb_simulation(K).run(1)  # loads the compiled kernels (a warm start); not timed
    sim = fastmb_simulation(K)
    stamps, accs = [time.perf_counter()], []
    for _ in range(rounds):
        rec = sim.step()
        stamps.append(time.perf_counter())
        accs.append(rec["accuracy"])
    return np.diff(stamps), accs


# ---------------------------------------------------------------- Flower


def flower_run(K, rounds=ROUNDS):
    """Flower's simulation engine (Ray backend), NumPyClient + FedAvg with evaluate_fn."""
    import logging

    import flwr
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    Xtr, ytr, Xte, yte = load()
    parts = shards(K)

    class Client(NumPyClient):
        def __init__(self, idx):
            self.X, self.Y = Xtr[idx], np.eye(10)[ytr[idx]]

        def fit(self, parameters, config):
            w, c = (p.copy() for p in parameters)
            local_epoch(self.X, self.Y, w, c)
            return [w, c], len(self.X), {}

    def client_fn(context: Context):
        return Client(parts[int(context.node_config["partition-id"])]).to_client()

    stamps, accs = [], []

    def evaluate(server_round, parameters, config):
        W, b = parameters
        stamps.append(time.perf_counter())
        acc = float(((Xte @ W + b).argmax(1) == yte).mean())
        if server_round > 0:
            accs.append(acc)
        return 0.0, {"accuracy": acc}

    init = ndarrays_to_parameters([np.zeros((64, 10)), np.zeros(10)])

    def server_fn(context: Context):
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=K,
                          min_available_clients=K, initial_parameters=init,
                          evaluate_fn=evaluate)
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    t0 = time.perf_counter()
    run_simulation(server_app=ServerApp(server_fn=server_fn),
                   client_app=ClientApp(client_fn=client_fn), num_supernodes=K,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    times = np.diff(stamps)
    # Round 1 also waits for Ray and the client processes to start: that excess is start-up.
    startup = stamps[1] - t0 - float(np.median(times[1:]))
    return times, accs, startup, flwr.__version__


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--flower-python", help="a Python that has flwr[simulation] installed")
    ap.add_argument("--only-flower", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if args.only_flower:
        out = {}
        for K in args.clients:
            times, accs, startup, version = flower_run(K)
            out[K] = {"round_s": float(np.median(times[1:])), "acc": accs[-1],
                      "startup_s": startup, "version": version}
        print("FLOWER-JSON " + json.dumps(out))
        return 0
    flower = {}
    try:
        import flwr  # noqa: F401

        have_flower = sys.executable
    except ImportError:
        have_flower = args.flower_python
    if have_flower:
        res = subprocess.run([have_flower, os.path.abspath(__file__), "--only-flower",
                              "--clients", *map(str, args.clients)], capture_output=True,
                             text=True)
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("FLOWER-JSON ")]
        if res.returncode or not line:
            print("Flower run failed:\n" + res.stderr[-3000:], file=sys.stderr)
        else:
            flower = {int(k): v for k, v in json.loads(line[0][12:]).items()}
    rows = []
    print(f"{'K':>4} {'fastmb ms/round':>16} {'NumPy ms/round':>15} {'Flower ms/round':>16} "
          f"{'vs NumPy':>9} {'vs Flower':>10}   accuracy fastmb / NumPy / Flower")
    for K in args.clients:
        t_np, acc_np = numpy_loop(K)
        t_fm, acc_fm = fastmb_run(K)
        fm, npy = float(np.median(t_fm[1:])), float(np.median(t_np[1:]))
        fl = flower.get(K)
        row = {"K": K, "fastmb_round_s": fm, "numpy_round_s": npy, "fastmb_acc": acc_fm[-1],
               "numpy_acc": acc_np[-1], "vs_numpy": npy / fm}
        if fl:
            row.update(flower_round_s=fl["round_s"], flower_acc=fl["acc"],
                       flower_startup_s=fl["startup_s"], vs_flower=fl["round_s"] / fm,
                       flower_version=fl["version"])
        rows.append(row)
        fl_txt = f"{fl['round_s'] * 1e3:16.1f}" if fl else f"{'-':>16}"
        vs_fl = f"{fl['round_s'] / fm:9.0f}x" if fl else f"{'-':>10}"
        acc_fl = f"{fl['acc']:.4f}" if fl else "-"
        print(f"{K:>4} {fm * 1e3:16.3f} {npy * 1e3:15.3f} {fl_txt} {npy / fm:8.1f}x {vs_fl}   "
              f"{acc_fm[-1]:.4f} / {acc_np[-1]:.4f} / {acc_fl}")
    if flower:
        print("Flower start-up (Ray and the client processes): "
              + ", ".join(f"K={K}: {v['startup_s']:.1f} s" for K, v in flower.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
