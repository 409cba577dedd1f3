"""asv benchmarks of DP-SGD and of aggregating compressed updates, beside their peers.

Data and peers come from ``fastmb.bench``; ``setup`` runs each call once, so
compilation never lands inside a timing. Peers that are not installed (torch,
opacus) are skipped by raising ``NotImplementedError`` in ``setup``.
"""

import fastmb
from fastmb.cli import bench as B

from .bench_core import _peer, _prepared

_DP_PEERS = dict(B.PEERS["dp_step"])


class DPSGDStep:
    """One DP-SGD step (clip 1, noise 1), MLP 128-256-256-10, batch 1024, float32."""

    params = [["fastmb", "fastmb non-private step", "PyTorch plain step",
               "Opacus ghost (fastest)", "Opacus hooks (default)"]]
    param_names = ["impl"]
    timeout = 300

    def setup(self, impl):
        model, p, X, y = B.mlp_data(sizes=(128, 256, 256, 10), batch=1024)
        if impl == "fastmb":
            self.call = _prepared(lambda: fastmb.sgd(model, p, X, y, batch_size=len(X),
                                                     shuffle=False, lr=0.01, clip_norm=1.0,
                                                     noise_multiplier=1.0))
        else:
            self.call = _peer(_DP_PEERS[impl], model, p, X, y)

    def time_step(self, impl):
        self.call()


class Int8Mean:
    """Weighted mean of K=64 int8 updates (block 256) of P=1,000,000 parameters."""

    params = [["fastmb", "numpy"]]
    param_names = ["impl"]
    timeout = 180

    def setup(self, impl):
        U, w = B.fedavg_data()
        qs = [fastmb.quantize_int8(u, 256) for u in U]
        if impl == "fastmb":
            self.call = _prepared(lambda: fastmb.mean_compressed(qs, w))
        else:
            self.call = _peer(B.numpy_int8_mean, [q.codes for q in qs],
                              [q.scales for q in qs], w, 256)

    def time_mean(self, impl):
        self.call()



class _TorchBackend:
    """fastmb as a torch model's per-sample-gradient backend (``fastmb.torch``), torch MLP
    128-256-256-10, batch 1024, float32."""

    param_names = ["impl"]
    timeout = 300
    peers = ""

    def setup(self, impl):
        try:
            data = B.torch_mlp_data()
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        tm, _, X, y = data
        if impl != "fastmb":
            self.call = _peer(dict(B.PEERS[self.peers])[impl], *data)
        elif self.peers == "torch_norms":
            self.call = _prepared(lambda: tm.per_sample_grad_norm(X, y))
        else:
            self.call = _prepared(lambda: tm.per_sample_grad(X, y))

    def time_call(self, impl):
        self.call()


class TorchPerSampleGrads(_TorchBackend):
    """Per-sample gradients of a torch model: fastmb, Opacus (hooks), torch.func."""

    params = [["fastmb"] + [label for label, _ in B.PEERS["torch_per_sample"]]]
    peers = "torch_per_sample"


class TorchNorms(_TorchBackend):
    """Per-sample gradient norms of a torch model: fastmb, Opacus' ghost clipping."""

    params = [["fastmb"] + [label for label, _ in B.PEERS["torch_norms"]]]
    peers = "torch_norms"
