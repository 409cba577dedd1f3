"""Distances of updates to a point and the clip factors that bound them: shared by the norm-based
robust rules (norm bounding, centered clipping, the geometric median) and central DP."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from ..kernels import robust as KR


def row_distances(U, z):
    """``|U[k] - z|`` for every row k, in float64.

    Squares of float64 coordinates beyond about 1e154 overflow; those rows (never a
    float32 one) are measured again with the largest difference factored out, as LAPACK's
    ``dnrm2`` does, so a huge update gets its true norm rather than Inf."""
    out = np.empty(U.shape[0], np.float64)
    KR.row_sqdist(U, z, out)
    out = np.sqrt(out)
    for k in np.flatnonzero(~np.isfinite(out)):
        with np.errstate(over="ignore", invalid="ignore"):
            d = U[k].astype(np.float64) - z
            s = np.abs(d).max()
            out[k] = s * np.sqrt(np.sum((d / s) ** 2)) if np.isfinite(s) else np.inf
    return V.finite_result(out, "a distance between updates")


def clip_factors(dist, radius):
    """``min(1, radius / dist)`` per client (a zero distance needs no clipping)."""
    out = np.ones(dist.shape)
    big = dist > radius
    out[big] = radius / dist[big]
    return out
