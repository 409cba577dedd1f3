"""fastmb for Flower users: see :mod:`fastmb.adapters.flower` (``pip install "fastmb[flower]"``).

Message API strategies (``flwr.serverapp.strategy``) and the client; the legacy strategies
(``flwr.server.strategy``) are in :mod:`fastmb.flower_legacy`.
"""

from .adapters.flower import (
    RULES,
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedRule,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    NumPyClient,
    array_record,
    arrays_of,
    client_app,
    initial_arrays,
    model_arrays,
    params_from_arrays,
)

__all__ = ["RULES", "Bulyan", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedMedian",
           "FedProx", "FedRule", "FedTrimmedAvg", "FedYogi", "Krum", "MultiKrum", "NumPyClient",
           "array_record", "arrays_of", "client_app", "initial_arrays", "model_arrays",
           "params_from_arrays"]
