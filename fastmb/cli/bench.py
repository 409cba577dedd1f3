"""``fastmb bench``: the core kernels beside their peers, measured in one process.

Each row times fastmb and the tool a user would otherwise reach for, on the same
data, best of several runs after a warm-up (so compile time never enters a timing;
``--compile`` measures it on purpose, in fresh processes). The limit column is the
fraction of the memory-bandwidth bound achieved: bytes the kernel must move divided
by the STREAM-triad bandwidth measured at the start of the same run.

Every peer is defined once here, as a factory that takes the data and returns the
call to time; ``fastmb bench``, the asv suite (``benchmarks/``) and the
pytest-benchmark tests all time these same calls. A factory raises ``ImportError``
when its library is missing. Peers: NumPy written the fast way (always),
scikit-learn, PyTorch (``torch.func``, a plain training loop, Opacus), JAX, and Flower's legacy
``aggregate()`` (the real one when ``flwr`` is installed, else a faithful copy).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

import numba
import numpy as np

import fastmb

from ..adapters.torch import from_torch
from ..federation import data as D
from ..federation import partition as Pt
from ..kernels.roofline import triad
from ..secure import (
    Channel,
    Identity,
    MaskPlan,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    mask_update,
)
from ..secure import _crypto as C
from ..secure.field import CHUNK_BYTES
from ..slicing import (
    CompactModel,
    WidthMean,
    prune,
    split_sgd,
    splitfed,
    train_width_clients,
)

# ----------------------------------------------------------------------------- timing


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
    n = n_bytes // 12
    a, b, c = np.empty(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
    t = best_time(lambda: triad(a, b, c, np.float32(3.0)), repeat)
    return 3 * a.nbytes / t


def gemm_peak(n=1536, repeat=5, dtype=np.float32):
    """Matrix-multiply throughput of NumPy's BLAS in ``dtype`` (flop/s): the compute limit."""
    a = np.random.default_rng(0).normal(size=(n, n)).astype(dtype)
    out = np.empty_like(a)
    return 2.0 * n**3 / best_time(lambda: np.matmul(a, a, out=out), repeat)


# ----------------------------------------------------------------------------- data


def logistic_data(n=200_000, d=128, seed=0):
    """Logistic regression on float32 data with labels from a random hyperplane."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=d) > 0).astype(np.int64)
    model = fastmb.Linear(d, loss="logistic")
    params = (0.1 * rng.normal(size=model.n_params)).astype(np.float32)
    return model, params, X, y


def sparse_logistic_data(n=200_000, d=1 << 18, nnz=50, seed=5):
    """Logistic regression on a float32 CSR matrix with ``nnz`` stored entries a row
    (random columns, repeats summed), labels from a random hyperplane."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    cols = np.sort(rng.integers(0, d, (n, nnz)), axis=1).astype(np.int32)
    X = sp.csr_matrix((rng.normal(size=n * nnz).astype(np.float32), cols.ravel(),
                       np.arange(0, (n + 1) * nnz, nnz)), shape=(n, d))
    X.sum_duplicates()
    y = (X @ rng.normal(size=d) > 0).astype(np.int64)
    model = fastmb.Linear(d, loss="logistic")
    return model, model.init(), X, y


def mlp_data(sizes=(128, 64, 64, 10), batch=4096, seed=2):
    """A ReLU/softmax MLP with initialised parameters and one batch of float32 data."""
    rng = np.random.default_rng(seed)
    model = fastmb.MLP(list(sizes))
    X = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    return model, model.init(seed=0), X, rng.integers(0, sizes[-1], batch)


def fedavg_data(K=64, P=1_000_000, seed=3):
    """K float32 updates of length P and integer example counts as weights."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(K, P)).astype(np.float32),
            rng.integers(10, 1000, K).astype(np.float64))


def int8_data(K=64, P=1_000_000):
    """The updates of :func:`fedavg_data` quantized to int8 (block 256), and their weights;
    the dense stack is not kept."""
    U, w = fedavg_data(K, P)
    return [fastmb.quantize_int8(u, 256) for u in U], w


def robust_data(K=64, P=1_000_000, seed=4):
    """K float32 updates of length P: a shared direction plus per-client noise."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(K, P)).astype(np.float32)
    U += rng.normal(size=P).astype(np.float32)
    return (U,)


# ----------------------------------------------------------------------------- peers


def numpy_logistic_per_sample(model, params, X, y):
    """``(sigmoid(X w + b) - y)[:, None] * X`` into a preallocated output (its fastest form)."""
    d = X.shape[1]
    w, b, yf = params[:d], params[d], y.astype(np.float32)
    out = np.empty_like(X)
    return lambda: np.multiply((1.0 / (1.0 + np.exp(-(X @ w + b))) - yf)[:, None], X, out=out)


def torch_logistic_per_sample(model, params, X, y):
    """``torch.func.vmap(grad(loss))`` over the samples."""
    import torch
    from torch.func import grad, vmap

    d = X.shape[1]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    w, b = torch.from_numpy(params[:d].copy()), torch.tensor(float(params[d]))

    def sample_loss(w_, b_, x_, y_):
        return torch.nn.functional.binary_cross_entropy_with_logits(x_ @ w_ + b_, y_)

    per_sample = vmap(grad(sample_loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))
    return lambda: per_sample(w, b, Xt, yt)


def jax_logistic_per_sample(model, params, X, y):
    """JAX's ``jit(vmap(grad(loss)))`` over the samples (XLA on the CPU)."""
    import jax
    import jax.numpy as jnp

    d = X.shape[1]
    Xj, yj = jnp.asarray(X), jnp.asarray(y.astype(np.float32))
    w, b = jnp.asarray(params[:d]), jnp.float32(params[d])

    def sample_loss(w_, b_, x_, y_):
        z = x_ @ w_ + b_
        return jnp.logaddexp(0.0, z) - y_ * z  # binary cross-entropy with logits

    per_sample = jax.jit(jax.vmap(jax.grad(sample_loss, argnums=(0, 1)),
                                  in_axes=(None, None, 0, 0)))
    return lambda: jax.block_until_ready(per_sample(w, b, Xj, yj))


