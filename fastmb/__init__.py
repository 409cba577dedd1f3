"""fastmb: fast micro-batch learning at the edge.

Models are small immutable descriptions (:class:`Linear`, :class:`MLP`); parameters
are one flat array; every function takes ``(model, params, X, y)``. The hot loops
are Numba kernels in ``fastmb.kernels``, compiled on first use and cached on disk:
importing fastmb compiles nothing and does not even import Numba.
"""

from . import data, partition
from ._cuda import CUDAUnavailableError
from .aggregation import WeightedMean, fedavg
from .fedbuff import FedBuff
from .gradients import (decision_function, evaluate, grad, loss, loss_and_grad, per_sample_grad,
                        per_sample_grad_norm, predict, predict_proba)
from .compress import (QuantizedUpdate, SparseUpdate, mean_compressed, qsgd, quantize_int8, randk,
                       to_half, topk)
from .models import MLP, Linear
from .privacy import CentralDP, DPAggregate
from .robust import (RobustAggregate, bulyan, centered_clipping, coordinate_median,
                     geometric_median, krum, multi_krum, norm_bounded_mean, pairwise_sq_distances,
                     trimmed_mean)
from .server import FedAdagrad, FedAdam, FedAvgM, FedYogi, ServerOptimizer
from .simulation import Faults, Simulation
from .training import sgd, train_clients

__version__ = "0.1.0"

__all__ = [
    "Linear", "MLP", "loss", "grad", "loss_and_grad", "per_sample_grad", "per_sample_grad_norm",
    "predict", "predict_proba", "decision_function", "evaluate", "sgd", "train_clients", "fedavg",
    "WeightedMean", "RobustAggregate", "coordinate_median", "trimmed_mean", "krum", "multi_krum",
    "bulyan", "geometric_median", "centered_clipping", "norm_bounded_mean",
    "pairwise_sq_distances", "ServerOptimizer", "FedAvgM", "FedAdagrad", "FedAdam", "FedYogi",
    "SparseUpdate", "topk", "randk", "QuantizedUpdate", "quantize_int8", "qsgd", "to_half",
    "mean_compressed", "FedBuff", "CentralDP", "DPAggregate", "Simulation", "Faults", "data",
    "partition", "CUDAUnavailableError", "__version__",
]
