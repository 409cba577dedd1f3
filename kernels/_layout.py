"""The kernels' view of a model: one small record (no Numba here, so that ``fastmb.models``
imports it without importing Numba).

A kernel that trains sub-models of different widths builds a :class:`Layout` per client
from stacked rows (``kernels/slicing.py``); the record built there is the same Numba type
as the one Python passes, so the linked helpers it calls are the ones already compiled.
"""

from typing import NamedTuple

import numpy as np


class Layout(NamedTuple):
    """A model as the kernels see it: the flat parameter layout and the codes of its functions.

    ``sizes`` (L+1,) units per layer (features first, outputs last); ``w_off`` (L,) offset of
    each layer's weights (row-major ``(n_in, n_out)``); ``b_off`` (L,) offset of each bias,
    -1 without one; ``u_off`` (L+1,) offset of each layer's units in a sample's workspace;
    ``act`` and ``loss`` the codes of ``fastmb.models.ACTIVATIONS`` and ``LOSSES``; ``hdelta`` the
    Huber threshold. The kernels unpack it (``kernels/_model.py``); it is one argument.
    """

    sizes: np.ndarray
    w_off: np.ndarray
    b_off: np.ndarray
    u_off: np.ndarray
    act: np.int64
    loss: np.int64
    hdelta: np.float64
