"""asv benchmarks of the core kernels, with their peers side by side.

Data and peers come from ``fastmb.bench``, so asv times exactly what ``fastmb bench``
times. Every ``setup`` makes the call once, so the JIT compile (or the on-disk cache
load) never lands inside a timing; ``CompileTime`` measures compilation on purpose,
in a fresh process with an empty cache. Peers that are not installed skip themselves
(``NotImplementedError``), as asv expects.
"""

import numpy as np

import fastmb
from fastmb.cli import bench as B


def _prepared(call):
    """Run ``call`` once (warm-up) and return it."""
    call()
    return call


def _peer(factory, *data):
    try:
        return _prepared(factory(*data))
    except ImportError as exc:
        raise NotImplementedError(str(exc)) from None


class _PerSampleGrad:
    """Per-sample gradients of ``data()``'s model, fastmb beside ``peers``."""

    params = [["fastmb", "numpy", "torch.func"]]
    param_names = ["impl"]

    def setup(self, impl):
        model, p, X, y = self.data()
        if impl == "fastmb":
            out = np.empty((len(X), model.n_params), np.float32)
            self.call = _prepared(lambda: fastmb.per_sample_grad(model, p, X, y, out=out))
        else:
            self.call = _peer(self.peers[impl], model, p, X, y)

    def time_per_sample_grad(self, impl):
        self.call()


class PerSampleGradLogistic(_PerSampleGrad):
    """Per-sample gradients of logistic regression, n=200,000 x d=128 float32."""

    params = [["fastmb", "numpy", "torch.func", "jax"]]
    data = staticmethod(B.logistic_data)
    peers = {"numpy": B.numpy_logistic_per_sample, "torch.func": B.torch_logistic_per_sample,
             "jax": B.jax_logistic_per_sample}


class SGDEpochLogistic:
    """One epoch of SGD on logistic regression, n=200,000 x d=128."""

    params = [["fastmb", "sklearn", "torch", "jax"]]
    param_names = ["impl"]
    peers = {"sklearn": B.sklearn_sgd_epoch, "torch": B.torch_sgd_epoch, "jax": B.jax_sgd_epoch}
    timeout = 180

    def setup(self, impl):
        model, p, X, y = B.logistic_data()
        if impl == "fastmb":
            p0 = model.init()
            self.call = _prepared(lambda: fastmb.sgd(model, p0, X, y, batch_size=32, lr=0.01))
        else:
            self.call = _peer(self.peers[impl], model, p, X, y)

    def time_epoch(self, impl):
        self.call()


class PerSampleGradMLP(_PerSampleGrad):
    """Per-sample gradients of an MLP 128-64-64-10, batch 4096."""

    data = staticmethod(B.mlp_data)
    peers = {"numpy": B.numpy_mlp_per_sample, "torch.func": B.torch_mlp_per_sample}


class PerSampleNormsMLP:
    """Per-sample gradient norms of the same MLP: ghost norms against materializing."""

    params = [["fastmb", "materialize"]]
    param_names = ["impl"]

    def setup(self, impl):
        model, p, X, y = B.mlp_data()
        if impl == "fastmb":
            self.call = _prepared(lambda: fastmb.per_sample_grad_norm(model, p, X, y))
        else:
            self.call = _peer(B.materialized_norms, model, p, X, y)

    def time_norms(self, impl):
        self.call()


class FedAvg:
    """Weighted mean of K client updates of P=1,000,000 float32."""

    params = [[16, 64], ["fastmb", "flower", "numpy"]]
    param_names = ["K", "impl"]
    peers = {"flower": B.flower_fedavg, "numpy": B.numpy_fedavg}

    def setup(self, K, impl):
        U, w = B.fedavg_data(K=K)
        if impl == "fastmb":
            self.call = _prepared(lambda: fastmb.fedavg(U, w))
        else:
            self.call = _peer(self.peers[impl], U, w)

    def time_aggregate(self, K, impl):
        self.call()


class StreamingMean:
    """WeightedMean.add of one P=1,000,000 float32 update."""

    def setup(self):
        U, _ = B.fedavg_data(K=1)
        self.u = U[0]
        self.wm = fastmb.WeightedMean(U.shape[1])
        self.wm.add(self.u, 2.0)

    def time_add(self):
        self.wm.add(self.u, 2.0)


class CompileTime:
    """First calls of the core kernels in a fresh process with an empty Numba cache."""

    timeout = 900
    number = 1
    repeat = 1

    def timeraw_cold_compile(self):
        return ("import os, tempfile\nos.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp()\n"
                + B.COMPILE_SNIPPET)

    def timeraw_import(self):
        return "import fastmb"


