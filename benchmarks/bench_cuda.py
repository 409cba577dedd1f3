"""asv benchmarks of the CUDA kernels (``device="cuda"``), beside the CPU path of the same call.

Every class skips itself (``NotImplementedError`` from ``setup``, asv's signal) where
numba-cuda or a GPU is missing, and on numba-cuda's simulator, whose timings mean
nothing. Data are put on the GPU and every kernel compiled in ``setup``; each timing ends
with ``cuda.synchronize()``, so it measures the work and not just the launch.
``TimeCompile`` measures a kernel's compilation on purpose, in a fresh process.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np


def _gpu():
    """``numba.cuda`` when a real GPU is usable, else NotImplementedError (asv skips)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise NotImplementedError("the CUDA simulator gives no meaningful timings")
    try:
        from numba import cuda
    except ImportError:
        raise NotImplementedError("numba-cuda is not installed") from None
    if not cuda.is_available():
        raise NotImplementedError("no usable CUDA GPU")
    return cuda


class PerSampleLogistic:
    """Per-sample gradients of logistic regression: n x 256, written to a device array."""

    params = [[100_000, 1_000_000]]
    param_names = ["n"]

    def setup(self, n):
        import fastmb

        self.cuda = cuda = _gpu()
        rng = np.random.default_rng(0)
        self.model = fastmb.Linear(256, loss="logistic")
        self.X = cuda.to_device(rng.normal(size=(n, 256)).astype(np.float32))
        self.y = cuda.to_device(rng.integers(0, 2, n))
        self.p = cuda.to_device(np.zeros(257, np.float32))
        self.out = cuda.device_array((n, 257), np.float32)
        self.time_per_sample_grad(n)

    def time_per_sample_grad(self, n):
        import fastmb

        fastmb.per_sample_grad(self.model, self.p, self.X, self.y, out=self.out, device="cuda")
        self.cuda.synchronize()


class FedAvg:
    """FedAvg of K updates of P float32 coordinates on the device."""

    params = [[(64, 1_000_000), (256, 10_000_000)]]
    param_names = ["K_P"]

    def setup(self, K_P):
        self.cuda = cuda = _gpu()
        K, P = K_P
        rng = np.random.default_rng(0)
        self.U = cuda.to_device(rng.normal(size=(K, P)).astype(np.float32))
        self.w = rng.uniform(1, 100, K)
        self.time_fedavg(K_P)

    def time_fedavg(self, K_P):
        import fastmb

        fastmb.fedavg(self.U, self.w, device="cuda")
        self.cuda.synchronize()


class RobustRules:
    """Coordinate median and trimmed mean of 64 updates of 1,000,000 coordinates."""

    params = [["median", "trimmed_mean"]]
    param_names = ["rule"]

    def setup(self, rule):
        import fastmb

        self.cuda = cuda = _gpu()
        U = np.random.default_rng(0).normal(size=(64, 1_000_000)).astype(np.float32)
        self.U = cuda.to_device(U)
        self.f = fastmb.coordinate_median if rule == "median" else \
            (lambda U, device: fastmb.trimmed_mean(U, 0.1, device=device))
        self.time_rule(rule)

    def time_rule(self, rule):
        self.f(self.U, device="cuda")
        self.cuda.synchronize()


class TopK:
    """Top-1% with error feedback of 10,000,000 coordinates, residual on the device."""

    def setup(self):
        self.cuda = cuda = _gpu()
        rng = np.random.default_rng(0)
        self.u = cuda.to_device(rng.normal(size=10_000_000).astype(np.float32))
        self.r = cuda.to_device(np.zeros(10_000_000, np.float32))
        self.time_topk()

    def time_topk(self):
        import fastmb

        fastmb.topk(self.u, 100_000, residual=self.r, device="cuda")
        self.cuda.synchronize()


class TrainClients:
    """One round of local training, MLP 64-64-10, 50 rows a client, batches of 10: the GPU
    (one block per client) against the CPU path of the same call."""

    params = [["cuda", "cpu"], [100, 1000]]
    param_names = ["device", "clients"]
    timeout = 300

    def setup(self, device, clients):
        import fastmb

        self.cuda = cuda = _gpu()
        rng = np.random.default_rng(0)
        self.model = fastmb.MLP([64, 64, 10])
        X = rng.normal(size=(50 * clients, 64)).astype(np.float32)
        y = rng.integers(0, 10, 50 * clients)
        p = self.model.init()
        if device == "cuda":
            X, y, p = cuda.to_device(X), cuda.to_device(y), cuda.to_device(p)
        self.args = (self.model, p, X, y, np.arange(0, 50 * clients + 1, 50))
        self.time_round(device, clients)

    def time_round(self, device, clients):
        import fastmb

        fastmb.train_clients(*self.args, batch_size=10, lr=0.05, momentum=0.9, device=device)
        self.cuda.synchronize()


class TimeCompile:
    """Compilation of the per-sample gradient kernel in a fresh process with an empty Numba
    cache directory (the CPU checks it calls compile too, as for a first-time user)."""

    number = 1
    repeat = 2
    timeout = 300

    def setup(self):
        _gpu()

    def time_compile_per_sample_grad(self):
        code = ("import numpy as np, fastmb; m = fastmb.MLP([8, 8, 2]); "
                "fastmb.per_sample_grad(m, m.init(), np.ones((4, 8), np.float32), [0, 1, 0, 1], "
                "device='cuda')")
        with tempfile.TemporaryDirectory() as cache:
            subprocess.run([sys.executable, "-c", code], check=True,
                           env={**os.environ, "NUMBA_CACHE_DIR": cache})


class DepthSlice:
    """A depth slice's backward pass (the server's layers [1, 3) of an MLP 128-256-256-10,
    summed gradient and the cut's gradient) on the GPU beside the CPU kernel. NumPy in and
    out: the copies to and from the GPU are part of the timing, as a split-learning server
    receiving the activations from the network would pay them."""

    params = [["cuda", "cpu"], [1024, 8192]]
    param_names = ["device", "n"]

    def setup(self, device, n):
        if device == "cuda":
            _gpu()
        import fastmb

        rng = np.random.default_rng(0)
        self.model = fastmb.MLP([128, 256, 256, 10])
        self.p = self.model.init(seed=0)
        self.H = rng.normal(size=(n, 256)).astype(np.float32)
        self.G = rng.normal(size=(n, 10)).astype(np.float32)
        self.time_backward(device, n)

    def time_backward(self, device, n):
        from fastmb.slicing import backward

        backward(self.model, self.p, self.H, self.G, 1, device=device)
