"""Picks and feeds the backend of a call: ``device="cpu"`` (the Numba CPU kernels, run by
the API modules themselves) or ``device="cuda"`` (the host code of :mod:`fastmb._cuda`,
whose numba-cuda import waits until a GPU path is asked for)."""

from __future__ import annotations

from . import _cuda

DEVICES = ("cpu", "cuda")


def check_device(device):
    """``"cpu"`` or ``"cuda"``."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device


def gpu(device):
    """:mod:`fastmb._cuda` (the CUDA paths) when ``device`` is ``"cuda"``, None for ``"cpu"``."""
    if check_device(device) == "cuda":
        _cuda.cuda()  # numba-cuda and a GPU (or the simulator), or a clear error
        return _cuda
    return None
