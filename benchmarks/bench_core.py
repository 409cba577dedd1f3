"""asv benchmarks of the core kernels, with their peers side by side.

Every ``setup`` calls the kernel once, so the JIT compile (or the on-disk cache load)
never lands inside a timing; ``CompileTime`` measures compilation on purpose, in a
fresh process with an empty cache. Peers that are not installed skip themselves
(``NotImplementedError``), as asv expects.
"""

import warnings

import numpy as np

import fastmb
from fastmb.bench import _numpy_mlp_per_sample, flower_aggregate_copy


def _require(name):
    try:
        return __import__(name)
    except ImportError:
        raise NotImplementedError(f"{name} is not installed") from None


class PerSampleGradLogistic:
    """Per-sample gradients of logistic regression, n=200,000 x d=128 float32."""

    params = [["fastmb", "numpy", "torch.func"]]
    param_names = ["impl"]

    def setup(self, impl):
        rng = np.random.default_rng(0)
        n, d = 200_000, 128
        self.X = rng.normal(size=(n, d)).astype(np.float32)
        self.y = (rng.random(n) < 0.5).astype(np.int64)
        self.model = fastmb.Linear(d, loss="logistic")
        self.p = (0.1 * rng.normal(size=d + 1)).astype(np.float32)
        self.out = np.empty((n, d + 1), np.float32)
        self.out_np = np.empty((n, d), np.float32)
        if impl == "torch.func":
            torch = _require("torch")
            from torch.func import grad, vmap

            Xt, yt = torch.from_numpy(self.X), torch.from_numpy(self.y.astype(np.float32))
            w, b = torch.from_numpy(self.p[:d].copy()), torch.tensor(float(self.p[d]))
            f = vmap(grad(lambda w_, b_, x, t: torch.nn.functional.binary_cross_entropy_with_logits(
                x @ w_ + b_, t), argnums=(0, 1)), in_dims=(None, None, 0, 0))
            self.run = lambda: f(w, b, Xt, yt)
        elif impl == "numpy":
            w, b, yf = self.p[:d], self.p[d], self.y.astype(np.float32)
            self.run = lambda: np.multiply((1 / (1 + np.exp(-(self.X @ w + b))) - yf)[:, None],
                                           self.X, out=self.out_np)
        else:
            self.run = lambda: fastmb.per_sample_grad(self.model, self.p, self.X, self.y,
                                                      out=self.out)
        self.run()

    def time_per_sample_grad(self, impl):
        self.run()


class SGDEpochLogistic:
    """One epoch of SGD on logistic regression, n=200,000 x d=128."""

    params = [["fastmb", "sklearn"]]
    param_names = ["impl"]
    timeout = 120

    def setup(self, impl):
        rng = np.random.default_rng(1)
        n, d = 200_000, 128
        self.X = rng.normal(size=(n, d)).astype(np.float32)
        self.y = (self.X @ rng.normal(size=d) > 0).astype(np.int64)
        self.model = fastmb.Linear(d, loss="logistic")
        if impl == "sklearn":
            _require("sklearn")
            self.X64 = self.X.astype(np.float64)
        else:
            self.time_epoch(impl)

    def time_epoch(self, impl):
        if impl == "sklearn":
            from sklearn.linear_model import SGDClassifier

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                SGDClassifier(loss="log_loss", max_iter=1, tol=None, learning_rate="constant",
                              eta0=0.01, alpha=0.0, random_state=0).fit(self.X64, self.y)
        else:
            fastmb.sgd(self.model, self.model.init(), self.X, self.y, batch_size=32, lr=0.01)


class PerSampleGradMLP:
    """Per-sample gradients and norms of an MLP 128-64-64-10, batch 4096."""

    params = [["fastmb", "numpy"]]
    param_names = ["impl"]

    def setup(self, impl):
        rng = np.random.default_rng(2)
        self.model = fastmb.MLP([128, 64, 64, 10])
        self.p = self.model.init(seed=0)
        self.X = rng.normal(size=(4096, 128)).astype(np.float32)
        self.y = rng.integers(0, 10, 4096)
        self.out = np.empty((4096, self.model.n_params), np.float32)
        self.Ws = [W for W, _ in self.model.layers(self.p)]
        self.bs = [b for _, b in self.model.layers(self.p)]
        self.time_per_sample_grad(impl)
        self.time_norms(impl)

    def time_per_sample_grad(self, impl):
        if impl == "numpy":
            _numpy_mlp_per_sample(self.Ws, self.bs, self.X, self.y)
        else:
            fastmb.per_sample_grad(self.model, self.p, self.X, self.y, out=self.out)

    def time_norms(self, impl):
        if impl == "numpy":  # the materializing way
            np.linalg.norm(fastmb.per_sample_grad(self.model, self.p, self.X, self.y,
                                                  out=self.out), axis=1)
        else:
            fastmb.per_sample_grad_norm(self.model, self.p, self.X, self.y)


class FedAvg:
    """Weighted mean of K client updates of P=1,000,000 float32."""

    params = [[16, 64], ["fastmb", "flower", "numpy"]]
    param_names = ["K", "impl"]

    def setup(self, K, impl):
        rng = np.random.default_rng(3)
        self.U = rng.normal(size=(K, 1_000_000)).astype(np.float32)
        self.w = rng.integers(10, 1000, K).astype(np.float64)
        self.results = [([u], int(wk)) for u, wk in zip(self.U, self.w)]
        self.time_aggregate(K, impl)

    def time_aggregate(self, K, impl):
        if impl == "flower":
            flower_aggregate_copy(self.results)
        elif impl == "numpy":
            (self.w.astype(np.float32) @ self.U) / self.w.sum()
        else:
            fastmb.fedavg(self.U, self.w)


class StreamingMean:
    """WeightedMean.add of one P=1,000,000 float32 update."""

    def setup(self):
        self.u = np.random.default_rng(4).normal(size=1_000_000).astype(np.float32)
        self.wm = fastmb.WeightedMean(1_000_000)
        self.wm.add(self.u, 2.0)

    def time_add(self):
        self.wm.add(self.u, 2.0)


class CompileTime:
    """First call of the core kernels in a fresh process with an empty Numba cache."""

    timeout = 600
    number = 1
    repeat = 1

    def timeraw_cold_compile(self):
        return """
import os, tempfile
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp()
import numpy as np, fastmb
X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
y = (X[:, 0] > 0).astype(int)
m = fastmb.Linear(8, loss="logistic")
p = m.init()
fastmb.grad(m, p, X, y); fastmb.per_sample_grad(m, p, X, y); fastmb.sgd(m, p, X, y)
fastmb.fedavg(np.ones((3, 5), np.float32))
"""

    def timeraw_import(self):
        return "import fastmb"