def jax_sgd_epoch(model, params, X, y, batch=32):
    """One shuffled epoch of mini-batch SGD (batch 32, lr 0.01) as one compiled JAX call:
    the permuted rows gathered, then ``lax.scan`` over the batches (the remainder dropped)."""
    import jax
    import jax.numpy as jnp

    n, d = X.shape
    nb = n // batch
    Xj, yj = jnp.asarray(X), jnp.asarray(y.astype(np.float32))

    def batch_loss(wb, xb, yb):
        z = xb @ wb[:d] + wb[d]
        return jnp.mean(jnp.logaddexp(0.0, z) - yb * z)

    @jax.jit
    def epoch(wb, key):
        perm = jax.random.permutation(key, n)[:nb * batch]
        xs = Xj[perm].reshape(nb, batch, d)
        ys = yj[perm].reshape(nb, batch)

        def step(w_, xy):
            return w_ - 0.01 * jax.grad(batch_loss)(w_, *xy), None

        return jax.lax.scan(step, wb, (xs, ys))[0]

    w0, key = jnp.asarray(params), jax.random.PRNGKey(0)
    return lambda: jax.block_until_ready(epoch(w0, key))


def sklearn_sgd_epoch(model, params, X, y):
    """One epoch of ``SGDClassifier`` (batch 1, constant step, no penalty)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier

    X64 = X.astype(np.float64)  # converted up front: time the epoch, not the copy

    def epoch():
        clf = SGDClassifier(loss="log_loss", max_iter=1, tol=None, learning_rate="constant",
                            eta0=0.01, alpha=0.0, shuffle=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X64, y)

    return epoch


def torch_sgd_epoch(model, params, X, y, batch=32):
    """A plain PyTorch training loop: ``nn.Linear``, ``optim.SGD``, shuffled batches of 32."""
    import torch

    n, d = X.shape
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))

    def epoch():
        lin = torch.nn.Linear(d, 1)
        opt = torch.optim.SGD(lin.parameters(), lr=0.01)
        lossf = torch.nn.BCEWithLogitsLoss()
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            lossf(lin(Xt[idx])[:, 0], yt[idx]).backward()
            opt.step()

    return epoch


def _numpy_mlp_per_sample(Ws, bs, X, y):
    """Per-sample gradients of a ReLU/softmax MLP by batched NumPy backprop (einsum outer
    products)."""
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


def numpy_mlp_per_sample(model, params, X, y):
    """Batched NumPy backprop with einsum outer products."""
    layers = model.layers(params)
    Ws, bs = [W for W, _ in layers], [b for _, b in layers]
    return lambda: _numpy_mlp_per_sample(Ws, bs, X, y)


def torch_mlp_per_sample(model, params, X, y):
    """``torch.func.vmap(grad(loss))`` over an equivalent ``nn.Sequential``."""
    import torch
    from torch.func import functional_call, grad, vmap

    sizes = model.sizes
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    tparams = {k: v.detach() for k, v in net.named_parameters()}
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def sample_loss(p, x, t):
        return torch.nn.functional.cross_entropy(functional_call(net, p, (x[None],)), t[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    return lambda: per_sample(tparams, Xt, yt)


def materialized_norms(model, params, X, y):
    """Per-sample norms the materializing way: fastmb's per-sample gradients, then row norms."""
    out = np.empty((len(X), model.n_params), params.dtype)
    return lambda: np.linalg.norm(fastmb.per_sample_grad(model, params, X, y, out=out), axis=1)


def flower_aggregate_copy(results):
    """Flower's legacy ``flwr.server.strategy.aggregate.aggregate``, line for line."""
    num_examples_total = sum(num_examples for (_, num_examples) in results)
    weighted_weights = [[layer * num_examples for layer in weights]
                        for weights, num_examples in results]
    return [functools.reduce(np.add, layer_updates) / num_examples_total
            for layer_updates in zip(*weighted_weights)]


def flower_fedavg(U, w):
    """Flower's legacy ``aggregate()`` on one-layer results (the real one when installed)."""
    try:
        from flwr.server.strategy.aggregate import aggregate
    except ImportError:
        aggregate = flower_aggregate_copy
    results = [([u], int(wk)) for u, wk in zip(U, w)]
    return lambda: aggregate(results)


def flower_strategy_data(K=100, P=85_000, seed=4):
    """K clients' float32 models as Flower's two strategy APIs receive them: Message API
    replies (an ArrayRecord and the ``num-examples`` metric) and legacy ``FitRes``. The
    model is an MLP's weights and biases (784-100-64-10: 85,614 parameters) or one
    1000 x 1000 layer with its bias (1,001,000) for P above 100,000."""
    from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.app.metadata import Metadata
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    shapes = ([(784, 100), (100,), (100, 64), (64,), (64, 10), (10,)] if P <= 100_000
              else [(1000, 1000), (1000,)])
    rng = np.random.default_rng(seed)
    counts = rng.integers(10, 1000, K)
    msgs, fits = [], []
    for i in range(K):
        arrays = [rng.normal(size=sh).astype(np.float32) for sh in shapes]
        rec = RecordDict({"arrays": ArrayRecord({f"l{j}": Array(a) for j, a in enumerate(arrays)}),
                          "metrics": MetricRecord({"num-examples": int(counts[i])})})
        md = Metadata(run_id=1, message_id=f"m{i}", src_node_id=i + 1, dst_node_id=0,
                      reply_to_message_id="", group_id="1", created_at=0.0, ttl=3600.0,
                      message_type=MessageType.TRAIN)
        msgs.append(Message(content=rec, metadata=md))
        fits.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays),
                                  int(counts[i]), {})))
    return msgs, fits, sum(int(np.prod(sh)) for sh in shapes)


def flower_message_fedavg(msgs, fits, P):
    """Flower's own ``FedAvg.aggregate_train`` (Message API) on the same replies."""
    from flwr.serverapp.strategy import FedAvg

    strategy = FedAvg()
    return lambda: strategy.aggregate_train(1, msgs)


def flower_legacy_fedavg(msgs, fits, P):
    """Flower's own legacy ``FedAvg.aggregate_fit`` (in place, its default)."""
    from flwr.server.strategy import FedAvg

    strategy = FedAvg()
    return lambda: strategy.aggregate_fit(1, fits, [])


def unsplit_sgd_epoch(model, params, X, y, cut, batch=32):
    """The peer of a split-learning epoch: the same epoch of ``fastmb.sgd``, unsplit (the
    overhead of the cut is the ratio's inverse)."""
    return lambda: fastmb.sgd(model, params, X, y, batch_size=batch, lr=0.05)


def fedavg_round(model, params, X, y, offsets, cut, batch=32):
    """The peer of a SplitFed round: the same clients' ``train_clients`` and FedAvg (V1
    equals it bit for bit)."""
    w = np.diff(offsets).astype(np.float64)
    return lambda: fastmb.fedavg(fastmb.train_clients(model, params, X, y, offsets,
                                                      batch_size=batch, lr=0.05), weights=w)


