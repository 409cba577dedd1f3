"""The CUDA target's figures, each against its limit and its peer, measured in one run.

    python benchmarks/cuda_figures.py [--scale full|small|tiny] [--json FILE]

* the limit: a device-to-device copy of 1 GiB (bytes read + bytes written, over the
  time), measured first in the same process;
* per-sample gradients of logistic regression, n = 1,000,000, d = 256 (float32): bytes
  moved = X read + the (n, d+1) gradients written + the labels; target >= 60% of the copy;
* FedAvg of K = 256 updates of P = 10,000,000 (float32): bytes = U read + result written;
  target >= 70% of the copy;
* per-sample gradients of an MLP against ``torch.func.vmap(grad)`` on the same GPU (when
  PyTorch with CUDA is installed): target >= 3x;
* one round of 1,000 clients' local training (MLP 64-64-10, 50 rows each, one epoch of
  batches of 10): the GPU against the CPU path of the same call.

Every timing runs the operation once first (compilation, allocation) and synchronizes the
device before it stops the clock; the best of ``--repeat`` runs is reported. ``--scale``
shrinks every size (``tiny`` runs on numba-cuda's simulator as a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

SCALES = {"full": 1, "small": 16, "tiny": 20000}


def timed(fn, sync, repeat):
    """Best wall time of ``fn`` over ``repeat`` runs after one warm-up, device synchronized."""
    fn()
    sync()
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def copy_bandwidth(cuda, nbytes, repeat):
    """Bytes per second of a device-to-device copy (read + write counted)."""
    src = cuda.device_array(nbytes // 4, np.float32)
    dst = cuda.device_array(nbytes // 4, np.float32)
    t = timed(lambda: dst.copy_to_device(src), cuda.synchronize, repeat)
    return 2 * src.nbytes / t


def torch_vmap_peer(model, params, X, y, repeat):
    """Seconds of ``torch.func.vmap(grad)`` per-sample gradients of the same MLP, or None."""
    try:
        import torch
        from torch.func import functional_call, grad, vmap
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    layers = []
    for (W, b) in model.layers(params):
        lin = torch.nn.Linear(W.shape[0], W.shape[1]).to(dev)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(W.T))
            lin.bias.copy_(torch.as_tensor(b))
        layers += [lin, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    weights = {k: v.detach() for k, v in net.named_parameters()}
    tX = torch.as_tensor(X, device=dev)
    ty = torch.as_tensor(y, device=dev)

    def loss(w, x, t):
        out = functional_call(net, w, (x[None],))
        return torch.nn.functional.cross_entropy(out, t[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    return timed(lambda: per_sample(weights, tX, ty), torch.cuda.synchronize, repeat)


def run(scale="full", repeat=5, threads=None, echo=print):
    from numba import cuda

    import fastmb
    from fastmb import _cuda
    from fastmb.kernels import cuda as KC

    _cuda.cuda()
    if threads is not None:
        KC.THREADS_PER_BLOCK = threads
    s = SCALES[scale]
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    dev = "numba-cuda simulator" if sim else cuda.get_current_device().name
    dev = dev.decode() if isinstance(dev, bytes) else str(dev)
    echo(f"device: {dev}, {_cuda.threads()} threads per block")
    rows = []
    bw = copy_bandwidth(cuda, max(1 << 20, (1 << 30) // s), repeat)
    echo(f"device-to-device copy: {bw / 1e9:.1f} GB/s (the limit below)")
    rng = np.random.default_rng(0)

    # Per-sample gradients of logistic regression.
    n, d = max(16, 1_000_000 // s), 256 if s < 1000 else 8
    model = fastmb.Linear(d, loss="logistic")
    X = cuda.to_device(rng.normal(size=(n, d)).astype(np.float32))
    y = cuda.to_device(rng.integers(0, 2, n))
    p = cuda.to_device((0.01 * rng.normal(size=d + 1)).astype(np.float32))
    out = cuda.device_array((n, d + 1), np.float32)
    t = timed(lambda: fastmb.per_sample_grad(model, p, X, y, out=out, device="cuda"),
              cuda.synchronize, repeat)
    moved = X.nbytes + out.nbytes + y.nbytes
    rows.append(dict(name="per-sample grad, logistic", size=f"n={n:,} d={d}", seconds=t,
                     fraction_of_copy=moved / t / bw, target=0.60))

    # FedAvg.
    K, P = 256 if s < 1000 else 8, max(100, 10_000_000 // s)
    U = cuda.to_device(rng.normal(size=(K, P)).astype(np.float32))
    w = rng.uniform(1, 100, K)
    t = timed(lambda: fastmb.fedavg(U, w, device="cuda"), cuda.synchronize, repeat)
    moved = U.nbytes + 4 * P
    rows.append(dict(name="fedavg", size=f"K={K} P={P:,}", seconds=t,
                     fraction_of_copy=moved / t / bw, target=0.70))
    U = None  # the device stack is freed before the next one is made

    # MLP per-sample gradients vs torch.func.vmap.
    tiny = scale == "tiny"
    n = max(8, 65_536 // s)
    mlp = fastmb.MLP([6, 5, 3] if tiny else [64, 128, 10])
    pm = mlp.init()
    Xm = rng.normal(size=(n, mlp.n_features)).astype(np.float32)
    ym = rng.integers(0, mlp.n_outputs, n)
    dX, dy, dp = cuda.to_device(Xm), cuda.to_device(ym), cuda.to_device(pm)
    outm = cuda.device_array((n, mlp.n_params), np.float32)
    t = timed(lambda: fastmb.per_sample_grad(mlp, dp, dX, dy, out=outm, device="cuda"),
              cuda.synchronize, repeat)
    peer = None if sim else torch_vmap_peer(mlp, pm, Xm, ym, repeat)
    rows.append(dict(name=f"per-sample grad, MLP {mlp.sizes}", size=f"n={n:,}", seconds=t,
                     peer="torch.func.vmap", peer_seconds=peer,
                     speedup=None if peer is None else peer / t, target=3.0,
                     fraction_of_copy=(dX.nbytes + outm.nbytes) / t / bw))

    # One round of 1,000 clients.
    K, rows_each = max(2, 1000 // s), 6 if tiny else 50
    Xc = rng.normal(size=(K * rows_each, mlp.n_features)).astype(np.float32)
    yc = rng.integers(0, mlp.n_outputs, K * rows_each)
    offsets = np.arange(0, K * rows_each + 1, rows_each)
    kw = dict(batch_size=10, lr=0.05, momentum=0.9)
    dXc, dyc = cuda.to_device(Xc), cuda.to_device(yc)
    t_gpu = timed(lambda: fastmb.train_clients(mlp, dp, dXc, dyc, offsets, device="cuda", **kw),
                  cuda.synchronize, max(1, repeat // 2))
    t_cpu = timed(lambda: fastmb.train_clients(mlp, pm, Xc, yc, offsets, **kw), lambda: None,
                  max(1, repeat // 2))
    rows.append(dict(name="train_clients round", size=f"K={K} x {rows_each} rows, MLP",
                     seconds=t_gpu, peer="fastmb CPU path", peer_seconds=t_cpu,
                     speedup=t_cpu / t_gpu))
    for r in rows:
        echo(format_row(r))
    return dict(device=dev, copy_bandwidth=bw, rows=rows)


def format_row(r):
    txt = f"{r['name']:34s} {r['size']:26s} {r['seconds'] * 1e3:10.3f} ms"
    if r.get("fraction_of_copy") is not None:
        txt += f"  {100 * r['fraction_of_copy']:5.1f}% of copy bandwidth"
    if r.get("peer_seconds") is not None:
        txt += f"  {r['peer']}: {r['peer_seconds'] * 1e3:.3f} ms ({r['speedup']:.2f}x)"
    if r.get("target") is not None:
        txt += f"  [target {r['target']}]"
    return txt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, help="threads per block (default: fastmb's)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    res = run(args.scale, args.repeat, args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
