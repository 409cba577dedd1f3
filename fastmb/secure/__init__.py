"""Security: secure aggregation that survives dropouts, authenticated envelopes, and
encrypted model files, on the ``cryptography`` package (the ``secure`` extra).

* :func:`secure_aggregate`, :class:`SecAggClient`, :class:`SecAggServer`,
  :class:`SecAggConfig`: SecAgg and SecAgg+ (:mod:`.secagg`).
* :class:`FieldQuantizer`, :func:`add_mask`: updates in a finite group, keystream masks.

Examples
--------
>>> import numpy as np
>>> from fastmb.secure import secure_aggregate
>>> U = np.full((5, 3), 0.25)
>>> secure_aggregate(U).mean.round(3).tolist()
[0.25, 0.25, 0.25]
"""

from .field import FieldQuantizer, add_mask, mask_words
from .secagg import (
    MaskPlan,
    PublicKeys,
    RoundResult,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    mask_update,
    neighbour_graph,
    secure_aggregate,
)

__all__ = ["FieldQuantizer", "MaskPlan", "PublicKeys", "RoundResult", "SecAggClient",
           "SecAggConfig", "SecAggError", "SecAggServer", "add_mask", "mask_update",
           "mask_words", "neighbour_graph", "secure_aggregate"]
