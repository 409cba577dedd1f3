"""CUDA kernels (numba-cuda), mirroring the CPU kernels of ``fastmb.kernels``.

Imported only when a caller asks for ``device="cuda"``: importing fastmb, or any CPU
kernel, never imports ``numba.cuda``. The public wrappers live in ``fastmb._cuda``.

``THREADS_PER_BLOCK`` is read at every launch (not at compile time), so tests set it
to a few threads to make the multi-block and multi-lane paths run on the simulator.
It must be a power of two.
"""

THREADS_PER_BLOCK = 128
