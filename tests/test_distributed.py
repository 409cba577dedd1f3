"""Scale-out on a real Dask LocalCluster (worker processes): the same bits as one process."""

import numpy as np
import pytest

import fastmb
from fastmb import partition as Pt
from fastmb.federation.simulation import Faults, Simulation

distributed = pytest.importorskip("distributed")
from fastmb.adapters.dask import DaskExecutor  # noqa: E402

DATA = fastmb.data.digits()
MODEL = fastmb.MLP([64, 16, 10])


@pytest.fixture(scope="module")
def executor():
    # Two worker processes of one thread each, started by the project's own adapter.
    ex = DaskExecutor(n_workers=2, threads_per_worker=1, block_size=300)
    yield ex
    ex.close()


def _pair(executor, **kw):
    part = Pt.dirichlet(DATA.y, 40, alpha=0.5, seed=1)
    opts = dict(fraction=0.5, epochs=1, batch_size=8, lr=0.1, seed=3, shard_size=3,
                faults=Faults(dropout=0.2, straggler=0.3, malicious=0.15, attack="nan"))
    opts.update(kw)
    return Simulation(MODEL, DATA, part, **opts), Simulation(MODEL, DATA, part,
                                                             executor=executor, **opts)


@pytest.mark.parametrize("aggregator", ["fedavg", "median", "trimmed_mean", "multi_krum"])
def test_dask_equals_single_process(executor, aggregator):
    local, dist = _pair(executor, aggregator=aggregator,
                        aggregator_options={"n_byzantine": 2} if aggregator == "multi_krum"
                        else None)
    assert "2 workers" in executor.describe()
    h_local, h_dist = local.run(3), dist.run(3)
    np.testing.assert_array_equal(dist.params, local.params)
    for a, b in zip(h_local, h_dist):
        for key in ("accuracy", "loss", "dropped", "stragglers", "malicious", "rejected",
                    "rejected_by_rule", "used"):
            assert a[key] == b[key], key
    assert sum(len(h["rejected"]) for h in h_dist) > 0  # the NaN clients were rejected


def test_dask_shards_work_on_both_workers(executor):
    # Shards of the round run where the scheduler puts them: both workers hold data and
    # both took part (each has the broadcast plan and ran training tasks).
    local, dist = _pair(executor, shard_size=2, faults=None)
    dist.run(2)
    local.run(2)
    np.testing.assert_array_equal(dist.params, local.params)
    counts = executor.client.run(lambda dask_worker: len(dask_worker.state.log))
    assert len(counts) == 2 and all(c > 0 for c in counts.values())


def test_dask_executor_bad_input():
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        DaskExecutor(client="tcp://nowhere")
    with pytest.raises(ValueError, match="n_workers must be >= 1"):
        DaskExecutor(n_workers=0)


def test_simulate_command_on_a_local_cluster(tmp_path, capsys):
    import json

    from fastmb.cli import main

    args = ["--rounds", "2", "--clients", "20", "--hidden", "8", "--epochs", "1",
            "--no-plot", "--no-progress"]
    assert main(["simulate", "--out", str(tmp_path / "one"), *args]) == 0
    assert main(["simulate", "--out", str(tmp_path / "dask"), "--workers", "2", *args]) == 0
    assert "Dask at tcp://" in capsys.readouterr().out
    one, dask = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "dask"))
    assert [h["loss"] for h in one] == [h["loss"] for h in dask]
    with np.load(tmp_path / "one" / "checkpoint.npz") as a, \
            np.load(tmp_path / "dask" / "checkpoint.npz") as b:
        np.testing.assert_array_equal(a["params"], b["params"])


def test_dask_secure_aggregation_equals_single_process(executor):
    """Secure aggregation on the cluster: the masks are added on the workers, the masked
    shards summed there modulo 2**32, the server unmasks: the same bits as in one process
    (the sums are exact integers, whatever the tree)."""
    pytest.importorskip("cryptography")
    from fastmb.secure import SecAggConfig

    part = Pt.dirichlet(DATA.y, 40, alpha=0.5, seed=1)
    cfg = SecAggConfig(clip=2.0, max_weight=int(part.sizes.max()))
    opts = dict(fraction=0.5, epochs=1, batch_size=8, lr=0.1, seed=3, shard_size=3,
                secure=cfg, faults=Faults(dropout=0.1, setup_dropout=0.05, unmask_dropout=0.05))
    local = Simulation(MODEL, DATA, part, **opts)
    dist = Simulation(MODEL, DATA, part, executor=executor, **opts)
    h_local, h_dist = local.run(2), dist.run(2)
    np.testing.assert_array_equal(dist.params, local.params)
    assert [h["used"] for h in h_dist] == [h["used"] for h in h_local]
    assert local.secure_failures == dist.secure_failures == []
