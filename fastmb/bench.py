"""``fastmb bench``: the core kernels beside their peers, measured in one process.

Each row times fastmb and the tool a user would otherwise reach for, on the same
data, best of several runs after a warm-up (so compile time never enters a timing;
``--compile`` measures it on purpose, in fresh processes). The limit column is the
fraction of the memory-bandwidth bound achieved: bytes the kernel must move divided
by the STREAM-triad bandwidth measured at the start of the same run.

Peers: NumPy written the fast way (always), scikit-learn (when installed), PyTorch
``torch.func`` and a plain training loop (when installed), Flower's legacy
``aggregate()`` (the real one when ``flwr`` is installed, else a faithful copy).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

import fastmb


def best_time(func, repeat=5, warmup=1):
    """Minimum wall time of ``func()`` over ``repeat`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        func()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def bandwidth(n_bytes=400_000_000, repeat=5):
    """STREAM triad ``a = b + s c`` over three float32 arrays; returns bytes/second."""
    from .kernels.aggregation import triad

    n = n_bytes // 12
    a, b, c = np.empty(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
    t = best_time(lambda: triad(a, b, c, np.float32(3.0)), repeat)
    return 3 * a.nbytes / t


def _optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def flower_aggregate_copy(results):
    """Flower's legacy ``flwr.server.strategy.aggregate.aggregate``, line for line."""
    num_examples_total = sum(num_examples for (_, num_examples) in results)
    weighted_weights = [[layer * num_examples for layer in weights]
                        for weights, num_examples in results]
    return [functools.reduce(np.add, layer_updates) / num_examples_total
            for layer_updates in zip(*weighted_weights)]


def _flower_aggregate():
    try:
        from flwr.server.strategy.aggregate import aggregate
        return aggregate, "flwr aggregate()"
    except ImportError:
        return flower_aggregate_copy, "Flower aggregate() (copy)"


# ----------------------------------------------------------------------------- rows


def _row(kernel, size, t_fast, peer, t_peer, limit_s=None):
    return dict(kernel=kernel, size=size, fastmb_s=t_fast, peer=peer, peer_s=t_peer,
                ratio=None if t_peer is None else t_peer / t_fast,
                limit=None if limit_s is None else limit_s / t_fast)


def bench_per_sample_logistic(bw, n=200_000, d=128, repeat=5):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.int64)
    model = fastmb.Linear(d, loss="logistic")
    params = (0.1 * rng.normal(size=model.n_params)).astype(np.float32)
    w, b, yf = params[:d], params[d], y.astype(np.float32)
    # Both sides write into preallocated outputs: a training loop reuses its buffers,
    # and a fresh 100 MB array costs its page faults to whoever touches it first.
    out = np.empty((n, model.n_params), np.float32)
    t_fast = best_time(lambda: fastmb.per_sample_grad(model, params, X, y, out=out), repeat)
    limit = (X.nbytes + out.nbytes) / bw
    out_np = np.empty((n, d), np.float32)

    def numpy_peer():
        g = 1.0 / (1.0 + np.exp(-(X @ w + b))) - yf
        return np.multiply(g[:, None], X, out=out_np)

    size = f"n={n:,} d={d} f32"
    rows = [_row("per-sample grad, logistic", size, t_fast, "NumPy (sigmoid(Xw)-y)[:,None]*X",
                 best_time(numpy_peer, max(1, repeat // 2)), limit)]
    torch = _optional("torch")
    if torch is not None:
        from torch.func import grad, vmap

        Xt, yt = torch.from_numpy(X), torch.from_numpy(yf)
        wt, bt = torch.from_numpy(w.copy()), torch.tensor(float(b))

        def sample_loss(w_, b_, x_, y_):
            return torch.nn.functional.binary_cross_entropy_with_logits(x_ @ w_ + b_, y_)

        per_sample = vmap(grad(sample_loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))
        rows.append(_row("per-sample grad, logistic", size, t_fast, "torch.func vmap(grad)",
                         best_time(lambda: per_sample(wt, bt, Xt, yt), max(1, repeat // 2)),
                         limit))
    return rows


def bench_sgd_epoch(bw, n=200_000, d=128, repeat=3):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=d) > 0).astype(np.int64)
    model = fastmb.Linear(d, loss="logistic")
    p0 = model.init()
    t_fast = best_time(lambda: fastmb.sgd(model, p0, X, y, batch_size=32, lr=0.01), repeat)
    size = f"n={n:,} d={d} batch 32"
    rows = []
    limit = X.nbytes / bw
    sk = _optional("sklearn")
    if sk is not None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import SGDClassifier

        X64 = X.astype(np.float64)  # converted up front: time the epoch, not the copy

        def sklearn_epoch():
            clf = SGDClassifier(loss="log_loss", max_iter=1, tol=None, learning_rate="constant",
                                eta0=0.01, alpha=0.0, shuffle=True, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(X64, y)

        rows.append(_row("SGD epoch, logistic", size.replace("batch 32", "batch 32 vs 1"),
                         t_fast, "sklearn SGDClassifier (batch 1)",
                         best_time(sklearn_epoch, 1), limit))
    torch = _optional("torch")
    if torch is not None:
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))

        def torch_epoch():
            lin = torch.nn.Linear(d, 1)
            opt = torch.optim.SGD(lin.parameters(), lr=0.01)
            lossf = torch.nn.BCEWithLogitsLoss()
            perm = torch.randperm(n)
            for i in range(0, n, 32):
                idx = perm[i:i + 32]
                opt.zero_grad()
                lossf(lin(Xt[idx])[:, 0], yt[idx]).backward()
                opt.step()

        rows.append(_row("SGD epoch, logistic", size, t_fast, "PyTorch loop (batch 32)",
                         best_time(torch_epoch, 1), limit))
    if not rows:
        rows.append(_row("SGD epoch, logistic", size, t_fast, "-", None, limit))
    return rows


def _numpy_mlp_per_sample(Ws, bs, X, y):
    """Per-sample gradients of a ReLU/softmax MLP by batched NumPy backprop (einsum outer products)."""
    acts, zs = [X], []
    for i, (W, b) in enumerate(zip(Ws, bs)):
        z = acts[-1] @ W + b
        zs.append(z)
        acts.append(np.maximum(z, 0) if i < len(Ws) - 1 else z)
    f = acts[-1]
    e = np.exp(f - f.max(axis=1, keepdims=True))
    delta = e / e.sum(axis=1, keepdims=True)
    delta[np.arange(len(y)), y] -= 1
    grads = []
    for i in range(len(Ws) - 1, -1, -1):
        grads.append((np.einsum("ni,nj->nij", acts[i], delta), delta))
        if i:
            delta = (delta @ Ws[i].T) * (zs[i - 1] > 0)
    return grads[::-1]


def bench_mlp_per_sample(bw, sizes=(128, 64, 64, 10), batch=4096, repeat=5):
    rng = np.random.default_rng(2)
    model = fastmb.MLP(list(sizes))
    params = model.init(seed=0)
    X = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    out = np.empty((batch, model.n_params), np.float32)
    t_fast = best_time(lambda: fastmb.per_sample_grad(model, params, X, y, out=out), repeat)
    size = f"{'-'.join(map(str, sizes))} batch {batch}"
    limit = (X.nbytes + out.nbytes) / bw
    Ws = [W for W, _ in model.layers(params)]
    bs = [b for _, b in model.layers(params)]
    rows = [_row("per-sample grad, MLP", size, t_fast, "NumPy batched backprop + einsum",
                 best_time(lambda: _numpy_mlp_per_sample(Ws, bs, X, y), max(1, repeat // 2)),
                 limit)]
    torch = _optional("torch")
    if torch is not None:
        from torch.func import functional_call, grad, vmap

        layers = []
        for i in range(len(sizes) - 1):
            layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        net = torch.nn.Sequential(*layers)
        tparams = {k: v.detach() for k, v in net.named_parameters()}
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

        def sample_loss(p, x, t):
            logits = functional_call(net, p, (x[None],))
            return torch.nn.functional.cross_entropy(logits, t[None])

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        rows.append(_row("per-sample grad, MLP", size, t_fast, "torch.func vmap(grad)",
                         best_time(lambda: per_sample(tparams, Xt, yt), max(1, repeat // 2)),
                         limit))
    t_norm = best_time(lambda: fastmb.per_sample_grad_norm(model, params, X, y), repeat)

    def materialize():
        return np.linalg.norm(fastmb.per_sample_grad(model, params, X, y, out=out), axis=1)

    rows.append(_row("per-sample grad norms, MLP", size, t_norm,
                     "materialize (fastmb) + np.linalg.norm", best_time(materialize, repeat),
                     X.nbytes / bw))
    return rows


def bench_fedavg(bw, K=64, P=1_000_000, repeat=5):
    rng = np.random.default_rng(3)
    U = rng.normal(size=(K, P)).astype(np.float32)
    w = rng.integers(10, 1000, K).astype(np.float64)
    t_fast = best_time(lambda: fastmb.fedavg(U, w), repeat)
    size = f"K={K} x P={P:,} f32"
    limit = (U.nbytes + P * 4) / bw
    aggregate, name = _flower_aggregate()
    results = [([U[k]], int(w[k])) for k in range(K)]
    rows = [_row("fedavg", size, t_fast, name,
                 best_time(lambda: aggregate(results), max(1, repeat // 2)), limit),
            _row("fedavg", size, t_fast, "NumPy (w @ U) / w.sum()",
                 best_time(lambda: (w.astype(np.float32) @ U) / w.sum(), repeat), limit)]
    wm = fastmb.WeightedMean(P)

    def stream():
        for k in range(8):
            wm.add(U[k], w[k])

    t_stream = best_time(stream, repeat) / 8
    # one add reads the update (4 B) and reads and writes the float64 sum (16 B)
    rows.append(_row("WeightedMean.add (streaming)", f"P={P:,} f32", t_stream, "-", None,
                     20 * P / bw))
    return rows


def compile_times(timeout=900):
    """Cold compile (fresh cache) and warm start-up of the core kernels, in new processes."""
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import numpy as np, fastmb\n"
        "X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32); y = (X[:, 0] > 0).astype(int)\n"
        "for m in (fastmb.Linear(8, loss='logistic'), fastmb.MLP([8, 4, 2])):\n"
        "    p = m.init(); fastmb.loss(m, p, X, y); fastmb.grad(m, p, X, y)\n"
        "    fastmb.per_sample_grad(m, p, X, y); fastmb.per_sample_grad_norm(m, p, X, y)\n"
        "    fastmb.train_clients(m, p, X, y, [0, 32, 64]); fastmb.predict(m, p, X)\n"
        "fastmb.fedavg(np.ones((3, 5), np.float32))\n"
        "print(time.perf_counter() - t0)\n")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, timeout=timeout, check=True)
            out.append(float(res.stdout.strip().splitlines()[-1]))
    return {"cold_s": out[0], "warm_s": out[1]}


def run(quick=False, compile=False, scale=1.0, echo=print):
    """Run every benchmark and return the rows; ``echo`` receives progress lines."""
    repeat = 3 if quick else 7

    def sz(v):
        return max(64, int(v * scale))

    bw = bandwidth(sz(400_000_000) if scale < 1 else 400_000_000, repeat)
    echo(f"memory bandwidth (STREAM triad, {fastmb_threads()} threads): {bw / 1e9:.1f} GB/s")
    echo(HEADER)
    rows = []
    for fn, kw in [(bench_per_sample_logistic, dict(n=sz(200_000))),
                   (bench_sgd_epoch, dict(n=sz(200_000))),
                   (bench_mlp_per_sample, dict(batch=sz(4096))),
                   (bench_fedavg, dict(P=sz(1_000_000)))]:
        new = fn(bw, repeat=repeat, **kw)
        for r in new:
            echo(format_row(r))
        rows.extend(new)
    extra = {"bandwidth_GBps": bw / 1e9}
    if compile:
        extra.update(compile_times())
        echo(f"compile: cold {extra['cold_s']:.1f} s (fresh cache), warm start-up "
             f"{extra['warm_s']:.2f} s (import + first calls from the on-disk cache)")
    return rows, extra


def fastmb_threads():
    try:
        import numba

        return numba.get_num_threads()
    except Exception:  # pragma: no cover - numba is a dependency
        return os.cpu_count()


def _ms(t):
    return "-" if t is None else f"{t * 1e3:9.2f} ms"


HEADER = (f"{'kernel':<29} {'size':<30} {'fastmb':>12}  {'peer':<38} {'peer time':>12} "
          f"{'ratio':>7} {'of limit':>8}")


def format_row(r):
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:6.1f}x"
    limit = "-" if r["limit"] is None else f"{100 * r['limit']:6.0f}%"
    return (f"{r['kernel']:<29} {r['size']:<30} {_ms(r['fastmb_s']):>12}  {r['peer']:<38} "
            f"{_ms(r['peer_s']):>12} {ratio:>7} {limit:>8}")
