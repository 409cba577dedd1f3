"""A sweep over the public API with hostile numbers, run in a subprocess by test_hardening.py.

Every public function and constructor is called with each of its numeric arguments
replaced, one at a time, by int64-overflowing, huge, tiny, negative, NaN, infinite and
wrongly typed values (and, for array arguments, arrays holding them). A call must return
or raise ``ValueError``/``TypeError`` (``MemoryError`` only for a size that asks for too
much memory); warnings are errors. A call still running after ``TIMEOUT`` seconds must
give control back to Python (a ``SIGALRM`` then interrupts it, as Ctrl-C would): a kernel
that cannot be interrupted makes this process time out, and a crash kills only it.
``python -m tests.sweep_public`` prints one line per failing case and exits 1 if any.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import warnings

import numpy as np

import fastmb
from fastmb import privacy

TIMEOUT = 2.0
SCALARS = [2**63, 2**64, -(2**63) - 1, 10**30, 1e308, -1e308, 1e-310, -1, 0, 0.5,
           float("nan"), float("inf"), float("-inf"), "1", None, True, 1 + 1j, [1, 2]]
ELEMENTS = [2**63, 2**64 - 1, -(2**63), 1e19, 1e300, -1e300, -1, float("nan"), float("inf")]
SIZES = ("n_params", "n", "n_features", "n_classes", "n_test", "n_clients", "test_size",
         "layer_sizes", "n_outputs", "expected_clients", "buffer_size", "k")


class Slow(Exception):
    """Raised by the alarm: the call ran long but gave control back."""


def _alarm(signum, frame):
    raise Slow


def _cases():
    """(name, call(**kw), base keyword arguments, scalar args to sweep, array args to sweep)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    yr = X @ [1.0, -1.0, 0.5]
    lin = fastmb.Linear(3, loss="logistic")
    reg = fastmb.Linear(3)
    mlp = fastmb.MLP([3, 4, 2])
    p = lin.init(dtype=np.float64) + 0.1
    pm = mlp.init(dtype=np.float64)
    U = rng.normal(size=(9, 5))
    u = rng.normal(size=40)
    data = fastmb.data.synthetic(200, 3, 2, n_test=20)
    part = fastmb.partition.iid(200, 10)
    sgd_args = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "prox_mu", "seed",
                "power_t", "clip_norm", "noise_multiplier")
    sim_args = ("clients_per_round", "fraction", "epochs", "batch_size", "lr", "momentum",
                "prox_mu", "seed", "eval_every", "shard_size")

    def wm_add(weight):
        wm = fastmb.WeightedMean(5)
        wm.add(U[0], weight)
        return wm.result()

    def fb_add(version, weight):
        fb = fastmb.FedBuff(np.zeros(5), buffer_size=2)
        fb.add(U[0], 0)
        return fb.add(U[1], version, weight=weight)

    def sim_run(rounds):
        return fastmb.Simulation(reg, data._replace(y=data.X @ [1.0, 2.0, 3.0],
                                                    y_test=data.X_test @ [1.0, 2.0, 3.0]),
                                 part, clients_per_round=3).run(rounds)

    def dp_round(**kw):
        return fastmb.CentralDP(**kw).aggregate(U)

    return [
        ("loss", lambda **k: fastmb.loss(lin, **k), dict(params=p, X=X, y=y), (),
         ("params", "X", "y", "sample_weight")),
        ("grad", lambda **k: fastmb.grad(mlp, **k), dict(params=pm, X=X, y=y), (),
         ("params", "X", "sample_weight")),
        ("per_sample_grad", lambda **k: fastmb.per_sample_grad(lin, **k),
         dict(params=p, X=X, y=y, microbatch=2), ("microbatch",), ("params", "X")),
        ("per_sample_grad_norm", lambda **k: fastmb.per_sample_grad_norm(mlp, **k),
         dict(params=pm, X=X, y=y), (), ("params", "X")),
        ("predict_proba", lambda **k: fastmb.predict_proba(lin, **k), dict(params=p, X=X), (),
         ("params", "X")),
        ("evaluate", lambda **k: fastmb.evaluate(mlp, **k), dict(params=pm, X=X, y=y), (),
         ("params", "X", "y")),
        ("sgd", lambda **k: fastmb.sgd(mlp, pm, X, y, **k), dict(epochs=2, batch_size=8),
         sgd_args, ()),
        ("sgd_weights", lambda **k: fastmb.sgd(reg, p, X, yr, **k),
         dict(sample_weight=np.ones(24)), (), ("sample_weight",)),
        ("train_clients", lambda **k: fastmb.train_clients(lin, p, X, y, **k),
         dict(client_offsets=np.array([0, 8, 24]), clients=np.array([1, 0]),
              epochs=np.array([2, 1]), max_steps=np.array([3, -1]),
              rows=np.arange(24)), ("epochs", "max_steps", "batch_size"),
         ("client_offsets", "clients", "epochs", "max_steps", "rows")),
        ("fedavg", lambda **k: fastmb.fedavg(**k), dict(updates=U, weights=np.ones(9)), (),
         ("updates", "weights")),
        ("WeightedMean", lambda **k: fastmb.WeightedMean(**k).result, dict(n_params=5),
         ("n_params",), ()),
        ("WeightedMean.add", wm_add, dict(weight=2.0), ("weight",), ()),
        ("coordinate_median", lambda **k: fastmb.coordinate_median(**k), dict(updates=U), (),
         ("updates",)),
        ("trimmed_mean", lambda **k: fastmb.trimmed_mean(**k), dict(updates=U, beta=0.1),
         ("beta",), ("updates",)),
        ("multi_krum", lambda **k: fastmb.multi_krum(**k), dict(updates=U, n_byzantine=2, m=3),
         ("n_byzantine", "m"), ("updates",)),
        ("bulyan", lambda **k: fastmb.bulyan(**k), dict(updates=U, n_byzantine=1),
         ("n_byzantine",), ("updates",)),
        ("pairwise_sq_distances", lambda **k: fastmb.pairwise_sq_distances(**k),
         dict(updates=U), (), ("updates",)),
        ("geometric_median", lambda **k: fastmb.geometric_median(**k),
         dict(updates=U, nu=1e-6, max_iter=50, tol=1e-6), ("nu", "max_iter", "tol"),
         ("updates", "weights")),
        ("centered_clipping", lambda **k: fastmb.centered_clipping(**k),
         dict(updates=U, tau=1.0, n_iter=2, center=np.zeros(5)), ("tau", "n_iter"),
         ("updates", "center")),
        ("norm_bounded_mean", lambda **k: fastmb.norm_bounded_mean(**k),
         dict(updates=U, max_norm=1.0), ("max_norm",), ("updates",)),
        ("FedAvgM", lambda **k: fastmb.FedAvgM(**k).step(np.ones(5)),
         dict(params=np.zeros(5), lr=1.0, momentum=0.9), ("lr", "momentum"), ("params",)),
        ("FedAdam", lambda **k: fastmb.FedAdam(**k).step(np.ones(5)),
         dict(params=np.zeros(5), lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3),
         ("lr", "beta1", "beta2", "tau"), ("params",)),
        ("FedYogi.step", lambda **k: fastmb.FedYogi(np.zeros(5)).step(**k),
         dict(aggregate=np.ones(5)), (), ("aggregate",)),
        ("topk", lambda **k: fastmb.topk(**k), dict(update=u, k=3), ("k",), ("update",)),
        ("randk", lambda **k: fastmb.randk(**k), dict(update=u, k=3, seed=1, scale=None),
         ("k", "seed", "scale"), ("update",)),
        ("quantize_int8", lambda **k: fastmb.quantize_int8(**k).dequantize(),
         dict(update=u, block=8, seed=0), ("block", "seed"), ("update",)),
        ("qsgd", lambda **k: fastmb.qsgd(**k).dequantize(), dict(update=u, levels=4, block=8),
         ("levels", "block", "seed"), ("update",)),
        ("to_half", lambda **k: fastmb.to_half(**k).dequantize(), dict(update=u), (),
         ("update",)),
        ("mean_compressed", lambda **k: fastmb.mean_compressed(
            [fastmb.quantize_int8(u), fastmb.quantize_int8(-u)], **k),
         dict(weights=np.ones(2)), (), ("weights",)),
        ("FedBuff", lambda **k: fastmb.FedBuff(np.zeros(5), **k).add(np.ones(5), 0),
         dict(buffer_size=2, staleness="polynomial", staleness_exponent=0.5, max_staleness=3,
              server_lr=1.0), ("buffer_size", "staleness_exponent", "max_staleness",
                               "server_lr"), ()),
        ("FedBuff.add", fb_add, dict(version=0, weight=1.0), ("version", "weight"), ()),
        ("CentralDP", dp_round, dict(clip_norm=1.0, noise_multiplier=0.5, target_quantile=0.5,
                                     clip_lr=0.2, count_noise_multiplier=1.0,
                                     expected_clients=9, seed=0),
         ("clip_norm", "noise_multiplier", "target_quantile", "clip_lr",
          "count_noise_multiplier", "expected_clients", "seed"), ()),
        ("epsilon", lambda **k: privacy.epsilon(**k),
         dict(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-5),
         ("noise_multiplier", "sample_rate", "steps", "delta"), ()),
        ("Simulation", lambda **k: fastmb.Simulation(lin, data, part, **k).run(1),
         dict(clients_per_round=3, epochs=1, batch_size=8), sim_args, ()),
        ("Simulation.run", sim_run, dict(rounds=2), ("rounds",), ()),
        ("Faults", lambda **k: fastmb.Faults(**k),
         dict(dropout=0.1, straggler=0.1, straggler_work=0.5, malicious=0.1, attack_scale=2.0),
         ("dropout", "straggler", "straggler_work", "malicious", "attack_scale"), ()),
        ("partition.iid", lambda **k: fastmb.partition.iid(**k), dict(n=50, n_clients=5,
                                                                     seed=0),
         ("n", "n_clients", "seed"), ()),
        ("partition.dirichlet", lambda **k: fastmb.partition.dirichlet(**k),
         dict(y=np.arange(60) % 3, n_clients=4, alpha=0.5, seed=0, min_size=1, max_tries=50),
         ("n_clients", "alpha", "seed", "min_size", "max_tries"), ("y",)),
        ("partition.quantity_skew", lambda **k: fastmb.partition.quantity_skew(**k),
         dict(n=50, n_clients=5, alpha=0.5, seed=0, min_size=1),
         ("n", "n_clients", "alpha", "seed", "min_size"), ()),
        ("Partition", lambda **k: fastmb.partition.Partition(**k),
         dict(rows=np.arange(6), offsets=np.array([0, 2, 6])), (), ("rows", "offsets")),
        ("data.synthetic", lambda **k: fastmb.data.synthetic(**k),
         dict(n=100, n_features=3, n_classes=2, n_test=10, noise=1.0, seed=0),
         ("n", "n_features", "n_classes", "n_test", "noise", "seed"), ()),
        ("Linear", lambda **k: fastmb.Linear(**k).init(), dict(n_features=3, n_outputs=1,
                                                               huber_delta=1.0),
         ("n_features", "n_outputs", "huber_delta"), ()),
        ("MLP", lambda **k: fastmb.MLP(**k).init(seed=k.get("seed", 0)),
         dict(layer_sizes=[3, 4, 2]), (), ("layer_sizes",)),
        ("init", lambda **k: mlp.init(**k), dict(seed=0), ("seed",), ()),
    ]


