"""Server-side aggregation: the (streaming, mergeable) weighted mean (:mod:`.mean`), the
Byzantine-robust rules (:mod:`.robust`), the server optimizers (:mod:`.server`), asynchronous
buffered aggregation (:mod:`.fedbuff`), and the one registry of rules (:mod:`.rules`)."""

from .fedbuff import FedBuff
from .mean import WeightedMean, fedavg
from .robust import (
                     RobustAggregate,
                     TooFewClients,
                     bulyan,
                     centered_clipping,
                     coordinate_median,
                     geometric_median,
                     krum,
                     multi_krum,
                     norm_bounded_mean,
                     pairwise_sq_distances,
                     trimmed_mean,
)
from .server import FedAdagrad, FedAdam, FedAvgM, FedYogi, ServerOptimizer

__all__ = [
                     "FedAdagrad",
                     "FedAdam",
                     "FedAvgM",
                     "FedBuff",
                     "FedYogi",
                     "RobustAggregate",
                     "ServerOptimizer",
                     "TooFewClients",
                     "WeightedMean",
                     "bulyan",
                     "centered_clipping",
                     "coordinate_median",
                     "fedavg",
                     "geometric_median",
                     "krum",
                     "multi_krum",
                     "norm_bounded_mean",
                     "pairwise_sq_distances",
                     "trimmed_mean",
]
