"""Differential privacy: central DP at the server and privacy accounting.

Local DP-SGD (per-sample clipping and noise on a client) is an option of
:func:`fastmb.sgd` and :func:`fastmb.train_clients` (``clip_norm=``,
``noise_multiplier=``). This module adds the server side:

* :class:`CentralDP` clips each client's update to a norm and adds Gaussian noise to
  the mean (DP-FedAvg, McMahan et al. 2018, "Learning differentially private recurrent
  language models"), with the clipping norm fixed or adapted each round to a quantile
  of the update norms (Andrew et al. 2021, "Differentially private learning with
  adaptive clipping").
* :func:`epsilon` and :func:`noise_multiplier_for` account for either, through Google's
  ``dp-accounting`` library (RDP or privacy-loss-distribution accountant); fastmb has no
  accountant of its own. Install it with ``pip install "fastmb[privacy]"``.
"""

from .accounting import epsilon, noise_multiplier_for
from .central import CentralDP, DPAggregate

__all__ = ["CentralDP", "DPAggregate", "epsilon", "noise_multiplier_for"]
