"""device="cuda": every CUDA kernel against the CPU kernel (itself checked against the naive
references), on numba-cuda's simulator in CI and on a real GPU with NUMBA_ENABLE_CUDASIM=0.

Blocks of 4 threads (``THREADS_PER_BLOCK``) make every launch use several blocks and every
block split its rows, units and coordinates between threads; one test runs 64 threads so
that a block of the one-output linear kernel holds several rows.

Tolerances: gradients, norms and trained parameters agree with the CPU to float32 rounding
of the per-sample terms (the per-unit sums run in the same order; per-row dot products of
the linear kernel are tree-reduced); FedAvg sums in float64 in the CPU's grouping; the
median, the trimmed mean and top-k are exact (selection and float64 sums in rank order).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastmb

from .conftest import MODEL_CASES, make_data, readme_code

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if not SIM and not cuda.is_available():
    pytest.skip("NUMBA_ENABLE_CUDASIM=0 and no usable GPU", allow_module_level=True)

pytestmark = [
    # The simulator runs the SplitMix64 hash on NumPy uint64 scalars, whose wrap-around
    # NumPy reports; on a GPU (and on the CPU kernels) it is the intended modular arithmetic.
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    # Tiny test grids on a real GPU.
    pytest.mark.filterwarnings("ignore:Grid size:numba.core.errors.NumbaPerformanceWarning"),
]

RTOL32 = 2e-5
ATOL32 = 2e-6


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    from fastmb.kernels import cuda as KC

    monkeypatch.setattr(KC, "THREADS_PER_BLOCK", 4)


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


# ----------------------------------------------------------------------------- gradients

GRAD_CASES = ["linear-logistic", "linear-logistic-nobias", "linear-squared-3out",
              "linear-softmax", "mlp-relu-softmax", "mlp-tanh-logistic", "mlp-sigmoid-squared",
              "mlp-tanh-hinge-nobias", "linear-huber"]


@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradients_match_cpu(case):
    model = MODEL_CASES[case]()
    params, X, y = make_data(model, 7, seed=1, dtype=np.float32)
    for m in (1, 3):
        assert_allclose(fastmb.per_sample_grad(model, params, X, y, microbatch=m, device="cuda"),
                        fastmb.per_sample_grad(model, params, X, y, microbatch=m),
                        rtol=RTOL32, atol=ATOL32)
    assert_allclose(fastmb.per_sample_grad_norm(model, params, X, y, device="cuda"),
                    fastmb.per_sample_grad_norm(model, params, X, y), rtol=RTOL32, atol=ATOL32)
    w = np.linspace(0.5, 2.0, 7)
    value, g = fastmb.loss_and_grad(model, params, X, y, sample_weight=w, device="cuda")
    value_cpu, g_cpu = fastmb.loss_and_grad(model, params, X, y, sample_weight=w)
    assert value == pytest.approx(value_cpu, rel=1e-6)
    assert g.dtype == np.float32
    assert_allclose(g, g_cpu, rtol=RTOL32, atol=ATOL32)


def test_gradients_float64():
    model = MODEL_CASES["mlp-tanh-logistic"]()
    params, X, y = make_data(model, 6, seed=2)
    g = fastmb.per_sample_grad(model, params, X, y, device="cuda")
    assert g.dtype == np.float64
    assert_allclose(g, fastmb.per_sample_grad(model, params, X, y), rtol=1e-12, atol=1e-14)
    assert fastmb.loss(model, params, X, y, device="cuda") == pytest.approx(
        fastmb.loss(model, params, X, y), rel=1e-13)


def test_linear_kernel_several_rows_per_block(monkeypatch):
    """64 threads: groups of 32 lanes, two rows a block, a last block with one row."""
    from fastmb.kernels import cuda as KC

    monkeypatch.setattr(KC, "THREADS_PER_BLOCK", 64)
    model = fastmb.Linear(40, loss="logistic")
    params, X, y = make_data(model, 5, seed=3, dtype=np.float32)
    assert_allclose(fastmb.per_sample_grad(model, params, X, y, device="cuda"),
                    fastmb.per_sample_grad(model, params, X, y), rtol=RTOL32, atol=ATOL32)
    assert_allclose(fastmb.per_sample_grad_norm(model, params, X, y, device="cuda"),
                    fastmb.per_sample_grad_norm(model, params, X, y), rtol=RTOL32, atol=ATOL32)
    assert_allclose(fastmb.grad(model, params, X, y, device="cuda"),
                    fastmb.grad(model, params, X, y), rtol=RTOL32, atol=ATOL32)


def test_device_arrays_in_device_arrays_out():
    model = MODEL_CASES["mlp-relu-softmax"]()
    params, X, y = make_data(model, 5, seed=4, dtype=np.float32)
    dX, dp, dy = cuda.to_device(X), cuda.to_device(params), cuda.to_device(y.astype(np.int64))
    g = fastmb.per_sample_grad(model, dp, dX, dy, device="cuda")
    assert not isinstance(g, np.ndarray) and hasattr(g, "copy_to_host")
    assert_allclose(g.copy_to_host(), fastmb.per_sample_grad(model, params, X, y),
                    rtol=RTOL32, atol=ATOL32)
    out = cuda.device_array((5, model.n_params), np.float32)
    assert fastmb.per_sample_grad(model, params, dX, y, out=out, device="cuda") is out
    # Host params with device X take X's dtype; the result stays on the device.
    n = fastmb.per_sample_grad_norm(model, params.astype(np.float64), dX, y, device="cuda")
    assert n.dtype == np.float32 and hasattr(n, "copy_to_host")
    assert X.flags.writeable and np.isfinite(X).all()


@pytest.mark.skipif(SIM, reason="foreign GPU arrays need a real GPU")
@pytest.mark.parametrize("lib", ["cupy", "torch"])
def test_cuda_array_interface_inputs(lib):
    """CuPy arrays and PyTorch CUDA tensors are used in place (no copy) through
    ``__cuda_array_interface__``, and the results come back as device arrays."""
    mod = pytest.importorskip(lib)
    if lib == "torch" and not mod.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    as_gpu = (lambda a: mod.asarray(a)) if lib == "cupy" else \
        (lambda a: mod.as_tensor(a, device="cuda"))
    rng = np.random.default_rng(8)
    U = rng.normal(size=(5, 33)).astype(np.float32)
    got = fastmb.fedavg(as_gpu(U), device="cuda")
    assert_allclose(got.copy_to_host(), fastmb.fedavg(U), rtol=1e-7)
    model = MODEL_CASES["mlp-relu-softmax"]()
    params, X, y = make_data(model, 5, dtype=np.float32)
    g = fastmb.per_sample_grad(model, as_gpu(params), as_gpu(X), as_gpu(y.astype(np.int64)),
                               device="cuda")
    assert_allclose(g.copy_to_host(), fastmb.per_sample_grad(model, params, X, y),
                    rtol=RTOL32, atol=ATOL32)


def test_device_regression_targets_and_weights():
    model = MODEL_CASES["linear-squared-3out"]()
    params, X, y = make_data(model, 6, seed=9, dtype=np.float32)
    w = np.linspace(0.5, 1.5, 6)
    value, g = fastmb.loss_and_grad(model, params, cuda.to_device(X),
                                    cuda.to_device(y.astype(np.float32)),
                                    sample_weight=cuda.to_device(w), device="cuda")
    value_cpu, g_cpu = fastmb.loss_and_grad(model, params, X, y, sample_weight=w)
    assert value == pytest.approx(value_cpu, rel=1e-6)
    assert_allclose(g.copy_to_host(), g_cpu, rtol=RTOL32, atol=ATOL32)
    with pytest.raises(ValueError, match="y contains NaN"):
        fastmb.grad(model, params, X, cuda.to_device(np.full((6, 3), np.nan, np.float32)),
                    device="cuda")
    with pytest.raises(ValueError, match="sample_weight must be finite, non-negative"):
        fastmb.grad(model, params, X, y, sample_weight=cuda.to_device(-w), device="cuda")


def test_gradient_errors():
    model = MODEL_CASES["linear-logistic"]()
    params, X, y = make_data(model, 5, dtype=np.float32)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        fastmb.grad(model, params, X, y, device="gpu")
    with pytest.raises(TypeError, match="X is on the GPU: pass device='cuda'"):
        fastmb.grad(model, params, cuda.to_device(X), y)
    with pytest.raises(TypeError, match="X on the GPU must have dtype"):
        fastmb.grad(model, params, cuda.to_device(X.astype(np.int32)), y, device="cuda")
    with pytest.raises(TypeError, match=r"params \(float64\) and X \(float32\)"):
        fastmb.grad(model, cuda.to_device(params.astype(np.float64)), cuda.to_device(X), y,
                    device="cuda")
    with pytest.raises(ValueError, match="params contains NaN"):
        fastmb.grad(model, cuda.to_device(np.full_like(params, np.nan)), X, y, device="cuda")
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        fastmb.grad(model, params, X, cuda.to_device(np.array([0, 1, 2, 0, 1])), device="cuda")
    with pytest.raises(TypeError, match="y on the GPU must have dtype int64"):
        fastmb.grad(model, params, X, cuda.to_device(y.astype(np.int32)), device="cuda")
    Xbad = X.copy()
    Xbad[3, 2] = np.inf
    for f in (fastmb.per_sample_grad, fastmb.per_sample_grad_norm, fastmb.grad):
        with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 3\)"):
            f(model, params, cuda.to_device(Xbad), y, device="cuda")
    with pytest.raises(ValueError, match="shared memory"):
        wide = fastmb.MLP([2, 5000, 2])
        fastmb.grad(wide, wide.init(), np.ones((1, 2), np.float32), [0], device="cuda")


# ----------------------------------------------------------------------------- training

TRAIN_OPTIONS = [
    dict(batch_size=4),
    dict(batch_size=3, momentum=0.9, weight_decay=0.01, prox_mu=0.1, schedule="cosine"),
    dict(batch_size=4, schedule="invscaling", shuffle=False, epochs=[2, 1, 3],
         max_steps=[1, -1, 4]),
    dict(batch_size=4, clip_norm=0.5, noise_multiplier=1.0),
]


@pytest.mark.parametrize("options", TRAIN_OPTIONS, ids=["plain", "momentum", "steps", "dp"])
def test_train_clients_matches_cpu(options):
    model = MODEL_CASES["mlp-relu-softmax"]()
    params, X, y = make_data(model, 30, seed=5, dtype=np.float32)
    kw = dict(options, lr=0.05, seed=3)
    got = fastmb.train_clients(model, params, X, y, [0, 8, 17, 30], device="cuda", **kw)
    want = fastmb.train_clients(model, params, X, y, [0, 8, 17, 30], **kw)
    # DP noise of std 0.5 is added every step: agreement at this level means the GPU drew
    # the CPU's noise, and shuffled the clients' rows the same way.
    assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(got[0], params)


def test_train_clients_linear_rows_and_device_data():
    model = MODEL_CASES["linear-logistic"]()
    params, X, y = make_data(model, 24, seed=6, dtype=np.float32)
    rows = np.random.default_rng(0).permutation(24)
    kw = dict(rows=rows, clients=[2, 0], batch_size=5, lr=0.1, epochs=2,
              sample_weight=np.linspace(0.5, 1.5, 24))
    want = fastmb.train_clients(model, params, X, y, [0, 10, 16, 24], **kw)
    got = fastmb.train_clients(model, cuda.to_device(params), cuda.to_device(X),
                               cuda.to_device(y.astype(np.int64)), [0, 10, 16, 24],
                               device="cuda", **kw)
    assert hasattr(got, "copy_to_host")
    assert_allclose(got.copy_to_host(), want, rtol=1e-4, atol=1e-6)


def test_train_clients_bad_row():
    model = MODEL_CASES["linear-squared"]()
    params, X, y = make_data(model, 10, dtype=np.float32)
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at row 7\)"):
        fastmb.train_clients(model, params, X, y, [0, 5, 10], rows=np.arange(10)[::-1].copy(),
                             device="cuda")


# ----------------------------------------------------------------------------- aggregation


def test_fedavg_matches_cpu():
    rng = np.random.default_rng(7)
    U = rng.normal(size=(7, 37)).astype(np.float32)
    w = rng.uniform(size=7)
    assert_array_equal(fastmb.fedavg(U, w, device="cuda"), fastmb.fedavg(U, w))
    dU = cuda.to_device(U)
    got = fastmb.fedavg(dU, w, device="cuda")
    assert hasattr(got, "copy_to_host")
    assert_allclose(got.copy_to_host(), fastmb.fedavg(U, w), rtol=1e-7)
    U[2, 5] = np.nan
    U[4, 0] = -np.inf
    with pytest.raises(ValueError, match=r"clients \[2, 4\]"):
        fastmb.fedavg(U, w, device="cuda")
    with pytest.raises(TypeError, match="updates is on the GPU"):
        fastmb.fedavg(dU, w)


@pytest.mark.parametrize("K", [1, 6, 9])
def test_median_and_trimmed_mean_equal_cpu(K, monkeypatch):
    from fastmb._cuda import arrays as _cuda

    monkeypatch.setattr(_cuda, "MAX_GRID_Y", 2)  # rows beyond the grid's y limit: strided
    rng = np.random.default_rng(K)
    U = rng.normal(size=(K, 23)).astype(np.float32)
    U[:, 3] = 1.0   # ties
    if K > 2:
        U[1, 4] = np.nan
    for rule in (fastmb.coordinate_median,
                 lambda U, device="cpu": fastmb.trimmed_mean(U, 0.25, device=device)):
        got, want = rule(U, device="cuda"), rule(U)
        assert_array_equal(host(got.aggregate), want.aggregate)
        assert_array_equal(got.used, want.used)
        assert_array_equal(got.rejected, want.rejected)


def test_coordinate_rule_on_device_input():
    U = np.arange(12, dtype=np.float64).reshape(4, 3)
    res = fastmb.coordinate_median(cuda.to_device(U), device="cuda")
    assert hasattr(res.aggregate, "copy_to_host")
    assert_array_equal(res.aggregate.copy_to_host(), np.median(U, axis=0))


@pytest.mark.parametrize("k", [1, 7, 15, 64, 300])
def test_topk_equals_cpu(k):
    rng = np.random.default_rng(k)
    u = rng.normal(size=300).astype(np.float32)
    u[10:20] = 1.5     # ties at the threshold go to the lowest indices
    u[50:60] = -1.5
    r_cpu = 0.1 * rng.normal(size=300).astype(np.float32)
    r_gpu = r_cpu.copy()
    want = fastmb.topk(u, k, residual=r_cpu)
    got = fastmb.topk(u, k, residual=r_gpu, device="cuda")
    assert_array_equal(got.indices, want.indices)
    assert_array_equal(got.values, want.values)
    assert_array_equal(r_gpu, r_cpu)
    plain = fastmb.topk(u, k, device="cuda")
    assert_array_equal(plain.indices, fastmb.topk(u, k).indices)


def test_topk_device_residual_and_errors():
    u = np.array([0.1, -3.0, 2.0, 0.5, np.nan], np.float64)
    r = cuda.to_device(np.zeros(5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastmb.topk(u, 2, residual=r, device="cuda")
    assert_array_equal(r.copy_to_host(), 0)  # untouched on failure
    u[4] = 0.0
    du = cuda.to_device(u)
    with pytest.raises(TypeError, match="residual must be a GPU array"):
        fastmb.topk(du, 2, residual=np.zeros(5), device="cuda")
    s = fastmb.topk(du, 2, residual=r, device="cuda")
    assert_array_equal(s.indices.copy_to_host(), [1, 2])
    assert_array_equal(r.copy_to_host(), [0.1, 0, 0, 0.5, 0])


# ----------------------------------------------------------------------------- environment


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depth_slices_match_cpu(dtype):
    """``fastmb.slicing.forward``/``backward`` on the GPU against the CPU kernels (checked
    against the naive references): every range of a 3-layer MLP, per row and summed, the
    gradient crossing the cut, and the whole model split in two."""
    from fastmb.slicing import backward, forward

    model = fastmb.MLP([5, 6, 4, 3], activation="tanh", loss="softmax")
    rng = np.random.default_rng(3)
    p = model.init(seed=2, dtype=dtype)
    X = rng.normal(size=(9, 5)).astype(dtype)
    rtol, atol = (RTOL32, ATOL32) if dtype == np.float32 else (1e-12, 1e-13)
    for lo, hi in [(0, 1), (0, 3), (1, 3), (1, 2), (2, 3)]:
        A = X if lo == 0 else forward(model, p, X, 0, lo)
        out = forward(model, p, A, lo, hi, device="cuda")
        assert out.dtype == dtype
        assert_allclose(out, forward(model, p, A, lo, hi), rtol=rtol, atol=atol)
        G = rng.normal(size=(9, model.sizes[hi])).astype(dtype)
        for per_sample in (False, True):
            g, G_in = backward(model, p, A, G, lo, hi, per_sample=per_sample, device="cuda")
            g_cpu, G_in_cpu = backward(model, p, A, G, lo, hi, per_sample=per_sample)
            assert_allclose(g, g_cpu, rtol=rtol, atol=10 * atol)
            if lo == 0:
                assert G_in is None
            else:
                assert_allclose(G_in, G_in_cpu, rtol=rtol, atol=atol)
    H = forward(model, p, X, 0, 1, device="cuda")
    assert_allclose(forward(model, p, H, 1, device="cuda"),
                    fastmb.decision_function(model, p, X), rtol=rtol, atol=atol)


def test_depth_slice_errors_on_gpu():
    import scipy.sparse as sp

    from fastmb.slicing import backward, forward

    model = fastmb.MLP([4, 5, 2])
    p = model.init()
    X = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="sparse"):
        forward(model, p, sp.csr_matrix(X), device="cuda")
    H = forward(model, p, X, 0, 1, device="cuda")
    H[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        forward(model, p, H, 1, device="cuda")
    G = np.ones((3, 2), np.float32)
    G[2, 0] = np.inf
    with pytest.raises(ValueError, match="G_out contains NaN or Inf"):
        backward(model, p, X, G, 0, device="cuda")
    with pytest.raises(ValueError, match="device"):
        forward(model, p, X, device="tpu")


def test_import_never_needs_numba_cuda():
    """With numba.cuda unimportable, fastmb imports and runs on the CPU, and device='cuda'
    says what to install."""
    code = ("import sys; sys.modules['numba.cuda'] = None\n"
            "import numpy as np, fastmb\n"
            "m = fastmb.Linear(2)\n"
            "print(fastmb.grad(m, m.init(), np.ones((3, 2)), np.ones(3)))\n"
            "try:\n"
            "    fastmb.grad(m, m.init(), np.ones((3, 2)), np.ones(3), device='cuda')\n"
            "except fastmb.CUDAUnavailableError as e:\n"
            "    print('ERR', e)\n")
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert "ERR device='cuda' needs numba-cuda" in res.stdout
    assert "pip install 'fastmb[cuda]'" in res.stdout


def test_no_gpu_is_a_clear_error():
    code = ("import numpy as np, fastmb\nfrom numba import cuda\n"
            "if cuda.is_available(): print('GPU'); raise SystemExit\n"
            "try:\n"
            "    fastmb.fedavg(np.ones((2, 3)), device='cuda')\n"
            "except fastmb.CUDAUnavailableError as e:\n"
            "    print('ERR', e)\n")
    res = _run(code, NUMBA_ENABLE_CUDASIM="0")
    assert res.returncode == 0, res.stderr
    if res.stdout.startswith("GPU"):
        pytest.skip("a GPU is present")
    assert "ERR device='cuda' needs a usable NVIDIA GPU" in res.stdout
    assert "NUMBA_ENABLE_CUDASIM=1" in res.stdout


def test_kernels_compile_to_ptx():
    """Every kernel typed and compiled by the real CUDA compiler (the simulator runs them
    as Python and would not notice a construct the CUDA target rejects)."""
    res = subprocess.run([sys.executable, "-m", "tests.cuda_ptx", "7.5", "8.7"],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"},
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    if res.returncode == 77:
        pytest.skip(res.stdout.strip() + ' (pip install "fastmb[cuda13]" to run this test)')
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "compiled" in res.stdout


# ----------------------------------------------------------------------------- benchmarks


def test_cuda_figures_smoke():
    """The GPU figures script end to end at its smallest scale (here on the simulator)."""
    from benchmarks import cuda_figures

    res = cuda_figures.run("tiny", repeat=1, threads=4, echo=lambda *a: None)
    names = [r["name"] for r in res["rows"]]
    assert names[:2] == ["per-sample grad, logistic", "fedavg"]
    assert all(r["seconds"] > 0 for r in res["rows"])
    assert res["copy_bandwidth"] > 0
    assert res["rows"][-1]["peer_seconds"] > 0


def test_asv_cuda_classes_skip_without_a_gpu():
    from benchmarks import bench_cuda

    if SIM:
        with pytest.raises(NotImplementedError, match="simulator"):
            bench_cuda.FedAvg().setup((4, 100))


def test_readme_gpu_example_runs():
    """The README's GPU example, as written (here on the simulator)."""
    code = readme_code("## On a GPU (numba-cuda)")
    assert 'device="cuda"' in code
    exec(compile(code, "README.md", "exec"), {})
