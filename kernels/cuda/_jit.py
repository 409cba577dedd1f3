"""The one place where fastmb's numba-cuda options are decided.

* ``cache=True`` for kernels, as on the CPU: the PTX and cubin are written beside the
  module and reused by later processes.
* No ``fastmath``: on CUDA it means flush-to-zero and approximate division and square
  root, which would move results away from the CPU kernels by more than rounding.
  Contraction into FMA (NVVM's default) stays on, as on the CPU.
* Lazy compilation (no eager signatures): float32 and float64 each compile on first use.

:func:`device_twin` builds the CUDA device function of a CPU scalar helper from the
same Python source (its globals rebound to the CUDA twins of the helpers it calls),
so the loss, activation and random-number formulas exist once and the two targets
cannot drift apart.
"""

import types

from numba import cuda


def kernel(func):
    """``cuda.jit`` with fastmb's options, for a kernel."""
    return cuda.jit(func, cache=True)


def device(func):
    """``cuda.jit(device=True)``, for a device function."""
    return cuda.jit(func, device=True)


def device_twin(cpu_func, **rebind):
    """The CUDA device function with the source of the Numba CPU function ``cpu_func``.

    ``rebind`` maps the names of the helpers it calls to their CUDA twins; every other
    global (constants, tables such as the ziggurat's) is shared with the CPU module.
    """
    f = cpu_func.py_func
    missing = set(rebind) - set(f.__code__.co_names)
    if missing:
        raise NameError(f"{f.__name__} does not call {sorted(missing)}")
    scope = dict(f.__globals__)
    scope.update(rebind)
    twin = types.FunctionType(f.__code__, scope, f.__name__, f.__defaults__, f.__closure__)
    twin.__doc__ = f.__doc__
    return device(twin)
