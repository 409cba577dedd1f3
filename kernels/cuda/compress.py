"""Top-k selection with error feedback on the GPU: the CUDA twin of ``kernels.compress``.

The same radix selection as the CPU, split into launches with integer counts between
them (so nothing depends on the order in which threads finish):

1. :func:`add_residual`: ``r = u + r`` (the corrected update), counting NaN/Inf;
2. :func:`histogram`: atomic counts of the top ``BITS`` bits of ``|r|`` (the IEEE bits of a
   magnitude sort like the magnitude; the caller passes an integer view of ``r``);
3. the host finds the bucket that holds the k-th largest magnitude; :func:`gather`
   copies that bucket's magnitudes out (in any order: only their sorted values are
   used), and the host sorts them to find the exact threshold;
4. :func:`count`: each thread counts, in its own contiguous segment, the magnitudes
   above the threshold and equal to it; the host turns the counts into output offsets
   (ties go to the lowest indices, as on the CPU);
5. :func:`select`: each thread writes its segment's chosen coordinates in index order
   and zeroes them in ``r``.

The output is the CPU's: the same indices, ascending, the same values and residual.
"""

import math

from numba import cuda

from .. import compress as CPU
from ._jit import device_twin, kernel

take_range = device_twin(CPU.take_range, chosen=device_twin(CPU.chosen))

SEGMENT = 64   # coordinates per thread in count/select


@kernel
def add_residual(u, r, nbad):
    cnt = 0
    for j in range(cuda.grid(1), u.shape[0], cuda.gridsize(1)):
        c = u[j] + r[j]
        r[j] = c
        if not abs(c) < math.inf:  # NaN fails the comparison too
            cnt += 1
    nbad[cuda.grid(1)] = cnt


@kernel
def histogram(bits, mask, shift, hist):
    for j in range(cuda.grid(1), bits.shape[0], cuda.gridsize(1)):
        cuda.atomic.add(hist, (bits[j] & mask) >> shift, 1)


@kernel
def gather(r, bits, mask, shift, bucket, cand, fill):
    for j in range(cuda.grid(1), r.shape[0], cuda.gridsize(1)):
        if (bits[j] & mask) >> shift == bucket:
            cand[cuda.atomic.add(fill, 0, 1)] = abs(r[j])


@kernel
def count(r, thr, gt, eq):
    t = cuda.grid(1)
    if t < gt.shape[0]:
        a_gt = 0
        a_eq = 0
        for j in range(t * SEGMENT, min(r.shape[0], (t + 1) * SEGMENT)):
            a = abs(r[j])
            if a > thr:
                a_gt += 1
            elif a == thr:
                a_eq += 1
        gt[t] = a_gt
        eq[t] = a_eq


@kernel
def select(r, thr, ties, start, tie_start, idx, val):
    t = cuda.grid(1)
    if t < start.shape[0]:
        take_range(None, r, t * SEGMENT, min(r.shape[0], (t + 1) * SEGMENT), thr, ties, start[t],
                   tie_start[t], idx, val)
