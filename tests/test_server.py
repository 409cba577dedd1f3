"""Server optimizers against the paper's update written out in tests/naive.py."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastmb

from . import naive

KINDS = {"FedAvgM": dict(lr=0.7, momentum=0.8), "FedAdagrad": dict(lr=0.1, beta1=0.5, tau=1e-2),
         "FedAdam": dict(lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3),
         "FedYogi": dict(lr=0.05, beta1=0.9, beta2=0.9, tau=1e-3)}


def _naive_args(kind, kw):
    if kind == "FedAvgM":
        return dict(lr=kw["lr"], b1=kw["momentum"])
    return dict(lr=kw["lr"], b1=kw["beta1"], b2=kw.get("beta2", 0.0), tau=kw["tau"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_naive(kind, dtype):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=40_000).astype(dtype)  # more than one parallel block
    aggs = [(x0 + rng.normal(size=x0.size) * s).astype(dtype) for s in (1.0, 0.1, 3.0, 0.01)]
    opt = getattr(fastmb, kind)(x0, **KINDS[kind])
    for a in aggs:
        out = opt.step(a)
    assert out.dtype == dtype and opt.round == 4
    ref = naive.server_steps(kind, x0[:300], [a[:300] for a in aggs],
                             **_naive_args(kind, KINDS[kind]))
    assert_allclose(out[:300], ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_fedavgm_without_momentum_is_fedavg():
    x0 = np.zeros(5)
    agg = np.arange(5.0)
    assert_array_equal(fastmb.FedAvgM(x0, lr=1.0, momentum=0.0).step(agg), agg)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_resume_is_bit_identical(kind):
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=100).astype(np.float32)
    aggs = [rng.normal(size=100).astype(np.float32) for _ in range(6)]
    straight = getattr(fastmb, kind)(x0, **KINDS[kind])
    for a in aggs:
        straight.step(a)
    first = getattr(fastmb, kind)(x0, **KINDS[kind])
    for a in aggs[:3]:
        first.step(a)
    resumed = fastmb.ServerOptimizer.from_state_dict(first.state_dict())
    assert type(resumed) is type(first)
    for a in aggs[3:]:
        resumed.step(a)
    assert_array_equal(resumed.params, straight.params)
    assert resumed.round == 6


def test_bad_aggregate_leaves_state_unchanged():
    opt = fastmb.FedAdam(np.ones(4), lr=0.1)
    opt.step(np.zeros(4))
    before = opt.state_dict()
    for bad, match in [([0.0, np.nan, 0.0, 0.0], "NaN or Inf"), (np.zeros(3), "length 4"),
                       (np.zeros((2, 4)), "1-D")]:
        with pytest.raises(ValueError, match=match):
            opt.step(bad)
    after = opt.state_dict()
    for k in before:
        assert_array_equal(after[k], before[k])


def test_overflow_raises_and_keeps_state():
    opt = fastmb.FedAvgM(np.zeros(2, np.float32), lr=1e30, momentum=0.0)
    with pytest.raises(ValueError, match="overflowed"):
        opt.step(np.array([1e30, 0.0], np.float32))
    assert_array_equal(opt.params, [0.0, 0.0])
    assert opt.round == 0


@pytest.mark.parametrize("make, match", [
    (lambda: fastmb.FedAdam(np.zeros(3), lr=0), "lr must be > 0"),
    (lambda: fastmb.FedAdam(np.zeros(3), beta2=1.0), "beta2 must be in"),
    (lambda: fastmb.FedYogi(np.zeros(3), tau=0), "tau must be > 0"),
    (lambda: fastmb.FedAvgM(np.zeros(3), momentum=1.5), "momentum must be in \\[0, 1\\)"),
    (lambda: fastmb.FedAvgM(np.zeros((3, 1))), "params must be a non-empty 1-D"),
    (lambda: fastmb.FedAvgM([np.inf]), "params contains NaN"),
    (lambda: fastmb.ServerOptimizer.from_state_dict({"kind": "SGD"}), "state\\['kind'\\]"),
    (lambda: fastmb.FedAdam.from_state_dict(fastmb.FedYogi(np.zeros(2)).state_dict()),
     "not FedAdam"),
])
def test_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_params_are_copies():
    x0 = np.zeros(3)
    opt = fastmb.FedAvgM(x0)
    opt.params[:] = 5
    out = opt.step(np.ones(3))
    out[:] = 7
    assert_array_equal(x0, 0)
    assert (opt.params < 5).all()
