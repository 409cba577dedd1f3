"""fastmb for Flower's legacy strategy API (``flwr.server.strategy``): see
:mod:`fastmb.adapters.flower_legacy` (``pip install "fastmb[flower]"``)."""

from .adapters.flower_legacy import (
    RULES,
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
)

__all__ = ["RULES", "Bulyan", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedMedian",
           "FedProx", "FedTrimmedAvg", "FedYogi", "Krum"]
