"""Arguments to and from the GPU: numba-cuda (imported on first use), launch sizes, device
arrays and their checks."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from ..kernels import cuda as KC

SHARED_LIMIT = 48 * 1024   # dynamic shared memory every CUDA device grants without opt-in
MAX_GRID_Y = 65535         # the y (and z) limit of a CUDA grid; kernels stride beyond it


class CUDAUnavailableError(RuntimeError):
    """``device="cuda"`` was asked for, but numba-cuda or a usable GPU is missing."""


_STATE = {}


def cuda():
    """The ``numba.cuda`` module, once it is known to work here."""
    mod = _STATE.get("cuda")
    if mod is not None:
        return mod
    try:
        from numba import cuda as mod
    except ImportError as exc:
        raise CUDAUnavailableError(
            f"device='cuda' needs numba-cuda, which is not installed ({exc}); install it with "
            "pip install 'fastmb[cuda]' (or 'fastmb[cuda12]' / 'fastmb[cuda13]' to get the CUDA "
            "compiler libraries from pip as well)") from None
    if not mod.is_available():
        reason = "no CUDA driver or GPU was found"
        try:
            mod.current_context()
        except Exception as exc:  # the driver's own explanation
            reason = str(exc).strip() or reason
        raise CUDAUnavailableError(
            f"device='cuda' needs a usable NVIDIA GPU: {reason}. Use device='cpu', or set "
            "NUMBA_ENABLE_CUDASIM=1 before importing fastmb to run on Numba's (slow) CUDA "
            "simulator")
    _STATE["cuda"] = mod
    return mod


def threads():
    """Threads per block for every launch (``fastmb.kernels.cuda.THREADS_PER_BLOCK``)."""
    T = KC.THREADS_PER_BLOCK
    if not (isinstance(T, int) and 1 <= T <= 1024 and T & (T - 1) == 0):
        raise ValueError(f"fastmb.kernels.cuda.THREADS_PER_BLOCK must be a power of two in "
                         f"[1, 1024], got {T!r}")
    return T


def blocks_for(n, T, cap=65535):
    """Blocks of T threads covering n items, at most ``cap`` (kernels stride beyond it)."""
    return max(1, min(cap, -(-n // T)))


# ----------------------------------------------------------------------------- arrays


is_device_array = V.on_gpu


def device_view(name, a, dtypes=None, ndim=None):
    """A numba view of the device array ``a`` (no copy), checked for dtype, rank, layout."""
    cu = cuda()
    d = a if getattr(a, "__cuda_ndarray__", False) else cu.as_cuda_array(a)
    dt = np.dtype(d.dtype)
    if dtypes is not None and dt not in [np.dtype(t) for t in dtypes]:
        want = " or ".join(str(np.dtype(t)) for t in dtypes)
        raise TypeError(f"{name} on the GPU must have dtype {want}, got {dt} (device arrays "
                        "are used in place, never converted)")
    if ndim is not None and len(d.shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(d.shape)}")
    if not d.is_c_contiguous():
        raise ValueError(f"{name} on the GPU must be C-contiguous")
    return d


def to_device(a):
    """A checked, contiguous NumPy array copied to the GPU."""
    return cuda().to_device(np.ascontiguousarray(a))


def empty(shape, dtype):
    return cuda().device_array(shape, dtype)


def zeros(shape, dtype):
    return cuda().to_device(np.zeros(shape, dtype))


def finish(out, on_device):
    """The result as the caller expects it: a device array, or NumPy."""
    return out if on_device else out.copy_to_host()


def summary(a):
    """``(min, max, number of NaN/Inf)`` of a 1-D device array, without copying it to the host."""
    from ..kernels.cuda import aggregation as KA

    T = threads()
    nb = blocks_for(a.shape[0], T, cap=256)
    n = nb * T
    lo, hi = empty(n, np.float64), empty(n, np.float64)
    cnt = empty(n, np.int64)
    KA.summary[nb, T](a, lo, hi, cnt)
    lo, hi = lo.copy_to_host(), hi.copy_to_host()
    return float(lo.min()), float(hi.max()), int(cnt.copy_to_host().sum())
