"""Per-sample gradients and norms, mean gradient: the CUDA twins of ``kernels.gradients``.

Two kernels:

* :func:`samples`: any model. One block per sample at a time (blocks stride over the
  samples); see ``_model`` for how the threads share a sample.
* :func:`linear1`: one layer, one output (logistic, hinge, scalar regression): the
  gradient of row r is ``delta_r * [x_r, 1]``, so the work is one dot product and a
  scaled copy per row, bound by memory. A group of ``G`` threads (up to a warp) takes a
  row: the lanes read the row in coalesced strides, reduce their partial dot products in
  shared memory (a fixed tree, so the bits do not depend on timing), and write the
  scaled row back in the same strides.

``mode`` selects the output: ``MODE_WRITE`` per-sample (or per-micro-batch mean)
gradients into ``out`` (n_groups, P); ``MODE_NORM`` per-sample gradient norms into
``out[:, 0]``; ``MODE_ACCUM`` the weighted sums of gradients into ``out[block]``
(float64, one row per block) and of (loss, weight) into ``totals[slot]`` (float64).
A block visits rows ``block, block + grid, ...`` in order, so with the grid fixed by
the problem size (the wrapper's job) the float64 sums are the same on every run and
every GPU. ``bad[slot]`` receives the first row that slot found not finite, or -1.
"""

import math

from numba import cuda

from ._jit import kernel
from ._model import (
    backprop,
    clear,
    forward,
    layer_grads,
    loss_and_delta,
    output_delta,
    sq_norm,
    u_off,
    workspace_bytes,
)

MODE_WRITE, MODE_NORM, MODE_ACCUM = 0, 1, 2


def shared_bytes_samples(U, itemsize):
    """Dynamic shared memory of :func:`samples`: the workspace ``zs, hs, ds``."""
    return workspace_bytes(U, itemsize)


@kernel
def samples(params, X, yc, yr, sw, meta, hdelta, microbatch, mode, out, totals, bad):
    ws = cuda.shared.array(0, params.dtype)
    U = u_off(meta, meta[0])
    zs = ws[:U]
    hs = ws[U:2 * U]
    ds = ws[2 * U:3 * U]
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    blk = cuda.blockIdx.x
    n = X.shape[0]
    has_w = sw.shape[0] > 0
    first = -1
    lsum = 0.0
    wsum = 0.0
    if mode == MODE_ACCUM:
        clear(out[blk], tid, T)
    n_groups = (n + microbatch - 1) // microbatch
    for grp in range(blk, n_groups, cuda.gridDim.x):
        lo = grp * microbatch
        hi = min(n, lo + microbatch)
        inv = 1.0 / (hi - lo)
        for r in range(lo, hi):
            x = X[r]
            forward(params, x, meta, zs, hs, tid, T)
            if tid == 0:
                w = sw[r] if has_w else 1.0
                scale = w if mode == MODE_ACCUM else inv
                lv, ok = output_delta(meta, hdelta, zs, ds, yc, yr, r, scale, mode == MODE_ACCUM)
                lsum += w * lv
                wsum += w
                if not ok and first < 0:
                    first = r
            cuda.syncthreads()
            backprop(params, meta, zs, hs, ds, tid, T)
            if mode == MODE_NORM:
                if tid == 0:
                    out[r, 0] = math.sqrt(sq_norm(x, meta, hs, ds))
            elif mode == MODE_ACCUM:
                layer_grads(x, meta, hs, ds, out[blk], True, tid, T)
            else:
                layer_grads(x, meta, hs, ds, out[grp], r > lo, tid, T)
            # The next sample overwrites the workspace these threads may still read.
            cuda.syncthreads()
    if tid == 0:
        bad[blk] = first
        if mode == MODE_ACCUM:
            totals[blk, 0] = lsum
            totals[blk, 1] = wsum


def group_size(T):
    """Threads per row in :func:`linear1`: the largest power of two <= min(T, 32)."""
    G = 1
    while min(T, 32) >= G * 2:
        G *= 2
    return G


def shared_bytes_linear1(T, itemsize):
    """Dynamic shared memory of :func:`linear1`: two partial sums per thread, then
    the output ``f`` and delta of each of the block's rows."""
    R = T // group_size(T)
    return (2 * T + 2 * R) * itemsize


@kernel
def linear1(params, X, yc, yr, sw, loss, hdelta, has_b, mode, G, out, totals, bad):
    """``G`` (:func:`group_size` of the block size) threads per row."""
    sh = cuda.shared.array(0, params.dtype)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    blk = cuda.blockIdx.x
    R = T // G
    red = sh[:T]           # partial x . w
    red2 = sh[T:2 * T]     # partial |x|^2 (norms)
    fz = sh[2 * T:2 * T + R]
    dl = sh[2 * T + R:2 * T + 2 * R]
    s = tid // G
    lane = tid - s * G
    n = X.shape[0]
    d = X.shape[1]
    has_w = sw.shape[0] > 0
    slot = blk * T + tid
    first = -1
    lsum = 0.0
    wsum = 0.0
    if mode == MODE_ACCUM:
        acc = out[blk]
        clear(acc, tid, T)
    for base in range(blk * R, n, cuda.gridDim.x * R):
        r = base + s
        red[tid] = 0
        red2[tid] = 0
        part = red[tid]
        part2 = red2[tid]
        if r < n:
            for i in range(lane, d, G):
                xi = X[r, i]
                part += xi * params[i]
                part2 += xi * xi
        red[tid] = part
        red2[tid] = part2
        cuda.syncthreads()
        stride = G // 2
        while stride > 0:
            if lane < stride:
                red[tid] += red[tid + stride]
                red2[tid] += red2[tid + stride]
            cuda.syncthreads()
            stride //= 2
        if lane == 0 and r < n:
            fz[s] = red[tid] + params[d] if has_b else red[tid]
            w = sw[r] if has_w else 1.0
            lv = loss_and_delta(fz[s:s + 1], dl[s:s + 1], loss, hdelta, yc, yr, r,
                                mode == MODE_ACCUM)
            if mode == MODE_ACCUM:
                dl[s] = dl[s] * w
                lsum += w * lv
                wsum += w
            if first < 0 and not (math.isfinite(fz[s]) and math.isfinite(dl[s])
                                  and math.isfinite(lv)):
                first = r
            if mode == MODE_NORM:
                out[r, 0] = abs(dl[s]) * math.sqrt(float(red2[tid]) + (1.0 if has_b else 0.0))
        cuda.syncthreads()
        if mode == MODE_WRITE and r < n:
            o = out[r]
            for i in range(lane, d, G):
                o[i] = X[r, i] * dl[s]
            if has_b and lane == 0:
                o[d] = dl[s]
        elif mode == MODE_ACCUM:
            # Thread-owned coordinates, the block's rows added in order.
            for i in range(tid, d + (1 if has_b else 0), T):
                a = acc[i]
                for ss in range(R):
                    rr = base + ss
                    if rr < n:
                        a += (X[rr, i] if i < d else 1.0) * dl[ss]
                acc[i] = a
        cuda.syncthreads()
    bad[slot] = first
    if mode == MODE_ACCUM:
        totals[slot, 0] = lsum
        totals[slot, 1] = wsum