def hetero_round(model, params, X, y, offsets, rates):
    """A width-sliced round: each client trains its sub-model, the server averages each
    parameter over its holders (``fastmb.slicing``)."""
    w = np.diff(offsets).astype(np.float64)

    def run():
        agg = WidthMean(model)
        agg.add_all(train_width_clients(model, params, X, y, offsets, rates, batch_size=32,
                                        lr=0.05), w)
        return agg.result(params)
    return run


def homogeneous_round(model, params, X, y, offsets, rates):
    """The same round with every client at full width: ``train_clients`` and FedAvg."""
    return fedavg_round(model, params, X, y, offsets, 1)


def dense_predict(model, params, X, cm):
    """The peer of compact inference: ``fastmb.predict`` on the dense float32 model."""
    return lambda: fastmb.predict(model, params, X)


def numpy_fedavg(U, w):
    """``(w @ U) / w.sum()``: one BLAS matrix-vector product."""
    w32, total = w.astype(np.float32), w.sum()
    return lambda: (w32 @ U) / total


def numpy_median(U):
    """``np.median(U, axis=0)``."""
    return lambda: np.median(U, axis=0)


def numpy_trimmed_mean(U, beta=0.1):
    """scipy.stats.trim_mean's formulation: ``np.partition`` at both cuts, mean of the middle."""
    K = U.shape[0]
    t = int(beta * K)
    return lambda: np.partition(U, (t, K - t - 1), axis=0)[t:K - t].mean(axis=0)


def numpy_krum(U, f=10):
    """Flower's Krum with its distance matrix from one Gram matrix ``U @ U.T`` (BLAS)."""
    def krum():
        G = U @ U.T
        sq = np.diag(G)
        D = sq[:, None] + sq[None, :] - 2.0 * G
        np.fill_diagonal(D, np.inf)
        scores = np.sort(D, axis=1)[:, :len(U) - f - 2].sum(axis=1)
        return U[np.argmin(scores)]

    return krum


def numpy_topk_ef(u, residual, k):
    """Top-k with error feedback by ``np.argpartition`` of ``|u + residual|``."""
    P = u.shape[0]

    def step():
        c = u + residual
        sel = np.argpartition(np.abs(c), P - k)[P - k:]
        vals = c[sel]
        c[sel] = 0
        return sel, vals, c

    return step


def fastmb_plain_step(model, params, X, y):
    """fastmb's own non-private step on the same batch (the issue's 2x reference)."""
    return lambda: fastmb.sgd(model, params, X, y, batch_size=len(X), shuffle=False, lr=0.01)


def _torch_mlp(sizes):
    import torch

    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_mlp_step(model, params, X, y):
    """A plain (non-private) PyTorch step: forward, cross-entropy, backward, ``optim.SGD``."""
    import torch

    net = _torch_mlp(model.sizes)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()

    return step


def _opacus_step(model, X, y, mode):
    import torch
    from opacus import PrivacyEngine

    net = _torch_mlp(model.sizes)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, yt),
                                         batch_size=len(X))
    lossf = torch.nn.CrossEntropyLoss()
    kw = dict(module=net, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
              max_grad_norm=1.0, poisson_sampling=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "ghost":
            net, opt, lossf, _ = PrivacyEngine().make_private(criterion=lossf,
                                                             grad_sample_mode="ghost", **kw)
        else:
            net, opt, _ = PrivacyEngine().make_private(**kw)

    def step():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.zero_grad()
            lossf(net(Xt), yt).backward()
            opt.step()

    return step


def opacus_ghost_step(model, params, X, y):
    """Opacus DP-SGD step, its fastest CPU mode (``grad_sample_mode="ghost"``)."""
    return _opacus_step(model, X, y, "ghost")


def opacus_hooks_step(model, params, X, y):
    """Opacus DP-SGD step in its default per-sample mode (``"hooks"``)."""
    return _opacus_step(model, X, y, "hooks")


def torch_mlp_data(sizes=(128, 256, 256, 10), batch=1024, seed=6):
    """``(fastmb.torch.TorchModel, an unbound copy of its module, X, y)``, float32 tensors.
    Raises ImportError without torch."""
    import torch

    torch.manual_seed(seed)
    net = _torch_mlp(sizes)
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    return from_torch(net, torch.nn.CrossEntropyLoss()), ref, X, y


def _torch_backward(module, X, y):
    import torch

    def step():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(module(X), y).backward()

    return step


def opacus_grad_sample(tm, net, X, y):
    """Opacus ``GradSampleModule`` (hooks): forward and backward fill ``p.grad_sample``."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(copy.deepcopy(net))
    backward = _torch_backward(gsm, X, y)

    def grads():
        backward()
        return [p.grad_sample for p in gsm.parameters()]

    return grads


def torch_func_grad_sample(tm, net, X, y):
    """``torch.func.vmap(grad(loss))`` over the module's parameters."""
    import torch
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}

    def one(p, x, t):
        return torch.nn.functional.cross_entropy(functional_call(net, p, (x[None],)), t[None])

    f = vmap(grad(one), in_dims=(None, 0, 0))
    return lambda: f(params, X, y)


def opacus_ghost_norms(tm, net, X, y):
    """Opacus' ghost clipping: forward, backward, then the per-sample norms."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModuleFastGradientClipping(copy.deepcopy(net), loss_reduction="mean",
                                                   max_grad_norm=1.0, use_ghost_clipping=True)
    backward = _torch_backward(gsm, X, y)

    def norms():
        backward()
        return gsm.get_norm_sample()

    return norms


#: The settings of the SGDClassifier rows: scikit-learn's defaults for five whole epochs
#: (no early stop, so both run the same number of steps).
SGD_FIT = dict(max_iter=5, tol=None, random_state=0)


def sklearn_sgd_fit(X, y):
    """scikit-learn's own ``SGDClassifier(**SGD_FIT).fit``."""
    from sklearn.linear_model import SGDClassifier

    def fit():
        return SGDClassifier(**SGD_FIT).fit(X, y)

    return fit


#: The MLP rows: one epoch of an MLP 128-64-10 (``fit`` with ``max_iter=1``).
MLP_FIT = {"sgd": dict(hidden_layer_sizes=(64,), solver="sgd", batch_size=32, max_iter=1,
                       random_state=0),
           "adam": dict(hidden_layer_sizes=(64,), solver="adam", max_iter=1, random_state=0)}


def _quiet_fit(make, X, y):
    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one epoch: "not converged"
            return make().fit(X, y)

    return fit


