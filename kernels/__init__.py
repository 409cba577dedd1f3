"""Numba kernels behind the fastmb API (installed as ``fastmb.kernels``).

Kernels take plain contiguous arrays and write into preallocated outputs; they do
no validation. Import a kernel module only when its kernel is about to run, so
that ``import fastmb`` never pays for Numba.
"""