class SklearnSGDFit:
    """``fastmb.sklearn.SGDClassifier`` beside scikit-learn's: five epochs of the default
    settings on 200,000 rows, dense (128 features) and CSR (2^18, 50 stored a row)."""

    params = [["fastmb", "sklearn"], ["dense", "csr"]]
    param_names = ["impl", "X"]
    timeout = 300

    def setup(self, impl, kind):
        try:
            from fastmb.sklearn import SGDClassifier
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed") from None
        if kind == "dense":
            _, _, X, y = B.logistic_data()
            X = X.astype("float64")
        else:
            _, _, X, y = B.sparse_logistic_data()
        if impl == "fastmb":
            self.call = _prepared(lambda: SGDClassifier(**B.SGD_FIT).fit(X, y))
        else:
            self.call = _peer(B.sklearn_sgd_fit, X, y)

    def time_fit(self, impl, kind):
        self.call()


class SklearnMLPFit:
    """``fastmb.sklearn.MLPClassifier`` beside scikit-learn's: one epoch of an MLP
    128-64-10 on 50,000 rows, solver sgd (batch 32) and adam (batch 200)."""

    params = [["fastmb", "sklearn"], ["sgd", "adam"]]
    param_names = ["impl", "solver"]
    timeout = 300

    def setup(self, impl, solver):
        try:
            from fastmb.sklearn import MLPClassifier
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed") from None
        _, _, X, y = B.mlp_data(sizes=(128, 64, 10), batch=50_000)
        if impl == "fastmb":
            self.call = _prepared(B._quiet_fit(lambda: MLPClassifier(**B.MLP_FIT[solver]),
                                               X, y))
        else:
            self.call = _peer(B.sklearn_mlp_fit, X, y, solver)

    def time_fit(self, impl, solver):
        self.call()


class FlowerFedAvg:
    """``fastmb.flower.FedAvg`` (Message API) and ``fastmb.flower_legacy.FedAvg`` beside
    Flower's own strategies on the same 100 replies, at P = 85,614 and P = 1,001,000."""

    params = [["fastmb", "flower"], ["message", "legacy"], [85_000, 1_000_000]]
    param_names = ["impl", "api", "P"]
    timeout = 300

    def setup(self, impl, api, P):
        try:
            from fastmb.flower import FedAvg
            from fastmb.flower_legacy import FedAvg as LegacyFedAvg
        except ImportError:
            raise NotImplementedError("flwr is not installed") from None
        import logging

        logging.getLogger("flwr").setLevel(logging.ERROR)
        data = B.flower_strategy_data(100, P)
        msgs, fits, _ = data
        if impl == "flower":
            peer = B.flower_message_fedavg if api == "message" else B.flower_legacy_fedavg
            self.call = _peer(peer, *data)
        elif api == "message":
            strategy = FedAvg()
            self.call = _prepared(lambda: strategy.aggregate_train(1, msgs))
        else:
            legacy = LegacyFedAvg()
            self.call = _prepared(lambda: legacy.aggregate_fit(1, fits, []))

    def time_aggregate(self, impl, api, P):
        self.call()


class SplitEpoch:
    """One epoch of split learning (``fastmb.slicing.split_sgd``, cut after the first
    layer) beside the same epoch of ``fastmb.sgd`` unsplit: the cost of the cut."""

    params = [["split", "unsplit"]]
    param_names = ["impl"]

    def setup(self, impl):
        from fastmb.slicing import split_sgd

        model, p, X, y = B.mlp_data(sizes=(64, 64, 64, 10), batch=8192)
        if impl == "split":
            self.call = _prepared(lambda: split_sgd(model, p, X, y, 1, batch_size=32, lr=0.05))
        else:
            self.call = _prepared(B.unsplit_sgd_epoch(model, p, X, y, 1))

    def time_epoch(self, impl):
        self.call()


class SplitFedRound:
    """One SplitFed V1 round of 20 clients (cut after the first layer), in one kernel call
    and as parties exchanging messages, beside the same clients' ``train_clients`` and
    FedAvg (which V1 equals bit for bit)."""

    params = [["splitfed", "splitfed-parties", "fedavg"]]
    param_names = ["impl"]

    def setup(self, impl):
        import numpy as np

        from fastmb.slicing import splitfed

        model, p, X, y = B.mlp_data(sizes=(64, 64, 64, 10), batch=8192)
        off = np.linspace(0, len(X), 21).astype(np.int64)
        if impl.startswith("splitfed"):
            engine = "parties" if impl.endswith("parties") else "kernel"
            self.call = _prepared(lambda: splitfed(model, p, X, y, off, 1, batch_size=32,
                                                   lr=0.05, engine=engine))
        else:
            self.call = _prepared(B.fedavg_round(model, p, X, y, off, 1))

    def time_round(self, impl):
        self.call()


