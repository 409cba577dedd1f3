"""The options of local training, checked once, as one frozen object.

:class:`TrainOptions` holds every option of :func:`fastmb.sgd` and
:func:`fastmb.train_clients` (the learning rate, its schedule, momentum, the weight decay,
the proximal term, shuffling and its seed, DP-SGD's clipping and noise, the optimizer: SGD
or Adam). It is checked when
built. :meth:`TrainOptions.record` turns it into the small typed record the training kernels
take (:class:`TrainRecord`, a NamedTuple of scalars).

Adding an option touches this module (a field, its check, the record's field), the kernel
that uses it (``kernels/training.py``, by the record's field name), the naive reference
(``tests/naive.py``), and the signatures of :func:`fastmb.sgd` and
:func:`fastmb.train_clients` that document it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from .. import _validation as V
from ..kernels import training as KT

SCHEDULES = {"constant": 0, "invscaling": 1, "cosine": 2}
OPTIMIZERS = ("sgd", "adam")
# From this batch size on, a mini-batch's gradient is computed with matrix products, one
# per layer and pass (BLAS), instead of sample by sample; a one-output linear model keeps
# its dedicated per-sample loop. Measured on a 2-core AVX2 machine: at batch 8 the
# batched path is 1.5x faster for MLP([16, 8, 2]) and [128, 256, 256, 10], at batch 4
# it is slower for the larger one (BLAS call overhead on 4-row products).
BATCHED_MIN_BATCH = 8
# Steps, epochs and batch sizes stay below 2**62 so that no product or sum of them in the
# kernels (epochs * batches per epoch, rows + batch - 1) can wrap around int64.
MAX_STEPS = 2**62


class TrainRecord(NamedTuple):
    """The options as the training kernels take them: one typed record of scalars.

    ``step0`` shifts the step count (the schedule's and Adam's ``t``) of a training that
    continues an earlier one (:class:`fastmb.learn.training.EpochTrainer`).
    ``lr_schedule`` is the code of :data:`SCHEDULES`; ``path`` is how a mini-batch's gradient
    is computed, one of ``kernels.training.PATH_*`` (sample by sample, the one-output linear
    loop, matrix products: ``kernels/_layers.py``, or those with DP-SGD's clipping and
    noise), which picks the kernel; ``clip`` is ``inf`` and ``noise_std`` 0 without DP-SGD.
    """

    batch: int
    lr_schedule: int
    shuffle: bool
    lr: float
    power_t: float
    momentum: float
    weight_decay: float
    prox_mu: float
    path: int
    clip: float
    noise_std: float
    nesterov: bool
    l2: float
    adam: bool
    beta1: float
    beta2: float
    eps: float
    step0: int = 0


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Every option of local training, checked (each raises naming itself).

    The parameters and their meaning are those of :func:`fastmb.sgd`.

    Examples
    --------
    >>> import fastmb
    >>> from fastmb.learn.options import TrainOptions
    >>> from fastmb.kernels.training import PATH_BATCHED
    >>> opts = TrainOptions(batch_size=16, lr=0.1, momentum=0.9, schedule="cosine")
    >>> opts.record(fastmb.MLP([4, 8, 3])).path == PATH_BATCHED
    True
    >>> TrainOptions(lr=0)
    Traceback (most recent call last):
    ...
    ValueError: lr must be > 0, got 0.0
    """

    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    shuffle: bool = True
    seed: int = 0
    schedule: str = "constant"
    power_t: float = 0.5
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    optimizer: str = "sgd"
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    nesterov: bool = False
    l2: float = 0.0

    def __post_init__(self):
        if not isinstance(self.schedule, str) or self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got "
                             f"{self.schedule!r}")
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        if isinstance(self.betas, (str, bytes)) or not hasattr(self.betas, "__len__") \
                or len(self.betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        for flag in ("shuffle", "nesterov"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise TypeError(f"{flag} must be a bool, got "
                                f"{type(getattr(self, flag)).__name__}")
        checked = dict(
            batch_size=V.check_number("batch_size", self.batch_size, low=1, high=MAX_STEPS,
                                      integer=True),
            shuffle=bool(self.shuffle),
            nesterov=bool(self.nesterov),
            l2=V.check_number("l2", self.l2, low=0),
            lr=V.check_number("lr", self.lr, low=0, low_open=True),
            power_t=V.check_number("power_t", self.power_t, low=0),
            momentum=V.check_number("momentum", self.momentum, low=0, high=1),
            weight_decay=V.check_number("weight_decay", self.weight_decay, low=0),
            prox_mu=V.check_number("prox_mu", self.prox_mu, low=0),
            seed=V.check_number("seed", self.seed, low=0, high=2**64 - 1, integer=True),
            noise_multiplier=V.check_number("noise_multiplier", self.noise_multiplier, low=0),
            betas=(V.check_number("betas[0]", self.betas[0], low=0, high=1),
                   V.check_number("betas[1]", self.betas[1], low=0, high=1)),
            eps=V.check_number("eps", self.eps, low=0, low_open=True),
        )
        if max(checked["betas"]) >= 1:
            raise ValueError(f"betas must each be in [0, 1), got {checked['betas']}")
        if self.optimizer == "adam" and checked["momentum"] != 0.0:
            raise ValueError("momentum is an option of optimizer='sgd'; Adam's first moment "
                             "is betas[0]")
        if checked["nesterov"] and (checked["momentum"] == 0.0 or self.optimizer != "sgd"):
            raise ValueError("nesterov=True needs optimizer='sgd' with momentum > 0")
        if self.clip_norm is None:
            if checked["noise_multiplier"] > 0:
                raise ValueError("noise_multiplier > 0 needs clip_norm: the noise is calibrated "
                                 "to the clipping norm (standard deviation noise_multiplier * "
                                 "clip_norm)")
        else:
            checked["clip_norm"] = V.check_number("clip_norm", self.clip_norm, low=0,
                                                  low_open=True)
        for name, value in checked.items():  # plain Python numbers from here on
            object.__setattr__(self, name, value)

    @property
    def dp(self):
        """True when DP-SGD is on (a clipping norm is set)."""
        return self.clip_norm is not None

    def check_sample_weight(self, sample_weight):
        """Sample weights and DP-SGD exclude each other: weights change each sample's
        sensitivity, which the clipping bounds."""
        if sample_weight is not None and self.dp:
            raise ValueError("sample_weight cannot be combined with clip_norm: weights change "
                             "each sample's sensitivity, which DP-SGD's clipping bounds")

    def record(self, model):
        """The kernels' :class:`TrainRecord` for ``model`` (which picks the path)."""
        clip = np.inf if self.clip_norm is None else float(self.clip_norm)
        one_output_linear = len(model.sizes) == 2 and model.sizes[1] == 1
        if clip < np.inf:
            path = KT.PATH_DP
        elif not one_output_linear and self.batch_size >= BATCHED_MIN_BATCH:
            path = KT.PATH_BATCHED
        elif one_output_linear:
            path = KT.PATH_LINEAR1
        else:
            path = KT.PATH_SAMPLE
        return TrainRecord(self.batch_size, SCHEDULES[self.schedule], self.shuffle, self.lr,
                           self.power_t, self.momentum, self.weight_decay, self.prox_mu,
                           path, clip, self.noise_multiplier * (0.0 if clip == np.inf else clip),
                           self.nesterov, self.l2, self.optimizer == "adam", self.betas[0],
                           self.betas[1], self.eps)

    def state_size(self, P):
        """The optimizer's state a client carries between steps: momentum ``(P,)``, Adam's
        two moments ``(2P,)``, or nothing."""
        if self.optimizer == "adam":
            return 2 * P
        return P if self.momentum != 0.0 else 0
