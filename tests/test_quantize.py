"""int8, QSGD, fp16/bf16 and random-k compression against tests/naive.py."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastmb
from fastmb import QuantizedUpdate

from . import naive


def _u(n=1000, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=n) * rng.uniform(0.01, 10, size=n)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stochastic", [False, True])
def test_int8_matches_naive(dtype, stochastic):
    u = _u(1003, seed=1, dtype=dtype)
    u[256:512] = 0.0   # an all-zero block has scale 0 and codes 0
    q = fastmb.quantize_int8(u, block=128, stochastic=stochastic, seed=7)
    codes, scales = naive.quantize_int8(u, 128, stochastic, seed=7)
    assert_array_equal(q.scales, scales)
    assert_array_equal(q.codes, codes)
    err = np.abs(q.dequantize(np.float64) - u)
    bound = np.repeat(scales.astype(np.float64), 128)[:u.size] * (1.0 if stochastic else 0.5)
    assert (err <= bound * (1 + 1e-6) + 1e-30).all()


def test_int8_stochastic_is_unbiased():
    u = _u(64, seed=2)
    est = np.mean([fastmb.quantize_int8(u, 64, stochastic=True, seed=s).dequantize(np.float64)
                   for s in range(2000)], axis=0)
    scale = np.abs(u).max() / 127
    assert np.abs(est - u).max() < 5 * scale / np.sqrt(2000) + 1e-7


@pytest.mark.parametrize("levels, block", [(1, 512), (16, 100), (127, 37)])
def test_qsgd_matches_naive(levels, block):
    u = _u(700, seed=3)
    q = fastmb.qsgd(u, levels=levels, block=block, seed=4)
    codes, scales = naive.qsgd(u, levels, block, seed=4)
    assert_array_equal(q.scales, scales)
    assert_array_equal(q.codes, codes)
    assert np.abs(q.codes).max() <= levels


def test_qsgd_unbiased_with_bounded_variance():
    u = _u(256, seed=5).astype(np.float64)
    s, n = 4, 3000
    draws = np.array([fastmb.qsgd(u, levels=s, block=256, seed=i).dequantize(np.float64)
                      for i in range(n)])
    var = draws.var(axis=0).sum()
    assert var <= min(256 / s**2, 16 / s) * (u @ u) * 1.05   # Alistarh et al., Lemma 3.1
    assert np.abs(draws.mean(axis=0) - u).max() < 5 * np.sqrt(draws.var(axis=0).max() / n)


def test_half_precision_matches_references():
    u = np.concatenate([_u(500, seed=6), [0.0, -0.0, 1e-40, 3.0e38, 1.00390625, 1.01171875]])
    u = u.astype(np.float32)
    assert_array_equal(fastmb.to_half(u, "bf16").codes, naive.bfloat16(u))
    h = fastmb.to_half(u[:500], "fp16")
    assert_array_equal(h.dequantize(), u[:500].astype(np.float16).astype(np.float32))
    torch = pytest.importorskip("torch")
    ref = torch.from_numpy(u).to(torch.bfloat16).to(torch.float32).numpy()
    assert_array_equal(fastmb.to_half(u, "bf16").dequantize(), ref)


def _all_schemes(u):
    return [fastmb.quantize_int8(u, 64), fastmb.quantize_int8(u, 100, stochastic=True),
            fastmb.qsgd(u, 8, 64), fastmb.to_half(u, "fp16"), fastmb.to_half(u, "bf16")]


def test_bytes_round_trip_and_ratio():
    u = _u(1000, seed=8)
    for q in _all_schemes(u):
        data = q.to_bytes()
        assert len(data) == 17 + q.nbytes
        back = QuantizedUpdate.from_bytes(data)
        assert back.scheme == q.scheme and back.block == q.block
        assert_array_equal(back.codes, q.codes)
        assert_array_equal(back.scales, q.scales)
        assert_array_equal(back.dequantize(), q.dequantize())
    assert len(fastmb.quantize_int8(u, 256).to_bytes()) < u.nbytes / 3.8


@pytest.mark.parametrize("mangle, match", [
    (lambda d: d[:10], "too short"),
    (lambda d: b"XXXX" + d[4:], "not an encoded"),
    (lambda d: d[:4] + b"\x09" + d[5:], "not an encoded"),
    (lambda d: d[:-1], "needs"),
    (lambda d: d[:-4] + np.float32(np.nan).tobytes(), "scales must be finite"),
])
def test_malformed_bytes(mangle, match):
    data = fastmb.quantize_int8(_u(100), 64).to_bytes()
    with pytest.raises(ValueError, match=match):
        QuantizedUpdate.from_bytes(mangle(data))


def test_mean_compressed_equals_mean_of_dequantized():
    rng = np.random.default_rng(9)
    U = rng.normal(size=(7, 40_000)).astype(np.float32)
    w = rng.uniform(0.5, 3, 7)
    qs = [fastmb.quantize_int8(U[0], 256)] + [fastmb.qsgd(u, 16, 256, seed=k)
                                              for k, u in enumerate(U[1:])]
    dense = np.array([q.dequantize(np.float64) for q in qs])
    got = fastmb.mean_compressed(qs, weights=w, dtype=np.float64)
    assert_allclose(got, w @ dense / w.sum(), rtol=1e-12, atol=1e-12)
    assert fastmb.mean_compressed(qs).dtype == np.float32


def test_weighted_mean_add_quantized_every_scheme():
    u = _u(3000, seed=10)
    for q in _all_schemes(u):
        a, b = fastmb.WeightedMean(u.size, np.float64), fastmb.WeightedMean(u.size, np.float64)
        a.add_quantized(q, 2.0)
        a.add(u, 1.0)
        b.add(q.dequantize(np.float64), 2.0)
        b.add(u, 1.0)
        assert_allclose(a.result(), b.result(), rtol=1e-12, atol=1e-12)


def test_mean_compressed_bad_input():
    q = fastmb.quantize_int8(_u(100), 64)
    with pytest.raises(TypeError, match="non-empty sequence"):
        fastmb.mean_compressed([])
    with pytest.raises(TypeError, match="non-empty sequence"):
        fastmb.mean_compressed(q)
    with pytest.raises(TypeError, match=r"updates\[1\] must be a QuantizedUpdate"):
        fastmb.mean_compressed([q, _u(100)])
    with pytest.raises(ValueError, match=r"updates\[1\] has n_params=100, block=32"):
        fastmb.mean_compressed([q, fastmb.quantize_int8(_u(100), 32)])
    with pytest.raises(ValueError, match="scheme 'fp16'"):
        fastmb.mean_compressed([q, fastmb.to_half(_u(100))])
    with pytest.raises(ValueError, match="weights"):
        fastmb.mean_compressed([q, q], weights=[1.0, -1.0])
    wm = fastmb.WeightedMean(100)
    with pytest.raises(ValueError, match="n_params=50"):
        wm.add_quantized(fastmb.quantize_int8(_u(50), 64))
    with pytest.raises(ValueError, match="codes must be int8"):
        wm.add_quantized(q._replace(codes=q.codes.astype(np.int16)))
    assert wm.count == 0


@pytest.mark.parametrize("call, exc, match", [
    (lambda u: fastmb.quantize_int8(u, block=0), ValueError, "block must be >= 1"),
    (lambda u: fastmb.quantize_int8(u, stochastic=1), TypeError, "stochastic must be a bool"),
    (lambda u: fastmb.qsgd(u, levels=0), ValueError, "levels must be >= 1"),
    (lambda u: fastmb.qsgd(u, levels=128), ValueError, "levels must be <= 127"),
    (lambda u: fastmb.to_half(u, "fp8"), ValueError, "fmt must be"),
    (lambda u: fastmb.to_half(u * 1e5, "fp16"), ValueError, "float16 range"),
    (lambda u: fastmb.quantize_int8(u.reshape(10, 10)), ValueError, "1-D"),
    (lambda u: fastmb.randk(u, 0), ValueError, "k must be >= 1"),
    (lambda u: fastmb.randk(u, 5, residual=np.zeros(100)), TypeError, "residual must be"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_u(100))


@pytest.mark.parametrize("call", [
    lambda u: fastmb.quantize_int8(u), lambda u: fastmb.quantize_int8(u, stochastic=True),
    lambda u: fastmb.qsgd(u), lambda u: fastmb.to_half(u, "fp16"),
    lambda u: fastmb.to_half(u, "bf16"), lambda u: fastmb.randk(u, 3),
])
def test_nonfinite_updates_raise(call):
    u = _u(300)
    u[200] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        call(u)


def test_randk_unbiased_and_error_feedback():
    u = _u(50, seed=11).astype(np.float64)
    s = fastmb.randk(u, 5, seed=3)
    assert (np.diff(s.indices) > 0).all() and s.indices.size == 5
    assert_allclose(s.values, 10 * u[s.indices])
    assert_array_equal(fastmb.randk(u, 5, seed=3).indices, s.indices)
    est = np.mean([fastmb.randk(u, 5, seed=i).densify() for i in range(4000)], axis=0)
    assert np.abs(est - u).max() < 0.25 * np.abs(u).max()
    r = np.full(50, 0.5)
    r_old = r.copy()
    s = fastmb.randk(u, 5, seed=4, residual=r)
    assert_allclose(s.densify() + r, u + r_old)
    assert (r[s.indices] == 0).all()
    bad = u.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fastmb.randk(bad, 5, residual=r)
    assert_allclose(s.densify() + r, u + r_old)   # residual untouched by the failed call
