"""Compile every CUDA kernel to PTX for real GPU architectures, without a GPU.

The simulator runs the kernels as Python, so it cannot catch what only the CUDA compiler
sees (typing, unsupported operations, shared-memory declarations). This script types and
compiles each kernel with the argument types the wrappers in ``fastmb._cuda`` pass, for
float32 and float64, with numba-cuda's NVRTC/NVVM. Run as
``NUMBA_ENABLE_CUDASIM=0 python -m tests.cuda_ptx [cc ...]``; exits 77 when the CUDA
compiler libraries are not installed (``pip install "fastmb[cuda13]"`` provides them).
"""

import os
import sys

import numpy as np


def _cases():
    import numba

    import fastmb
    from fastmb.kernels.cuda import aggregation as KA
    from fastmb.kernels.cuda import compress as KC
    from fastmb.kernels.cuda import gradients as KG
    from fastmb.kernels.cuda import robust as KR
    from fastmb.kernels.cuda import slicing as KSL
    from fastmb.kernels.cuda import training as KT
    from fastmb.kernels.cuda._model import pack

    def sig(*args):
        return tuple(numba.typeof(a) for a in args)

    f64, i64 = np.float64(1.0), np.int64(1)
    for dt in (np.float32, np.float64):
        e = np.empty
        for model in (fastmb.MLP([5, 7, 3]), fastmb.Linear(5, loss="logistic")):
            p = e(model.n_params, dt)
            X = e((4, 5), dt)
            meta = pack(model.layout)
            yc, yr, sw = e(4, np.int64), e((0, model.n_outputs), dt), e(0, np.float64)
            for out, totals in ((e((4, model.n_params), dt), e((0, 2))),
                                (e((4, model.n_params)), e((4, 2)))):
                yield "samples", KG.samples, sig(p, X, yc, yr, sw, meta, f64, i64, i64, out,
                                                 totals, e(4, np.int64))
                yield "linear1", KG.linear1, sig(p, X, yc, yr, sw, i64, f64, True, i64, 32,
                                                 out, totals, e(4, np.int64))
            for out in (e((4, model.n_params), dt), e((4, model.n_params))):
                yield "slice_rows", KSL.slice_rows, sig(p, X, e((4, 3), dt), meta, i64, i64,
                                                        i64, i64, out, e((4, 7), dt))
            ia = e(3, np.int64)
            yield "train_clients", KT.train_clients, sig(
                p, X, yc, yr, sw, meta, f64, ia, ia, ia, ia, np.uint64(1), ia, ia, i64, i64,
                True, f64, f64, f64, f64, f64, f64, f64, ia, ia, e((2, model.n_params), dt),
                e((2, model.n_params), dt), e((2, model.n_params), dt), ia)
        U = e((3, 8), dt)
        yield "weighted_mean", KA.weighted_mean, sig(U, e(3), f64, e(8, dt), e(4, np.int64))
        yield "rows_nonfinite", KA.rows_nonfinite, sig(U, e(3, np.int32))
        yield "take_rows", KA.take_rows, sig(U, e(2, np.int64), e((2, 8), dt))
        yield "summary", KA.summary, sig(e(8, dt), e(4), e(4), e(4, np.int64))
        yield "rank_mean", KR.rank_mean, sig(U, e((3, 2), np.int64), i64, i64, i64,
                                             e((3, 8), dt), e(8, dt))
        ity = np.int32 if dt == np.float32 else np.int64
        u, bits = e(8, dt), e(8, ity)
        yield "add_residual", KC.add_residual, sig(u, u, e(4, np.int64))
        yield "histogram", KC.histogram, sig(bits, ity(1), ity(1), e(4, np.int64))
        yield "gather", KC.gather, sig(u, bits, ity(1), ity(1), ity(1), u, e(1, np.int64))
        yield "count", KC.count, sig(u, dt(1), e(2, np.int64), e(2, np.int64))
        yield "select", KC.select, sig(u, dt(1), i64, e(2, np.int64), e(2, np.int64),
                                       e(2, np.int64), u)
    yield "summary-int", KA.summary, sig(e(8, np.int64), e(4), e(4), e(4, np.int64))


class _NoDevice:
    """Stands in for the current device when device functions are typed without a GPU:
    numba-cuda asks it only for the compute capability to compile them for."""

    def __init__(self, cc):
        self.compute_capability = cc


def main(ccs):
    import numba
    from numba import cuda
    from numba.cuda import dispatcher

    try:
        cuda.compile_ptx(lambda a: None, (numba.float32[:],), cc=ccs[0])
    except Exception as exc:  # no NVRTC / NVVM here
        print(f"CUDA compiler libraries not available: {exc}".splitlines()[0])
        return 77
    n = 0
    for name, kern, sig in _cases():
        for cc in ccs:
            dispatcher.get_current_device = lambda cc=cc: _NoDevice(cc)
            cuda.compile_ptx(kern.py_func, sig, cc=cc)
            n += 1
        print(f"ok {name} {[str(t) for t in sig][:2]}")
    print(f"compiled {n} kernel signatures for {ccs}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
    ccs = [tuple(int(x) for x in a.split(".")) for a in sys.argv[1:]] or [(7, 5), (8, 7)]
    sys.exit(main(ccs))