class HeteroRound:
    """A width-sliced round (20 clients at rates 1, 0.5, 0.25 as 1:2:2, HeteroFL) beside
    the same round with every client at full width."""

    params = [["hetero", "homogeneous"]]
    param_names = ["impl"]

    def setup(self, impl):
        import numpy as np

        model, p, X, y = B.mlp_data(sizes=(64, 64, 64, 10), batch=8192)
        off = np.linspace(0, len(X), 21).astype(np.int64)
        rates = np.resize([1.0, 0.5, 0.5, 0.25, 0.25], 20)
        peer = B.hetero_round if impl == "hetero" else B.homogeneous_round
        self.call = _prepared(peer(model, p, X, y, off, rates))

    def time_round(self, impl):
        self.call()


class CompactPredict:
    """Inference on a compact model (90% pruned, CSR with int8 codes) beside the dense
    float32 model's ``fastmb.predict``."""

    params = [["compact", "dense"]]
    param_names = ["impl"]

    def setup(self, impl):
        from fastmb.slicing import CompactModel, prune

        model, p, X, _ = B.mlp_data(sizes=(256, 256, 256, 10), batch=8192)
        q = prune(model, p, 0.9)
        cm = CompactModel.from_params(model, q, "csr+int8")
        self.call = _prepared(lambda: cm.predict(X)) if impl == "compact" else \
            _peer(B.dense_predict, model, q, X, cm)

    def time_predict(self, impl):
        self.call()


def _secure():
    try:
        import fastmb.secure as S
        from fastmb.secure import _crypto

        _crypto.require()
    except ImportError:
        raise NotImplementedError("cryptography is not installed") from None
    return S


class SecAggMask:
    """A client's SecAgg+ masking of P = 10**6 with 8 neighbours (quantize, then nine
    keystream masks added) beside Flower's SecAgg+ masking of the same update."""

    params = [["fastmb", "flower"]]
    param_names = ["impl"]

    def setup(self, impl):
        S = _secure()
        u, seeds = B.secagg_client_data(1_000_000)
        if impl == "flower":
            self.call = _peer(B.flower_secagg_mask, u, seeds)
            return
        plan = S.MaskPlan(0, seeds[0], tuple((i + 1, s, i % 2 == 0)
                                             for i, s in enumerate(seeds[1:])), "aes-ctr")
        fq = S.SecAggConfig().quantizer
        out = np.empty(len(u) + 1, np.uint32)
        self.call = _prepared(lambda: S.mask_update(plan, fq.quantize(u, 1, 5, out=out)))

    def time_mask(self, impl):
        self.call()


class SecAggUnmask:
    """The server's unmasking of a SecAgg+ round (N = 100, P = 10**6, 10 dropped) beside
    plain FedAvg of the same survivors' updates."""

    params = [["fastmb", "fedavg"]]
    param_names = ["impl"]
    timeout = 600

    def setup(self, impl):
        _secure()
        data = B.secagg_server_data(100, 1_000_000)
        server, responses = data[0], data[1]
        self.call = (_peer(B.plain_fedavg_survivors, *data) if impl == "fedavg"
                     else _prepared(lambda: server.finish(responses)))

    def time_unmask(self, impl):
        self.call()


class EnvelopeSeal:
    """Sealing 4 MiB in an authenticated envelope (AES-256-GCM) beside Fernet, the cipher
    Flower's SecAgg+ uses for its shares."""

    params = [["fastmb", "fernet"]]
    param_names = ["impl"]

    def setup(self, impl):
        S = _secure()
        payload = np.random.default_rng(0).bytes(4 << 20)
        if impl == "fernet":
            self.call = _peer(B.fernet_encrypt, payload, None)
            return
        a, b = S.Identity(), S.Identity()
        up = S.Channel(a, b.public, 1, 0)
        self.call = _prepared(lambda: up.seal(payload, 1))

    def time_seal(self, impl):
        self.call()


class SecureRound:
    """A simulated round of 100 clients with SecAgg+ (every client's key stages, masking,
    unmasking) beside the same round of plain FedAvg."""

    params = [["secagg+", "plain"]]
    param_names = ["impl"]
    timeout = 600

    def setup(self, impl):
        _secure()
        model, data, part = B.secure_round_data(100)
        self.call = _prepared(B._round_sim(model, data, part, impl == "secagg+"))

    def time_round(self, impl):
        self.call()
