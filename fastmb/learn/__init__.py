"""Learning on one device: loss, gradients and per-sample gradients (:mod:`.gradients`), local
mini-batch SGD of one client or many in one kernel call (:mod:`.training`)."""

from .gradients import (
                        decision_function,
                        evaluate,
                        grad,
                        loss,
                        loss_and_grad,
                        per_sample_grad,
                        per_sample_grad_norm,
                        predict,
                        predict_proba,
)
from .training import sgd, train_clients

__all__ = [
                        "decision_function",
                        "evaluate",
                        "grad",
                        "loss",
                        "loss_and_grad",
                        "per_sample_grad",
                        "per_sample_grad_norm",
                        "predict",
                        "predict_proba",
                        "sgd",
                        "train_clients",
]