def _variants(base, scalars, arrays):
    for arg in scalars:
        for v in SCALARS:
            yield arg, repr(v), {**base, arg: v}
    for arg in arrays:
        a = base.get(arg)
        a = np.ones(3) if a is None else a
        for v in ELEMENTS:
            bad = np.array(a, dtype=object if isinstance(v, int) and abs(v) >= 2**63
                           else np.result_type(np.asarray(a).dtype, type(v)))
            try:
                bad.flat[0] = v
            except (OverflowError, ValueError):
                continue
            yield arg, f"[{v!r}, ...]", {**base, arg: bad}


def main():
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's convergence notes
    warnings.simplefilter("error")
    signal.signal(signal.SIGALRM, _alarm)
    failures, n, slow = [], 0, 0
    for name, call, base, scalars, arrays in _cases():
        call(**base)  # the base case works (and compiles what the variants need)
        for arg, shown, kw in _variants(base, scalars, arrays):
            n += 1
            print(f"{name} {arg}={shown}", flush=True)
            signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
            t0 = time.perf_counter()
            try:
                call(**kw)
            except Slow:
                slow += 1
                if time.perf_counter() - t0 > TIMEOUT + 1.0:
                    failures.append(f"{name} {arg}={shown}: took "
                                    f"{time.perf_counter() - t0:.1f} s to give control back")
            except (ValueError, TypeError):
                pass
            except MemoryError:
                if arg not in SIZES:
                    failures.append(f"{name} {arg}={shown}: MemoryError")
            except BaseException as exc:
                failures.append(f"{name} {arg}={shown}: {type(exc).__name__}: {exc}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    for f in failures:
        print("FAIL", f)
    print(f"sweep: {n} calls, {len(failures)} failures, {slow} interrupted long runs")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
