"""Scale-out on Dask: a simulation's clients sharded across the workers of a Dask cluster.

The adapter between :class:`fastmb.Simulation` and ``dask.distributed`` (an optional
dependency: ``pip install "fastmb[dask]"``; imported only here). It implements the four
primitives of :class:`fastmb.federation.rounds.Executor` on a Dask client (scatter, submit,
gather, close); the round's phases are the protocol's own, so a round runs as it does in
one process:

* FedAvg: a round's clients are cut into the simulation's fixed shards; each worker
  trains its shards with the same kernel as the single-process run and returns each
  shard's partial sum (a :class:`fastmb.WeightedMean`); the partials merge pairwise on
  the workers in the same fixed tree as in one process. Results are bit-identical to
  the single-process run with the same seed, whatever the number of workers.
* Coordinate-wise robust rules (median, trimmed mean): the workers keep their shards'
  updates; each shard is cut into coordinate blocks, and block j of every shard goes to
  one task that applies the rule to those coordinates. No process ever holds the whole
  (K, P) stack.
* The other rules (Krum family, geometric median, clipping, central DP) need every
  update at once: the shards are gathered to the client process and the rule runs there.

Point it at a real multi-machine cluster with ``DaskExecutor(address="tcp://host:8786")``
(or ``fastmb simulate --scheduler tcp://host:8786``) after starting ``dask scheduler`` on
one machine and ``dask worker tcp://host:8786 --nworkers 1 --nthreads N`` on each of the
others, every one with the same fastmb installed. Bit-identity across machines needs the
same CPU type (Numba compiles for the host CPU; another instruction set may round a sum
differently).
"""

from __future__ import annotations

import numba

from ..federation.rounds import Executor


def _limit_threads():
    """Numba threads of this task = the worker's threads (no oversubscription)."""
    try:
        from distributed import get_worker

        n = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def _on_worker(fn, *args):
    _limit_threads()
    return fn(*args)


class DaskExecutor(Executor):
    """Run a :class:`fastmb.Simulation`'s rounds on a Dask cluster.

    Parameters
    ----------
    client : distributed.Client, optional
        Use this client's cluster (not closed by :meth:`close`).
    address : str, optional
        Connect to a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
    n_workers : int, optional
        Otherwise start a ``LocalCluster`` of this many worker processes (default 2),
        ``threads_per_worker`` threads each.
    threads_per_worker : int, default 1
    block_size : int, default 65536
        Coordinates per block for the coordinate-wise robust rules.

    Examples
    --------
    >>> import fastmb
    >>> from fastmb.adapters.dask import DaskExecutor
    >>> data = fastmb.data.digits()
    >>> part = fastmb.partition.iid(len(data.y), 40, seed=0)
    >>> model = fastmb.Linear(64, 10, loss="softmax")
    >>> with DaskExecutor(n_workers=2) as ex:                          # doctest: +SKIP
    ...     sim = fastmb.Simulation(model, data, part, fraction=0.5, executor=ex)
    ...     history = sim.run(3)
    """

    def __init__(self, client=None, *, address=None, n_workers=None, threads_per_worker=1,
                 block_size=65536):
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ImportError("the Dask executor needs dask.distributed: "
                              "pip install 'fastmb[dask]'") from exc
        self._cluster = None
        self._own = client is None
        if client is not None:
            if not isinstance(client, Client):
                raise TypeError(f"client must be a distributed.Client, got "
                                f"{type(client).__name__}")
            self.client = client
        elif address is not None:
            self.client = Client(address)
        else:
            n = 2 if n_workers is None else int(n_workers)
            if n < 1:
                raise ValueError(f"n_workers must be >= 1, got {n_workers}")
            self._cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                                         processes=True, dashboard_address=":0")
            self.client = Client(self._cluster)
        self.block_size = int(block_size)
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")

    # -- the executor protocol's primitives (the phases are Executor's) ----------
    def scatter(self, obj):
        return self.client.scatter(obj, broadcast=True, hash=False)

    def submit(self, fn, *args):
        return self.client.submit(_on_worker, fn, *args, pure=False)

    def gather(self, handles):
        return self.client.gather(list(handles))

    def describe(self):
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        return (f"Dask at {self.client.scheduler.address} ({len(workers)} workers, "
                f"{threads} threads)")

    def close(self):
        if self._own:
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()
