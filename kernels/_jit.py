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
* A parallel kernel (``parallel=True``) is a :class:`Parallel`: the same source compiled
  twice, with ``prange`` as threads and as a plain loop, and each call picks one by the
  size of its arrays. Small calls (most of a simulation's rounds: a test set of a few
  hundred rows, twenty updates of a few thousand parameters) run serially. On a busy
  machine, every parallel region waits for OpenMP workers that the other load keeps off
  the cores, and afterwards those workers spin, taking a core from what runs next (see
  ``PARALLEL_MIN_SIZE`` for the figures). Serial calls also compile faster
  and only the variant a program uses is ever compiled. Results do not depend on the
  number of threads: every kernel splits its work into tasks by the problem's size only
  and merges them in task order, and the variant is picked by size only. The two
  variants agree bit for bit on every public call compared, except where LLVM fuses a
  multiply-add differently in the vectorized loop (FedAdam's float64 server step: 1 ulp).

Nothing here touches Numba's global configuration.
"""

import types

import numba
import numpy as np
from numba.np.linalg import ensure_blas
from threadpoolctl import ThreadpoolController

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


# Below this many array elements (all of a call's array arguments together, inputs and
# outputs: about the memory a call touches), a parallel kernel runs serially. Measured on
# the 2-core development machine: weighted_mean of 10 rows takes 24 us serially and 37 us
# on two threads at P = 16,000 (176,000 elements), 95 and 70 us at P = 64,000, so a
# memory-bound kernel goes parallel from 2**19 elements. Kernels that do much work per
# element (a model's forward and backward pass per row) pass a smaller ``min_size``:
# evaluating an MLP 64-64-10 on 297 rows (24,000 elements) takes 274 us serially, 228 us
# on two threads. On that machine with one core kept busy by another process, the
# parallel weighted_mean of 10 x 10,000 took 1,138 us on average (19 us quiet), the
# serial one 18 us.
PARALLEL_MIN_SIZE = 1 << 19


# The options of the input seam's overloads (``_input``), inlined into the kernels.
OVERLOAD_OPTIONS = {"fastmath": set(FASTMATH), "error_model": "numpy",
                    "no_cpython_wrapper": True, "no_cfunc_wrapper": True}


def _njit(f, parallel, inline, fastmath=True):
    return numba.njit(
        f,
        cache=True,
        fastmath=set(FASTMATH) if fastmath else False,
        parallel=parallel,
        inline=inline,
        error_model="numpy",
        nogil=True,
    )


def _renamed(f, suffix):
    """A copy of function ``f`` whose qualified name ends in ``suffix``. Numba names a
    kernel's cache files after the function's qualified name and line, and its cache index
    does not record ``parallel``: the serial variant needs files of its own."""
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__,
                           f.__closure__)
    g.__qualname__ = f.__qualname__ + suffix
    g.__module__, g.__doc__ = f.__module__, f.__doc__
    return g


_BLAS = []


def one_blas_thread():
    """A context in which BLAS runs on one thread (threadpoolctl; undone on exit).

    For a parallel kernel whose tasks call ``np.dot``: each of fastmb's threads then runs
    its own small product. Left multi-threaded, OpenBLAS called from inside an OpenMP
    region warns "Detect OpenMP Loop and this application may hang" on every call and
    runs slower (MLP 128-64-64-10 per-sample gradients, 4,096 rows: 30 ms, 13 ms with
    one BLAS thread). The limit is process-wide while it lasts; it costs about 20 us.
    """
    if not _BLAS:
        ensure_blas()  # load the BLAS that Numba's np.dot calls before looking for it
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


class Parallel:
    """A kernel compiled as threads (``.parallel``) and as one loop (``.serial``); a call
    runs the serial one when its arrays hold fewer than ``min_size`` elements in all (the
    size alone decides, never the thread count: see the module docstring). Either compiles
    on its first use only. ``blas=True``: the kernel's tasks call BLAS, which the parallel
    variant then limits to one thread (:func:`one_blas_thread`)."""

    def __init__(self, f, min_size=PARALLEL_MIN_SIZE, blas=False):
        self.py_func, self.min_size, self.blas = f, min_size, blas
        self.__name__, self.__qualname__ = f.__name__, f.__qualname__
        self.__module__, self.__doc__ = f.__module__, f.__doc__
        self.parallel = _njit(f, True, "never")
        self.serial = _njit(_renamed(f, "_serial"), False, "never")

    def pick(self, args):
        """The variant a call with these arguments runs."""
        size = 0
        for a in args:
            if isinstance(a, np.ndarray):
                size += a.size
            elif isinstance(a, tuple):  # sparse rows (``_input.SparseRows``)
                size += sum(v.size for v in a if isinstance(v, np.ndarray))
        return self.for_size(size)

    def for_size(self, size):
        """The variant for a call touching ``size`` array elements: for a kernel that reads
        memory its array arguments do not show (``weighted_mean_at`` reads K clients'
        buffers through addresses), the caller counts the elements itself."""
        return self.serial if size < self.min_size else self.parallel

    def __call__(self, *args):
        kernel = self.pick(args)
        if self.blas and kernel is self.parallel:
            with one_blas_thread():
                return kernel(*args)
        return kernel(*args)

    def __repr__(self):
        return f"<fastmb parallel kernel {self.__module__}.{self.__qualname__}>"


def jit(func=None, *, parallel=False, inline="never", min_size=PARALLEL_MIN_SIZE,
        blas=False, fastmath=True):
    """``numba.njit`` with fastmb's options; usable as ``@jit`` or ``@jit(parallel=True)``
    (which gives a :class:`Parallel`, called from Python only, serial below ``min_size``
    array elements; ``blas=True`` when its tasks call ``np.dot``). ``fastmath=False``: IEEE
    arithmetic in source order, for a kernel that reproduces another library's results
    step for step (no reassociation, no fused multiply-adds)."""

    def wrap(f):
        if parallel:
            return Parallel(f, min_size, blas)
        return _njit(f, False, inline, fastmath)

    if func is None:
        return wrap
    return wrap(func)
