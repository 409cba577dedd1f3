"""FedBuff against the step-by-step reference in tests/naive.py."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastmb

from . import naive


def _arrivals(n, P, seed=0):
    """Random deltas whose versions lag the server by 0..3 updates (never ahead)."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=P), int(rng.integers(0, 4)), float(rng.uniform(0.5, 2)))
            for _ in range(n)]


def _feed(fb, arrivals, K):
    """Feed arrivals, mapping each lag to a version; returns the params after each update."""
    out, used = [], []
    for delta, lag, w in arrivals:
        v = max(0, fb.version - lag)
        used.append((delta, v, w))
        if fb.add(delta, version=v, weight=w):
            out.append(fb.params)
    return out, used


@pytest.mark.parametrize("staleness, a, fn", [
    ("sqrt", 0.5, lambda s: (1 + s) ** -0.5),
    ("polynomial", 1.5, lambda s: (1 + s) ** -1.5),
    ("constant", 0.5, lambda s: 1.0),
])
def test_fedbuff_matches_naive(staleness, a, fn):
    arr = _arrivals(40, 6, seed=1)
    fb = fastmb.FedBuff(np.zeros(6), buffer_size=3, staleness=staleness, staleness_exponent=a,
                        server_lr=0.7)
    got, used = _feed(fb, arr, 3)
    expect = naive.fedbuff(np.zeros(6), used, 3, lr=0.7, weight_fn=fn)
    assert len(got) == len(expect) == 13 and fb.pending == 1 and fb.received == 40
    assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


def test_max_staleness_drops_and_counts():
    arr = _arrivals(30, 4, seed=2)
    fb = fastmb.FedBuff(np.zeros(4), buffer_size=2, max_staleness=1)
    got, used = _feed(fb, arr, 2)
    expect = naive.fedbuff(np.zeros(4), used, 2, max_staleness=1)
    assert_allclose(got, expect, rtol=1e-12, atol=1e-12)
    assert fb.dropped > 0 and fb.dropped + fb.received == 30


def test_compressed_arrivals_equal_dense():
    rng = np.random.default_rng(3)
    d = rng.normal(size=500).astype(np.float32)
    a = fastmb.FedBuff(np.zeros(500, np.float32), buffer_size=2)
    b = fastmb.FedBuff(np.zeros(500, np.float32), buffer_size=2)
    s, q = fastmb.topk(d, 50), fastmb.quantize_int8(d, 64)
    a.add(s, 0)
    a.add(q, 0)
    b.add(s.densify(), 0)
    b.add(q.dequantize(), 0)
    assert_allclose(a.params, b.params, rtol=1e-6)


def test_with_a_server_optimizer_and_flush():
    x0 = np.ones(3)
    fb = fastmb.FedBuff(fastmb.FedAdam(x0, lr=0.1), buffer_size=4)
    fb.add([1.0, 2.0, 3.0], 0)
    fb.add([3.0, 2.0, 1.0], 0)
    assert fb.flush() and fb.version == 1 and not fb.flush()
    ref = fastmb.FedAdam(x0, lr=0.1)
    assert_allclose(fb.params, ref.step(x0 + np.array([2.0, 2.0, 2.0])), rtol=1e-12)


def test_async_training_converges():
    # Clients minimise |x - c_i|^2 / 2 from stale copies of x; FedBuff reaches the mean of c.
    rng = np.random.default_rng(4)
    C = rng.normal(size=(20, 5))
    fb = fastmb.FedBuff(np.zeros(5), buffer_size=5, server_lr=0.1)
    snapshots = {0: fb.params}
    for _ in range(3000):
        v = max(0, fb.version - int(rng.integers(0, 3)))
        x = snapshots[v]
        c = C[rng.integers(0, 20)]
        if fb.add(-0.5 * (x - c), version=v):
            snapshots[fb.version] = fb.params
    assert np.abs(fb.params - C.mean(axis=0)).max() < 0.15


def test_state_dict_resumes_exactly():
    arr = _arrivals(25, 5, seed=5)
    fb = fastmb.FedBuff(np.zeros(5, np.float32), buffer_size=4)
    _feed(fb, arr[:13], 4)
    state = fb.state_dict()
    rest, _ = _feed(fb, arr[13:], 4)
    fb2 = fastmb.FedBuff(np.zeros(5, np.float32), buffer_size=4).load_state_dict(state)
    rest2, _ = _feed(fb2, arr[13:], 4)
    np.testing.assert_array_equal(np.array(rest), np.array(rest2))
    with pytest.raises(ValueError, match="state must be a dict"):
        fb2.load_state_dict({"server": state["server"]})
    bad = dict(state, buffer=dict(state["buffer"], sum=np.zeros(3)))
    with pytest.raises(ValueError, match="wrong length"):
        fb2.load_state_dict(bad)


def test_bad_input_changes_nothing():
    fb = fastmb.FedBuff(np.zeros(3), buffer_size=2)
    fb.add([1.0, 1.0, 1.0], 0)
    before = fb.state_dict()
    for call, exc, match in [
        (lambda: fb.add([1.0, np.nan, 0.0], 0), ValueError, "NaN"),
        (lambda: fb.add([1.0, 2.0], 0), ValueError, "length 3"),
        (lambda: fb.add([1.0, 2.0, 3.0], 1), ValueError, "version must be <="),
        (lambda: fb.add([1.0, 2.0, 3.0], -1), ValueError, "version must be >= 0"),
        (lambda: fb.add([1.0, 2.0, 3.0], 0, weight=-1), ValueError, "weight must be >= 0"),
        (lambda: fb.add([1.0, 2.0, 3.0], 0.5), TypeError, "version must be an integer"),
    ]:
        with pytest.raises(exc, match=match):
            call()
    after = fb.state_dict()
    assert after["received"] >= before["received"] and fb.version == 0
    fb.discard()
    assert fb.pending == 0 and np.all(fb.params == 0)
    fb.add([1.7e308, 0.0, 0.0], 0)
    with pytest.raises(ValueError, match="overflows"):
        fb.add([1.7e308, 0.0, 0.0], 0)
    assert fb.version == 0 and fb.pending == 2 and np.all(fb.params == 0)
    fb.discard()


@pytest.mark.parametrize("kw, match", [
    (dict(buffer_size=0), "buffer_size must be >= 1"),
    (dict(staleness="exp"), "staleness must be one of"),
    (dict(max_staleness=-1), "max_staleness must be >= 0"),
    (dict(server_lr=0.0), "lr must be > 0"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        fastmb.FedBuff(np.zeros(3), **kw)
