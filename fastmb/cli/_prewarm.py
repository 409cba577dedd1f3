"""Compile a simulation's evaluation and FedAvg aggregation kernels in a helper process.

``fastmb simulate`` starts ``python -m fastmb.cli._prewarm`` when its first kernel
compiles (a cold cache, the first run on a machine). The main process goes on compiling
the training kernel, the longest, while this process compiles the evaluation and the
weighted-sum aggregation kernels on another core and writes them to Numba's on-disk
cache; the main process loads them from there when its first round reaches them. Numba
compiles under one lock per process, so a second process is the only way to use a
second core for compiling. A kernel the main process needs before this one has cached
it is simply compiled there too (the cache files are written atomically).

The kernels' argument types come from the same calls the simulation makes, on two rows
of the run's dtypes. The job arrives pickled on stdin: ``(model, params dtype, X dtype,
y dtype, y's shape after the first axis, whether X is sparse)``.
"""

import pickle
import sys

import numpy as np

from ..federation.rounds import shard_sum
from ..learn.gradients import Batch, evaluate_batch


def prewarm(model, dtype, x_dtype, y_dtype, y_tail=(), sparse=False):
    """Compile (or load) what a round's evaluation and FedAvg sum of ``model`` run."""
    p = np.zeros(model.n_params, dtype)
    X = np.zeros((2, model.sizes[0]), x_dtype)
    if sparse:
        import scipy.sparse

        X = scipy.sparse.csr_matrix(X)
    y = np.zeros((2, *y_tail), y_dtype)
    evaluate_batch(Batch(model, p, X, y))
    shard_sum(np.zeros((2, model.n_params), dtype), np.ones(2), np.arange(2))


def main():
    prewarm(*pickle.load(sys.stdin.buffer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
