"""Many clients on one machine: softmax regression on a 1,000,000 x 64 synthetic set.

The issue's target: 10,000 clients x 20 rounds (every client trains every round: one
local epoch of batches of 16, lr 0.1, FedAvg) in under 60 s on one machine. Then how the
time per round grows with the number of clients (the rows per client fixed at 100, so
the data grows with them) and with Dask worker processes (a LocalCluster on this
machine; on 2 cores the processes share the same two cores as the threads did).

    python benchmarks/scale.py                   # the target run and the sweeps
    python benchmarks/scale.py --quick           # smaller sweeps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import fastmb


def one_run(data, n_clients, rounds, executor=None, seed=0):
    model = fastmb.Linear(data.X.shape[1], 10, loss="softmax")
    part = fastmb.partition.iid(data.X.shape[0], n_clients, seed=seed)
    sim = fastmb.Simulation(model, data, part, clients_per_round=n_clients, epochs=1,
                            batch_size=16, lr=0.1, seed=seed, executor=executor,
                            shard_size=max(64, n_clients // 16))
    t0 = time.perf_counter()
    hist = sim.run(rounds)
    wall = time.perf_counter() - t0
    return {"clients": n_clients, "rows": int(data.X.shape[0]), "rounds": rounds,
            "wall_s": wall, "round_s": float(np.median([h["time_s"] for h in (hist[1:] or hist)])),
            "first_round_s": hist[0]["time_s"], "accuracy": hist[-1]["accuracy"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    out = {"cpu_count": os.cpu_count()}
    t = time.perf_counter()
    big = fastmb.data.synthetic(1_000_000, 64, 10, seed=0)
    out["data_s"] = time.perf_counter() - t
    print(f"synthetic 1,000,000 x 64 generated in {out['data_s']:.1f} s")
    # warm start: load the compiled kernels once (not part of the timed run)
    one_run(fastmb.data.synthetic(2000, 64, 10, seed=1), 20, 1)
    target = one_run(big, 10_000, 20 if not args.quick else 5)
    out["target"] = target
    print(f"10,000 clients x {target['rounds']} rounds: {target['wall_s']:.1f} s wall "
          f"({target['round_s'] * 1e3:.0f} ms a round), test accuracy {target['accuracy']:.3f}")

    print("\ntime per round vs clients (100 rows each, one process):")
    sweep = []
    for K in ([1000, 3000, 10_000] if args.quick else [100, 1000, 3000, 10_000]):
        sub = fastmb.data.Dataset(big.X[:K * 100], big.y[:K * 100], big.X_test, big.y_test,
                                  "synthetic")
        r = one_run(sub, K, 5)
        sweep.append(r)
        print(f"  {K:>6} clients: {r['round_s'] * 1e3:8.1f} ms a round "
              f"({r['round_s'] / K * 1e6:.1f} us a client)")
    out["by_clients"] = sweep

    print("\ntime per round vs Dask worker processes (10,000 clients, 1 thread each):")
    workers = []
    try:
        from fastmb.adapters.dask import DaskExecutor
    except ImportError:
        DaskExecutor = None
    if DaskExecutor is not None:
        for n in ([1, 2] if args.quick else [1, 2, 4]):
            with DaskExecutor(n_workers=n, threads_per_worker=1) as ex:
                one_run(fastmb.data.synthetic(2000, 64, 10, seed=1), 20, 1, executor=ex)
                r = one_run(big, 10_000, 3, executor=ex)
            r["workers"] = n
            workers.append(r)
            print(f"  {n} worker(s): {r['round_s'] * 1e3:8.1f} ms a round")
    out["by_workers"] = workers
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