def sklearn_mlp_fit(X, y, solver):
    """scikit-learn's own ``MLPClassifier(**MLP_FIT[solver]).fit``."""
    from sklearn.neural_network import MLPClassifier

    return _quiet_fit(lambda: MLPClassifier(**MLP_FIT[solver]), X, y)


def mlp_step_flops(sizes, batch):
    """Flops of one training step: forward, input-side deltas (not for layer 0), weight grads."""
    prods = [a * b for a, b in itertools.pairwise(sizes)]
    return 2 * batch * (3 * sum(prods) - prods[0])


def numpy_int8_mean(codes, scales, w, block):
    """Dequantize each client with NumPy (codes * repeated scales), then ``(w @ D) / w.sum()``."""
    P = codes[0].shape[0]

    def mean():
        D = np.array([c.astype(np.float32) * np.repeat(s, block)[:P]
                      for c, s in zip(codes, scales)])
        return (w.astype(np.float32) @ D) / w.sum()

    return mean


def secagg_client_data(P=1_000_000, k=8, seed=7):
    """A client's update and its mask material: a self seed and k pairwise seeds."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0, 0.05, P).astype(np.float32)
    seeds = [rng.bytes(32) for _ in range(k + 1)]
    return u, seeds


def flower_secagg_mask(u, seeds):
    """Flower's SecAgg+ client masking (``secaggplus_mod``, flwr 1.42, at its defaults:
    clip 8, 2**22 levels, modulus 2**32): its quantization, then a NumPy Mersenne-Twister
    mask per seed (seeded with a 32-bit fold of the key), added as int64, then the modulus.
    The X25519 agreements Flower does in this stage are left out (fastmb's plan holds the
    derived seeds; they cost about 0.05 ms each)."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    mod = 1 << 32

    def run():
        q = factor_combine(1, quantize([u], 8.0, 1 << 22))
        dims = [a.shape for a in q]
        q = parameters_addition(q, pseudo_rand_gen(seeds[0], mod, dims))
        for i, seed in enumerate(seeds[1:]):
            m = pseudo_rand_gen(seed, mod, dims)
            q = parameters_addition(q, m) if i % 2 else parameters_subtraction(q, m)
        return parameters_mod(q, mod)
    return run


def secagg_server_data(N=100, P=1_000_000, dropped=0.1, seed=8):
    """A secure round of N clients (SecAgg+, default neighbours) up to the unmasking: the
    server, the survivors' responses, and the survivors' float updates (the peer's input)."""
    rng = np.random.default_rng(seed)
    cfg = SecAggConfig(clip=1.0)
    server = SecAggServer(cfg, np.arange(N), seed=seed)
    clients = {c: SecAggClient(c, cfg) for c in range(N)}
    rosters = server.rosters(c.advertise() for c in clients.values())
    inbox = server.route({c: clients[c].share_keys(rosters[c], N) for c in range(N)})
    gone = set(rng.choice(N, round(dropped * N), replace=False).tolist())
    U = np.empty((N - len(gone), P), np.float32)
    i = 0
    for c in range(N):
        if c in gone:
            continue
        U[i] = rng.normal(0, 0.05, P)
        server.add_masked(c, clients[c].masked_input(U[i], 1, inbox[c], key=c))
        i += 1
    requests = server.unmask_requests()
    responses = {c: clients[c].unmask(*requests[c]) for c in requests}
    n_streams = len(server.sent) + sum(
        int(np.isin(server.graph[d], list(server.sent)).sum()) for d in gone)
    return server, responses, U, n_streams


def plain_fedavg_survivors(server, responses, U, n_streams):
    """FedAvg of the same survivors' float updates, in the clear."""
    return lambda: fastmb.fedavg(U)


def fernet_encrypt(payload, envelopes):
    """Fernet (AES-128-CBC + HMAC-SHA256, base64), the cipher Flower's SecAgg+ encrypts its
    shares with: encrypt."""
    from cryptography.fernet import Fernet

    f = Fernet(Fernet.generate_key())
    return lambda: f.encrypt(payload)


def fernet_decrypt(payload, envelopes):
    """Fernet: decrypt (and verify) a token of the payload."""
    from cryptography.fernet import Fernet

    f = Fernet(Fernet.generate_key())
    token = f.encrypt(payload)
    return lambda: f.decrypt(token)


