"""Security: secure aggregation that survives dropouts, authenticated envelopes, and
encrypted model files, on the ``cryptography`` package (the ``secure`` extra).

* :func:`secure_aggregate`, :class:`SecAggClient`, :class:`SecAggServer`,
  :class:`SecAggConfig`: SecAgg and SecAgg+ (:mod:`.secagg`).
* :class:`FieldQuantizer`, :func:`add_mask`: updates in a finite group, keystream masks.
* :class:`Identity`, :class:`Channel`: authenticated envelopes (:mod:`.envelope`).
* :class:`ModelKey`, :func:`save_encrypted_model`, :func:`load_encrypted_model`,
  :func:`rotate_model_key`: models encrypted at rest (:mod:`.model_file`).

Examples
--------
>>> import numpy as np
>>> from fastmb.secure import secure_aggregate
>>> U = np.full((5, 3), 0.25)
>>> secure_aggregate(U).mean.round(3).tolist()
[0.25, 0.25, 0.25]
"""

from .envelope import Channel, EnvelopeError, Identity
from .field import FieldQuantizer, add_mask, mask_words
from .model_file import (
    ModelKey,
    decrypt_model,
    encrypt_model,
    load_encrypted_model,
    rotate_model_key,
    save_encrypted_model,
)
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

__all__ = ["Channel", "EnvelopeError", "FieldQuantizer", "Identity", "MaskPlan", "ModelKey",
           "PublicKeys", "RoundResult", "SecAggClient", "SecAggConfig", "SecAggError",
           "SecAggServer", "add_mask", "decrypt_model", "encrypt_model", "load_encrypted_model",
           "mask_update", "mask_words", "neighbour_graph", "rotate_model_key",
           "save_encrypted_model", "secure_aggregate"]
