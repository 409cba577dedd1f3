"""The one place where fastmb's Numba options are decided.

* ``cache=True``: compiled machine code is written next to the kernel modules and
  reused by every later process, so only the very first call ever compiles.
* fastmath without ``nnan``/``ninf``: reassociation and contraction let reductions
  vectorize, while NaN and Inf keep their IEEE meaning. Kernels rely on that to
  detect non-finite inputs for free (a NaN in a row of X makes that row's first
  pre-activation NaN), so those two flags must never be added here.
* No eager signatures: each kernel compiles lazily for the dtype actually used
  (float32 or float64), which halves cold start for the common float32 user;
  the on-disk cache makes the second process start warm either way.

Nothing here touches Numba's global configuration.
"""

import numba

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def jit(func=None, *, parallel=False, inline="never"):
    """``numba.njit`` with fastmb's options; usable as ``@jit`` or ``@jit(parallel=True)``."""

    def wrap(f):
        return numba.njit(
            f,
            cache=True,
            fastmath=set(FASTMATH),
            parallel=parallel,
            inline=inline,
            error_model="numpy",
            nogil=True,
        )

    if func is None:
        return wrap
    return wrap(func)