def secure_round_data(n_clients, rows=20, seed=9):
    """Synthetic digits-sized data for ``n_clients`` clients of ``rows`` rows each, all of
    them in every round, and an MLP 64-64-10."""
    data = D.synthetic(n_clients * rows * 5 // 4, 64, 10, seed=seed)
    part = Pt.iid(len(data.y), n_clients, seed=seed)
    return fastmb.MLP([64, 64, 10]), data, part


def _round_sim(model, data, part, secure, signed=False):
    cfg = None if not secure else SecAggConfig(clip=1.0, max_weight=int(part.sizes.max()),
                                               signed=signed)
    sim = fastmb.Simulation(model, data, part, fraction=1.0, epochs=1, batch_size=16,
                            lr=0.05, seed=0, eval_every=10**6, secure=cfg)
    return sim.step


def plain_round(model, data, part):
    """The same round of FedAvg without secure aggregation."""
    return _round_sim(model, data, part, False)


#: Each benchmark's peers: (label, factory taking the same data as fastmb's call).
PEERS = {
    "per_sample_logistic": [("NumPy (sigmoid(Xw)-y)[:,None]*X", numpy_logistic_per_sample),
                            ("torch.func vmap(grad)", torch_logistic_per_sample),
                            ("JAX jit(vmap(grad))", jax_logistic_per_sample)],
    "sgd_epoch": [("sklearn SGDClassifier (batch 1)", sklearn_sgd_epoch),
                  ("PyTorch loop (batch 32)", torch_sgd_epoch),
                  ("JAX lax.scan (batch 32)", jax_sgd_epoch)],
    "sgd_epoch_sparse": [("sklearn SGDClassifier (batch 1)", sklearn_sgd_epoch)],
    "sklearn_sgd_fit": [("sklearn SGDClassifier", sklearn_sgd_fit)],
    "sklearn_mlp_fit": [("sklearn MLPClassifier", sklearn_mlp_fit)],
    "mlp_per_sample": [("NumPy batched backprop + einsum", numpy_mlp_per_sample),
                       ("torch.func vmap(grad)", torch_mlp_per_sample)],
    "mlp_norms": [("materialize (fastmb) + np.linalg.norm", materialized_norms)],
    "fedavg": [("Flower aggregate()", flower_fedavg), ("NumPy (w @ U) / w.sum()", numpy_fedavg)],
    "median": [("np.median(U, axis=0)", numpy_median)],
    "trimmed_mean": [("np.partition trimmed mean", numpy_trimmed_mean)],
    "krum": [("NumPy Gram-matrix Krum", numpy_krum)],
    "topk": [("np.argpartition top-k + residual", numpy_topk_ef)],
    "int8_mean": [("NumPy dequantize + (w @ D) / w.sum()", numpy_int8_mean)],
    "torch_per_sample": [("Opacus GradSampleModule (hooks)", opacus_grad_sample),
                         ("torch.func vmap(grad)", torch_func_grad_sample)],
    "torch_norms": [("Opacus ghost clipping", opacus_ghost_norms)],
    "split_epoch": [("fastmb.sgd, unsplit", unsplit_sgd_epoch)],
    "splitfed_round": [("train_clients + fedavg", fedavg_round)],
    "hetero_round": [("every client at width 1", homogeneous_round)],
    "compact_predict": [("fastmb.predict, dense f32", dense_predict)],
    "flower_message": [("Flower FedAvg.aggregate_train", flower_message_fedavg)],
    "secagg_mask": [("Flower SecAgg+ masking", flower_secagg_mask)],
    "secagg_unmask": [("plain FedAvg, same survivors", plain_fedavg_survivors)],
    "envelope_seal": [("Fernet encrypt (Flower's share cipher)", fernet_encrypt)],
    "envelope_open": [("Fernet decrypt", fernet_decrypt)],
    "secure_round": [("plain FedAvg round", plain_round)],
    "flower_legacy": [("Flower FedAvg.aggregate_fit", flower_legacy_fedavg)],
    "dp_step": [("fastmb non-private step", fastmb_plain_step),
                ("PyTorch plain step", torch_mlp_step),
                ("Opacus ghost (fastest)", opacus_ghost_step),
                ("Opacus hooks (default)", opacus_hooks_step)],
}

#: The first calls of the core kernels; run in a fresh process it measures compile time.
COMPILE_SNIPPET = """
import numpy as np, fastmb
X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
y = (X[:, 0] > 0).astype(int)
for m in (fastmb.Linear(8, loss="logistic"), fastmb.MLP([8, 4, 2])):
    p = m.init()
    fastmb.loss(m, p, X, y); fastmb.grad(m, p, X, y)
    fastmb.per_sample_grad(m, p, X, y); fastmb.per_sample_grad_norm(m, p, X, y)
    fastmb.train_clients(m, p, X, y, [0, 32, 64]); fastmb.predict(m, p, X)
fastmb.fedavg(np.ones((3, 5), np.float32))
"""


# ----------------------------------------------------------------------------- rows


def _rows(kernel, size, fast, peers, data, repeat, limit_bytes, bw, echo, limit_s=None):
    """Time ``fast`` and each installed peer on ``data``: one table row per peer.

    The limit is ``limit_bytes`` at bandwidth ``bw``, or a time ``limit_s`` given directly
    (a flop count at GEMM peak); the row reports the limit's time over fastmb's time.
    """
    t_fast = best_time(fast, repeat)
    if limit_bytes is not None:
        limit_s = limit_bytes / bw
    limit = None if limit_s is None else limit_s / t_fast
    rows = []
    for label, factory in PEERS[peers]:
        try:
            call = factory(*data)
        except ImportError:
            continue
        # fastmb's threads spin for a while after a parallel kernel, taking a core from
        # whatever runs next: let them go to sleep before the peer is timed (measured: a
        # NumPy-bound peer 3-4x slower right after a parallel kernel on 2 cores)
        time.sleep(0.5)
        t_peer = best_time(call, max(1, repeat // 2))
        rows.append(dict(kernel=kernel, size=size, fastmb_s=t_fast, peer=label, peer_s=t_peer,
                         ratio=t_peer / t_fast, limit=limit))
    rows = rows or [dict(kernel=kernel, size=size, fastmb_s=t_fast, peer="-", peer_s=None,
                         ratio=None, limit=limit)]
    for r in rows:
        echo(format_row(r))
    return rows


def run(quick=False, compile=False, scale=1.0, echo=print):
    """Run every benchmark and return ``(rows, extra)``; ``echo`` receives progress lines."""
    repeat = 3 if quick else 7

    def sz(v):
        return max(64, int(v * scale))

    bw = bandwidth(max(12 * 64, int(400_000_000 * min(scale, 1.0))), repeat)
    echo(f"memory bandwidth (STREAM triad, {numba.get_num_threads()} threads): "
         f"{bw / 1e9:.1f} GB/s")
    echo(HEADER)

    model, p, X, y = logistic_data(n=sz(200_000))
    out = np.empty((len(X), model.n_params), np.float32)
    data = (model, p, X, y)
    size = f"n={len(X):,} d={X.shape[1]} f32"
    rows = _rows("per-sample grad, logistic", size,
                 lambda: fastmb.per_sample_grad(model, p, X, y, out=out), "per_sample_logistic",
                 data, repeat, X.nbytes + out.nbytes, bw, echo)
    p0 = model.init()
    rows += _rows("SGD epoch, logistic", f"n={len(X):,} d={X.shape[1]} batch 32",
                  lambda: fastmb.sgd(model, p0, X, y, batch_size=32, lr=0.01), "sgd_epoch",
                  data, max(1, repeat // 2), X.nbytes, bw, echo)

    model, p0, X, y = sparse_logistic_data(n=sz(200_000))
    # The bytes limit: each stored entry's value and column once, plus the labels.
    rows += _rows("SGD epoch, logistic, sparse CSR",
                  f"n={X.shape[0]:,} d=2^18, {X.nnz // X.shape[0]} stored a row, batch 32",
                  lambda: fastmb.sgd(model, p0, X, y, batch_size=32, lr=0.01),
                  "sgd_epoch_sparse", (model, p0, X, y), max(1, repeat // 2),
                  X.data.nbytes + X.indices.nbytes + X.indptr.nbytes + y.nbytes, bw, echo)

    model, p, X, y = mlp_data(batch=sz(4096))
    out = np.empty((len(X), model.n_params), np.float32)
    data = (model, p, X, y)
    size = f"{'-'.join(map(str, model.sizes))} batch {len(X)}"
    rows += _rows("per-sample grad, MLP", size,
                  lambda: fastmb.per_sample_grad(model, p, X, y, out=out), "mlp_per_sample",
                  data, repeat, X.nbytes + out.nbytes, bw, echo)
    rows += _rows("per-sample grad norms, MLP", size,
                  lambda: fastmb.per_sample_grad_norm(model, p, X, y), "mlp_norms", data,
                  repeat, X.nbytes, bw, echo)

    U, w = fedavg_data(P=sz(1_000_000))
    rows += _rows("fedavg", f"K={len(U)} x P={U.shape[1]:,} f32", lambda: fastmb.fedavg(U, w),
                  "fedavg", (U, w), repeat, U.nbytes + U.shape[1] * 4, bw, echo)
    wm = fastmb.WeightedMean(U.shape[1])
    t_add = best_time(lambda: wm.add(U[0], w[0]), repeat)
    # one add reads the update (4 B) and reads and writes the float64 sum (16 B)
    rows.append(dict(kernel="WeightedMean.add (streaming)", size=f"P={U.shape[1]:,} f32",
                     fastmb_s=t_add, peer="-", peer_s=None, ratio=None,
                     limit=20 * U.shape[1] / bw / t_add))
    echo(format_row(rows[-1]))

    rows += busy_machine(repeat, echo)

    data = robust_data(P=sz(1_000_000))
    (U,) = data
    size = f"K={len(U)} x P={U.shape[1]:,} f32"
    rows += _rows("coordinate median", size, lambda: fastmb.coordinate_median(U), "median",
                  data, max(1, repeat // 2), U.nbytes, bw, echo)
    rows += _rows("trimmed mean (beta 0.1)", size, lambda: fastmb.trimmed_mean(U, 0.1),
                  "trimmed_mean", data, max(1, repeat // 2), U.nbytes, bw, echo)
    data = robust_data(K=100, P=sz(1_000_000))
    (U,) = data
    peak = gemm_peak(repeat=repeat)
    peak64 = gemm_peak(repeat=repeat, dtype=np.float64)
    echo(f"GEMM peak (NumPy BLAS): float32 {peak / 1e9:.0f}, float64 {peak64 / 1e9:.0f} GFLOP/s")
    # The limit of the distances: fastmb sums (u - v)^2 in float64 over the upper triangle,
    # 3 flops a pair and coordinate, at the float64 GEMM peak. (The NumPy peer's Gram matrix
    # needs 2 float32 flops for the same, but cancels: see fastmb.pairwise_sq_distances.)
    rows += _rows("Krum (f=10)", f"K={len(U)} x P={U.shape[1]:,} f32",
                  lambda: fastmb.krum(U, 10), "krum", data, max(1, repeat // 2), None, bw, echo,
                  limit_s=3 * len(U) * (len(U) + 1) / 2 * U.shape[1] / peak64)

    rng = np.random.default_rng(5)
    u = rng.normal(size=sz(10_000_000)).astype(np.float32)
    res0 = (0.1 * rng.normal(size=u.size)).astype(np.float32)
    res = res0.copy()
    k = max(1, u.size // 100)
    # reads u and the residual, writes the residual: 12 bytes a coordinate at least
    rows += _rows("top-k 1% + error feedback", f"P={u.size:,} f32",
                  lambda: fastmb.topk(u, k, residual=res), "topk", (u, res0, k),
                  max(1, repeat // 2), 12 * u.size, bw, echo)

    # Streaming mean from int8: the limit counts the compressed bytes read (codes + scales)
    qs, w = int8_data(P=sz(1_000_000))
    rows += _rows("mean of int8 updates", f"K={len(qs)} x P={qs[0].n_params:,} block 256",
                  lambda: fastmb.mean_compressed(qs, w), "int8_mean",
                  ([q.codes for q in qs], [q.scales for q in qs], w, 256),
                  repeat, sum(q.nbytes for q in qs) + 4 * qs[0].n_params, bw, echo)

    # DP-SGD: one step (clip 1, noise 1) on a whole batch; limit = the step's flops at GEMM peak
    model, p, X, y = mlp_data(sizes=(128, 256, 256, 10), batch=sz(1024))
    rows += _rows("DP-SGD step, MLP", f"{'-'.join(map(str, model.sizes))} batch {len(X)}",
                  lambda: fastmb.sgd(model, p, X, y, batch_size=len(X), shuffle=False, lr=0.01,
                                     clip_norm=1.0, noise_multiplier=1.0),
                  "dp_step", (model, p, X, y), repeat, None, bw, echo,
                  limit_s=mlp_step_flops(model.sizes, len(X)) / peak)

    rows += _torch_rows(sz(1024), repeat, bw, peak, echo)
    rows += _sklearn_rows(sz(200_000), repeat, bw, echo)
    rows += _flower_rows(sz(100), [sz(85_000), sz(1_000_000)], repeat, bw, echo)
    rows += _secure_rows(sz, scale, repeat, echo)

    # Split learning: one epoch cut between a client and a server (every mini-batch crosses
    # the cut as explicit arrays, four kernel calls); the peer is the same epoch unsplit
    model, p, X, y = mlp_data(sizes=(64, 64, 64, 10), batch=sz(8192))
    rows += _rows("split-learning epoch, cut 1", f"64-64-64-10 n={len(X):,} batch 32",
                  lambda: split_sgd(model, p, X, y, 1, batch_size=32, lr=0.05), "split_epoch",
                  (model, p, X, y, 1), max(1, repeat // 3), None, bw, echo)
    offsets = np.linspace(0, len(X), 21).astype(np.int64)
    for engine in ("kernel", "parties"):
        rows += _rows(f"SplitFed V1 round, cut 1 ({engine})",
                      f"20 clients, n={len(X):,} batch 32",
                      lambda e=engine: splitfed(model, p, X, y, offsets, 1, batch_size=32,
                                                lr=0.05, engine=e),
                      "splitfed_round", (model, p, X, y, offsets, 1), max(1, repeat // 3),
                      None, bw, echo)
    rates = np.resize([1.0, 0.5, 0.5, 0.25, 0.25], 20)
    rows += _rows("width-sliced round (HeteroFL)", "20 clients, rates 1/.5/.25 as 1:2:2",
                  hetero_round(model, p, X, y, offsets, rates), "hetero_round",
                  (model, p, X, y, offsets, rates), max(1, repeat // 3), None, bw, echo)
    # Compact inference: 90% pruned, CSR with int8 codes, against the dense model
    model, p, X, _ = mlp_data(sizes=(256, 256, 256, 10), batch=sz(8192))
    q = prune(model, p, 0.9)
    cm = CompactModel.from_params(model, q, "csr+int8")
    rows += _rows("compact inference, csr+int8", f"256-256-256-10 90% pruned n={len(X):,}",
                  lambda: cm.predict(X), "compact_predict", (model, q, X, cm), repeat,
                  cm.nbytes + X.nbytes, bw, echo)

    extra = {"bandwidth_GBps": bw / 1e9, "gemm_GFLOPs": peak / 1e9,
             "gemm64_GFLOPs": peak64 / 1e9}
    if compile:
        extra.update(compile_times())
        echo(f"compile: cold {extra['cold_s']:.1f} s (fresh cache), warm start-up "
             f"{extra['warm_s']:.2f} s (import + first calls from the on-disk cache)")
    return rows, extra


def _keystream_time(n_bytes, streams, repeat):
    """The keystream generator's own time for ``streams`` streams of ``n_bytes`` (AES-CTR
    into one reused buffer): the limit of masking and unmasking."""
    zeros, buf = bytes(CHUNK_BYTES), bytearray(CHUNK_BYTES + 64)

    def run():
        for i in range(streams):
            enc = C.keystream(i.to_bytes(32, "little"))
            for lo in range(0, n_bytes, CHUNK_BYTES):
                enc.update_into(zeros[:min(CHUNK_BYTES, n_bytes - lo)], buf)
    return best_time(run, repeat)


def _secure_rows(sz, scale, repeat, echo):
    """Secure aggregation (``fastmb.secure``): a client's masking beside Flower's SecAgg+,
    the server's unmasking beside plain FedAvg, envelopes beside Fernet, and whole secure
    rounds beside plain ones. The limits are the keystream generator's own time (masking,
    unmasking) and AES-GCM's (envelopes). No rows without cryptography."""
    try:
        C.require()
    except ImportError:
        return []
    P = sz(1_000_000)
    u, seeds = secagg_client_data(P)
    fq = SecAggConfig(clip=1.0).quantizer
    plan = MaskPlan(0, seeds[0], tuple((i + 1, s, i % 2 == 0) for i, s in enumerate(seeds[1:])),
                    "aes-ctr")
    buf = np.empty(P + 1, np.uint32)
    rows = _rows("SecAgg+ client masking", f"P={P:,}, 8 neighbours",
                 lambda: mask_update(plan, fq.quantize(u, 1, 5, out=buf)), "secagg_mask",
                 (u, seeds), repeat, None, None, echo,
                 limit_s=_keystream_time(4 * (P + 1), 9, repeat))
    N = max(8, int(100 * scale))
    server, responses, U, n_streams = data = secagg_server_data(N, P)
    rows += _rows("SecAgg+ server unmasking", f"N={N}, P={P:,}, 10% dropped",
                  lambda: server.finish(responses), "secagg_unmask", data,
                  max(1, repeat // 3), None, None, echo,
                  limit_s=_keystream_time(4 * (P + 1), n_streams, 1))
    del data, U
    payload = np.random.default_rng(0).bytes(4 << 20)
    a, b = Identity(), Identity()
    up, down = Channel(a, b.public, 1, 0), Channel(b, a.public, 0, 1)
    aes = C.aead("aes-gcm", bytes(32))
    ct = aes.encrypt(bytes(12), payload, b"")
    rows += _rows("envelope seal", "4 MiB, AES-256-GCM", lambda: up.seal(payload, 1),
                  "envelope_seal", (payload, None), repeat, None, None, echo,
                  limit_s=best_time(lambda: aes.encrypt(bytes(12), payload, b""), repeat))
    # every open takes the next envelope of a fresh channel, sealed beforehand
    up = Channel(a, b.public, 1, 0)
    envelopes = iter([up.seal(payload, 1) for _ in range(repeat + 2)])
    rows += _rows("envelope open", "4 MiB, AES-256-GCM", lambda: down.open(next(envelopes), 1),
                  "envelope_open", (payload, None), repeat, None, None, echo,
                  limit_s=best_time(lambda: aes.decrypt(bytes(12), ct, b""), repeat))
    for n in sorted({max(8, int(100 * scale)), max(8, int(1000 * scale))}):
        model, data, part = secure_round_data(n)
        rows += _rows("secure round (SecAgg+)", f"{n} clients, MLP 64-64-10",
                      _round_sim(model, data, part, True), "secure_round", (model, data, part),
                      max(1, repeat // 5), None, None, echo)
        if n == max(8, int(100 * scale)):   # signed keys and survivors, at the smaller size
            rows += _rows("secure round (SecAgg+, signed)", f"{n} clients, MLP 64-64-10",
                          _round_sim(model, data, part, True, signed=True), "secure_round",
                          (model, data, part), max(1, repeat // 5), None, None, echo)
    return rows


def _torch_rows(batch, repeat, bw, peak, echo):
    """fastmb as a torch model's per-sample-gradient backend (``fastmb.torch``), beside
    Opacus and torch.func; no rows without torch."""
    try:
        import torch

        data = torch_mlp_data(batch=batch)
    except ImportError:
        return []
    tm, _, X, y = data
    out = torch.empty(len(X), tm.model.n_params)
    size = f"torch {'-'.join(map(str, tm.model.sizes))} batch {len(X)}"
    # the limit: writing the (n, P) result once
    rows = _rows("torch per-sample grads", size, lambda: tm.per_sample_grad(X, y, out=out),
                 "torch_per_sample", data, repeat, out.numel() * 4 + X.numel() * 4, bw, echo)
    # the norms need the forward pass and the input-side deltas, no weight gradients
    prods = [a * b for a, b in itertools.pairwise(tm.model.sizes)]
    rows += _rows("torch per-sample grad norms", size, lambda: tm.per_sample_grad_norm(X, y),
                  "torch_norms", data, repeat, None, bw, echo,
                  limit_s=2 * len(X) * (2 * sum(prods) - prods[0]) / peak)
    return rows


def _sklearn_rows(n, repeat, bw, echo):
    """``fastmb.sklearn.SGDClassifier`` beside scikit-learn's (five epochs of the default
    settings), dense and sparse; no rows without scikit-learn."""
    try:
        from ..adapters.sklearn import SGDClassifier
    except ImportError:
        return []
    _, _, X, y = logistic_data(n=n)
    X = X.astype(np.float64)
    rows = _rows("sklearn SGDClassifier.fit x5", f"n={n:,} d={X.shape[1]} f64",
                 lambda: SGDClassifier(**SGD_FIT).fit(X, y), "sklearn_sgd_fit", (X, y),
                 max(1, repeat // 3), 5 * X.nbytes, bw, echo)
    _, _, Xs, ys = sparse_logistic_data(n=n)
    nbytes = Xs.data.nbytes + Xs.indices.nbytes + Xs.indptr.nbytes
    rows += _rows("sklearn SGDClassifier.fit x5", f"n={n:,} d=2^18 CSR, {Xs.nnz // n} a row",
                  lambda: SGDClassifier(**SGD_FIT).fit(Xs, ys), "sklearn_sgd_fit", (Xs, ys),
                  max(1, repeat // 3), 5 * nbytes, bw, echo)
    from ..adapters.sklearn import MLPClassifier

    _, _, Xm, ym = mlp_data(sizes=(128, 64, 10), batch=max(64, n // 4))
    for solver, batch in (("sgd", "batch 32"), ("adam", "batch 200")):
        rows += _rows(f"sklearn MLPClassifier {solver} x1",
                      f"128-64-10 n={len(Xm):,} f32 {batch}",
                      _quiet_fit(lambda s=solver: MLPClassifier(**MLP_FIT[s]), Xm, ym),
                      "sklearn_mlp_fit", (Xm, ym, solver), max(1, repeat // 3), None, bw, echo)
    return rows


def _flower_rows(K, sizes, repeat, bw, echo):
    """fastmb's Flower FedAvg (both APIs) beside Flower's own on the same K replies; the
    limit reads every client's arrays once. No rows without Flower."""
    try:
        from ..adapters import flower as fm
        from ..adapters import flower_legacy as fl
    except ImportError:
        return []
    logging.getLogger("flwr").setLevel(logging.ERROR)  # one INFO line per call otherwise
    rows = []
    for P in sizes:
        data = flower_strategy_data(K, P)
        msgs, fits, n = data
        size = f"K={K} x P={n:,} f32"
        ours, legacy = fm.FedAvg(), fl.FedAvg()
        rows += _rows("Flower FedAvg, Message API", size,
                      lambda s=ours, m=msgs: s.aggregate_train(1, m), "flower_message", data,
                      max(1, repeat // 3), 4 * K * n, bw, echo)
        rows += _rows("Flower FedAvg, legacy API", size,
                      lambda s=legacy, f=fits: s.aggregate_fit(1, f, []), "flower_legacy", data,
                      max(1, repeat // 3), 4 * K * n, bw, echo)
    return rows


def mean_time(func, repeat=200, warmup=3):
    """Mean wall time of ``func()`` over ``repeat`` runs: a busy machine's cost is in its
    spikes, which a minimum hides."""
    for _ in range(warmup):
        func()
    t0 = time.perf_counter()
    for _ in range(repeat):
        func()
    return (time.perf_counter() - t0) / repeat


def busy_machine(repeat, echo):
    """Small calls with one core kept busy by another process, against the same calls on
    the quiet machine (the table's peer): a fedavg of 10 x 10,000 and one round of the
    default simulation's training (20 clients of the digits, MLP 64-64-10, 5 epochs of
    batches of 16). The busy loop is a process this benchmark starts and stops."""
    U, w = fedavg_data(K=10, P=10_000)
    try:
        d = fastmb.data.digits()
    except ImportError:  # without scikit-learn: data of the same shape
        d = fastmb.data.synthetic(1500, 64, 10, seed=0)
    part = fastmb.partition.dirichlet(d.y, 100, alpha=0.5, seed=0)
    model = fastmb.MLP([64, 64, 10])
    p0 = model.init(seed=0)
    clients = np.arange(20)
    calls = [
        ("fedavg, a core busy", "K=10 x P=10,000 f32", lambda: fastmb.fedavg(U, w),
         max(20, 40 * repeat)),
        ("train round, a core busy", "20 clients, MLP 64-64-10",
         lambda: fastmb.train_clients(model, p0, d.X, d.y, part.offsets, rows=part.rows,
                                      clients=clients, epochs=5, batch_size=16, lr=0.05),
         max(10, 10 * repeat)),
    ]
    quiet = [mean_time(f, n) for _, _, f, n in calls]
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        busy = [mean_time(f, n) for _, _, f, n in calls]
    finally:
        loop.kill()
        loop.wait()
    rows = []
    for (kernel, size, _, _), tq, tb in zip(calls, quiet, busy):
        rows.append(dict(kernel=kernel, size=size, fastmb_s=tb, peer="same call, quiet machine",
                         peer_s=tq, ratio=tq / tb, limit=None))
        echo(format_row(rows[-1]))
    return rows


def compile_times(timeout=900):
    """Cold compile (fresh cache) and warm start-up of the core kernels, in new processes."""
    code = ("import time; t0 = time.perf_counter()\n" + COMPILE_SNIPPET
            + "print(time.perf_counter() - t0)\n")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, timeout=timeout, check=True)
            out.append(float(res.stdout.strip().splitlines()[-1]))
    return {"cold_s": out[0], "warm_s": out[1]}


def _ms(t):
    return "-" if t is None else f"{t * 1e3:9.2f} ms"


HEADER = (f"{'kernel':<29} {'size':<30} {'fastmb':>12}  {'peer':<38} {'peer time':>12} "
          f"{'ratio':>7} {'of limit':>8}")


def format_row(r):
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:6.1f}x"
    limit = "-" if r["limit"] is None else f"{100 * r['limit']:6.0f}%"
    return (f"{r['kernel']:<29} {r['size']:<30} {_ms(r['fastmb_s']):>12}  {r['peer']:<38} "
            f"{_ms(r['peer_s']):>12} {ratio:>7} {limit:>8}")


def machine():
    """The machine and the versions a run's figures belong to."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{numba.get_num_threads()} Numba threads, Python {platform.python_version()}, "
            f"numba {numba.__version__}, numpy {np.__version__}")


def markdown(rows, extra, machine):
    """The run as a Markdown table (the README's), headed by the machine and its limits."""
    lines = [f"Measured on {machine}: STREAM triad {extra['bandwidth_GBps']:.1f} GB/s, NumPy's "
             f"GEMM {extra['gemm_GFLOPs']:.0f} (float32) and {extra['gemm64_GFLOPs']:.0f} "
             "(float64) GFLOP/s, in the same run.", "",
             "| kernel | size | fastmb | peer | peer time | ratio | of limit |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.1f}x"
        limit = "-" if r["limit"] is None else f"{100 * r['limit']:.0f}%"
        lines.append(f"| {r['kernel']} | {r['size']} | {_ms(r['fastmb_s']).strip()} | "
                     f"{r['peer']} | {_ms(r['peer_s']).strip()} | {ratio} | {limit} |")
    return "\n".join(lines) + "\n"
