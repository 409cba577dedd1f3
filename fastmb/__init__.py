"""fastmb: fast micro-batch learning at the edge.

Models are small immutable descriptions (:class:`Linear`, :class:`MLP`); parameters
are one flat array; every function takes ``(model, params, X, y)``. The hot loops
are Numba kernels in ``fastmb.kernels``, compiled on first use and cached on disk.

The package is layered (see the README's "Architecture"): :mod:`fastmb.learn` (gradients,
local training), :mod:`fastmb.compress`, :mod:`fastmb.aggregate` (means, robust rules,
server optimizers, FedBuff), :mod:`fastmb.privacy`, :mod:`fastmb.federation` (data,
partitions, rounds, the simulation), :mod:`fastmb.adapters`, :mod:`fastmb.cli`. Every
public name is also here, imported on first use (PEP 562): ``import fastmb`` loads
neither Numba nor any subpackage until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_NAMES = {
    **dict.fromkeys(["Linear", "MLP"], "models"),
    **dict.fromkeys(["loss", "grad", "loss_and_grad", "per_sample_grad", "per_sample_grad_norm",
                     "predict", "predict_proba", "decision_function", "evaluate", "sgd",
                     "train_clients"], "learn"),
    **dict.fromkeys(["fedavg", "WeightedMean", "RobustAggregate", "coordinate_median",
                     "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
                     "centered_clipping", "norm_bounded_mean", "pairwise_sq_distances",
                     "ServerOptimizer", "FedAvgM", "FedAdagrad", "FedAdam", "FedYogi",
                     "FedBuff"], "aggregate"),
    **dict.fromkeys(["SparseUpdate", "topk", "randk", "QuantizedUpdate", "quantize_int8",
                     "qsgd", "to_half", "mean_compressed"], "compress"),
    **dict.fromkeys(["CentralDP", "DPAggregate"], "privacy"),
    **dict.fromkeys(["Simulation", "Faults"], "federation"),
    "CUDAUnavailableError": "_cuda",
}
#: Modules reachable as attributes (``fastmb.data.digits()``), under these names.
_MODULES = {"data": "federation.data", "partition": "federation.partition",
            "distributed": "adapters.dask", "learn": "learn", "compress": "compress",
            "aggregate": "aggregate", "privacy": "privacy", "secure": "secure",
            "slicing": "slicing",
            "federation": "federation",
            "adapters": "adapters", "cli": "cli", "models": "models", "kernels": "kernels"}

__all__ = [
    "MLP",
    "CUDAUnavailableError",
    "CentralDP",
    "DPAggregate",
    "Faults",
    "FedAdagrad",
    "FedAdam",
    "FedAvgM",
    "FedBuff",
    "FedYogi",
    "Linear",
    "QuantizedUpdate",
    "RobustAggregate",
    "ServerOptimizer",
    "Simulation",
    "SparseUpdate",
    "WeightedMean",
    "__version__",
    "bulyan",
    "centered_clipping",
    "coordinate_median",
    "data",
    "decision_function",
    "evaluate",
    "fedavg",
    "geometric_median",
    "grad",
    "krum",
    "loss",
    "loss_and_grad",
    "mean_compressed",
    "multi_krum",
    "norm_bounded_mean",
    "pairwise_sq_distances",
    "partition",
    "per_sample_grad",
    "per_sample_grad_norm",
    "predict",
    "predict_proba",
    "qsgd",
    "quantize_int8",
    "randk",
    "sgd",
    "to_half",
    "topk",
    "train_clients",
    "trimmed_mean",
]
assert set(__all__) == {*_NAMES, "data", "partition", "__version__"}


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{_MODULES[name]}", __name__)
    else:
        raise AttributeError(f"module 'fastmb' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_MODULES))


if TYPE_CHECKING:  # the same names, visible to type checkers and IDEs
    from ._cuda import CUDAUnavailableError
    from .aggregate import (
        FedAdagrad,
        FedAdam,
        FedAvgM,
        FedBuff,
        FedYogi,
        RobustAggregate,
        ServerOptimizer,
        WeightedMean,
        bulyan,
        centered_clipping,
        coordinate_median,
        fedavg,
        geometric_median,
        krum,
        multi_krum,
        norm_bounded_mean,
        pairwise_sq_distances,
        trimmed_mean,
    )
    from .compress import (
        QuantizedUpdate,
        SparseUpdate,
        mean_compressed,
        qsgd,
        quantize_int8,
        randk,
        to_half,
        topk,
    )
    from .federation import Faults, Simulation, data, partition
    from .learn import (
        decision_function,
        evaluate,
        grad,
        loss,
        loss_and_grad,
        per_sample_grad,
        per_sample_grad_norm,
        predict,
        predict_proba,
        sgd,
        train_clients,
    )
    from .models import MLP, Linear
    from .privacy import CentralDP, DPAggregate
