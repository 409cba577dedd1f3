"""Depth slices (``fastmb.slicing``): layers [a, b) forward and backward on their own.

Against the naive references (``naive.slice_forward``/``slice_backward``), finite
differences through the loss, and the unsplit model: a forward pass split at any cut is
``decision_function`` bit for bit, and gradients joined across a cut are the whole
model's per-row gradients bit for bit (``per_sample_grad``'s to rounding).
"""

import numpy as np
import pytest
import scipy.sparse as sp

import fastmb
from fastmb.slicing import (
    backward,
    check_cut,
    forward,
    loss_head,
    param_range,
    split_sgd,
    timeline,
)

from . import naive
from .conftest import MODEL_CASES, make_data, readme_code

DEEP = fastmb.MLP([5, 7, 6, 4, 3], activation="tanh", loss="softmax")


def _ranges(model):
    L = model.n_layers
    return [(a, b) for a in range(L) for b in range(a + 1, L + 1)]


@pytest.mark.parametrize("name", [*sorted(MODEL_CASES), "deep"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_against_naive_and_predict(name, dtype):
    model = DEEP if name == "deep" else MODEL_CASES[name]()
    p, X, _ = make_data(model, 70, dtype=dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for a, b in _ranges(model):
        A = X if a == 0 else forward(model, p, X, 0, a)
        out = forward(model, p, A, a, b)
        assert out.dtype == dtype and out.shape == (70, model.sizes[b])
        ref = np.array([naive.slice_forward(model, p, r, a, b) for r in A])
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    F = fastmb.decision_function(model, p, X).reshape(70, -1)  # (n,) for one output
    for c in range(1, model.n_layers):
        np.testing.assert_array_equal(forward(model, p, forward(model, p, X, 0, c), c), F)


@pytest.mark.parametrize("name", [*sorted(MODEL_CASES), "deep"])
def test_backward_against_naive(name):
    model = DEEP if name == "deep" else MODEL_CASES[name]()
    p, X, _ = make_data(model, 70)
    rng = np.random.default_rng(3)
    for a, b in _ranges(model):
        A = X if a == 0 else forward(model, p, X, 0, a)
        G = rng.normal(size=(70, model.sizes[b]))
        per, G_in = backward(model, p, A, G, a, b, per_sample=True)
        total, G_in2 = backward(model, p, A, G, a, b)
        p0, p1 = param_range(model, a, b)
        assert per.shape == (70, p1 - p0)
        refs = [naive.slice_backward(model, p, r, g, a, b) for r, g in zip(A, G)]
        np.testing.assert_allclose(per, np.array([r[0] for r in refs]), rtol=1e-10,
                                   atol=1e-12)
        np.testing.assert_allclose(total, per.sum(0), rtol=1e-12, atol=1e-12)
        if a == 0:
            assert G_in is None and G_in2 is None
        else:
            np.testing.assert_allclose(G_in, np.array([r[1] for r in refs]), rtol=1e-10,
                                       atol=1e-12)
            np.testing.assert_array_equal(G_in, G_in2)


@pytest.mark.parametrize("name", ["mlp-relu-softmax", "mlp-tanh-logistic", "deep",
                                  "mlp-sigmoid-squared", "linear-huber"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_split_gradients_equal_the_unsplit_model(name, dtype):
    """Client [0, c), server [c, L) and the loss: the joined per-row gradients are the
    whole model's per-row gradients bit for bit (the range [0, L): forward, loss head,
    backward, the code SGD's per-sample path runs), and ``per_sample_grad``'s (matrix
    products over a block of rows: another summation order) to rounding."""
    model = DEEP if name == "deep" else MODEL_CASES[name]()
    p, X, y = make_data(model, 50, dtype=dtype)
    value, D = loss_head(model, forward(model, p, X), y)
    whole, _ = backward(model, p, X, D, per_sample=True)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    ref = fastmb.per_sample_grad(model, p, X, y)
    np.testing.assert_allclose(whole, ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert value == pytest.approx(fastmb.loss(model, p, X, y), rel=tol)
    for c in range(1, model.n_layers):
        H = forward(model, p, X, 0, c)                 # client -> server: activations
        F = forward(model, p, H, c)
        v2, D2 = loss_head(model, F, y)
        assert v2 == value
        np.testing.assert_array_equal(D2, D)
        g_top, G_cut = backward(model, p, H, D, c, per_sample=True)   # server -> client
        g_bottom, _ = backward(model, p, X, G_cut, 0, c, per_sample=True)
        np.testing.assert_array_equal(np.concatenate([g_bottom, g_top], axis=1), whole)


def test_gradients_against_finite_differences():
    """The sum of a two-slice backward is the mean loss's gradient times n, by central
    differences in float64."""
    model = DEEP
    p, X, y = make_data(model, 12)
    H = forward(model, p, X, 0, 2)
    _, D = loss_head(model, forward(model, p, H, 2), y)
    g_top, G_cut = backward(model, p, H, D, 2)
    g_bottom, _ = backward(model, p, X, G_cut, 0, 2)
    fd = naive.finite_difference_grad(model, p, X, y)
    np.testing.assert_allclose(np.concatenate([g_bottom, g_top]) / len(X), fd, rtol=1e-5,
                               atol=1e-7)


def test_sparse_input_to_the_first_slice():
    model = fastmb.MLP([6, 5, 2])
    p, X, _ = make_data(model, 30)
    X[X < 0.5] = 0.0
    S = sp.csr_matrix(X)
    np.testing.assert_array_equal(forward(model, p, S, 0, 1), forward(model, p, X, 0, 1))
    G = np.ones((30, 5))
    np.testing.assert_allclose(backward(model, p, S, G, 0, 1)[0],
                               backward(model, p, X, G, 0, 1)[0], rtol=1e-12)
    with pytest.raises(TypeError, match="dense"):
        forward(model, p, sp.csr_matrix(np.ones((3, 5))), 1)


def test_bad_slices_and_inputs():
    model = DEEP
    p, X, _ = make_data(model, 10)
    for a, b in [(0, 0), (2, 1), (0, 5), (-1, 2)]:
        with pytest.raises(ValueError, match="slice"):
            forward(model, p, X, a, b)
    for c in (0, 4, 7):
        with pytest.raises(ValueError, match="cut"):
            check_cut(model, c)
    with pytest.raises(TypeError):
        check_cut(model, 1.5)
    with pytest.raises(ValueError, match=r"\(n, 7\)"):
        forward(model, p, np.ones((3, 6)), 1)
    H = forward(model, p, X, 0, 1)
    with pytest.raises(ValueError, match="G_out"):
        backward(model, p, H, np.ones((10, 2)), 1, 2)
    G = np.ones((10, 6))
    G[4, 1] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        backward(model, p, H, G, 1, 2)
    H[3, 0] = np.inf
    with pytest.raises(ValueError, match="row 3"):
        forward(model, p, H, 1)
    with pytest.raises(ValueError, match="F must"):
        loss_head(model, np.ones((2, 4)), [0, 1])


# --------------------------------------------------------------------------- split learning

SPLIT_OPTIONS = [dict(), dict(momentum=0.9), dict(momentum=0.5, nesterov=True, l2=0.01),
                 dict(optimizer="adam", betas=(0.8, 0.99)),
                 dict(weight_decay=0.01, prox_mu=0.1, schedule="invscaling", power_t=0.3),
                 dict(schedule="cosine", shuffle=False)]


@pytest.mark.parametrize("opts", SPLIT_OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("batch", [3, 16], ids=["per-row", "batched"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_sgd_is_sgd_bit_for_bit(opts, batch, dtype):
    """Every cut, vanilla and U-shaped, equals unsplit ``sgd`` with the same seed."""
    model = DEEP
    p, X, y = make_data(model, 45, dtype=dtype)
    ref = fastmb.sgd(model, p, X, y, epochs=2, batch_size=batch, lr=0.05, seed=4, **opts)
    for cut, top in [(1, None), (2, None), (3, None), (1, 2), (1, 3), (2, 3)]:
        res = split_sgd(model, p, X, y, cut, top=top, epochs=2, batch_size=batch, lr=0.05,
                        seed=4, **opts)
        np.testing.assert_array_equal(res.params, ref)
        assert res.params.dtype == dtype
        assert res.steps == 2 * -(-45 // batch)


def test_split_sgd_messages_and_bytes():
    model = fastmb.MLP([6, 5, 4, 2])
    p, X, y = make_data(model, 20, dtype=np.float32)
    res = split_sgd(model, p, X, y, 1, batch_size=8, epochs=1)
    # 20 rows x 5 floats up with 20 int64 labels; 20 x 5 floats of gradient down
    assert (res.bytes_up, res.bytes_down, res.messages) == (20 * 5 * 4 + 20 * 8, 20 * 5 * 4, 6)
    res = split_sgd(model, p, X, y, 1, top=2, batch_size=8, epochs=1)
    # U-shaped: no labels travel; activations and gradients of both cuts
    assert (res.bytes_up, res.bytes_down, res.messages) == (20 * (5 + 4) * 4,
                                                             20 * (4 + 5) * 4, 12)


def test_split_sgd_sparse_and_regression():
    model = fastmb.MLP([6, 5, 2], loss="squared")
    p, X, y = make_data(model, 30)
    X[np.abs(X) < 0.7] = 0.0
    S = sp.csr_matrix(X)
    for batch in (2, 10):
        ref = fastmb.sgd(model, p, S, y, batch_size=batch, lr=0.05, momentum=0.9)
        res = split_sgd(model, p, S, y, 1, batch_size=batch, lr=0.05, momentum=0.9)
        np.testing.assert_array_equal(res.params, ref)
        np.testing.assert_array_equal(res.params, fastmb.sgd(model, p, X, y, batch_size=batch,
                                                             lr=0.05, momentum=0.9))


def test_split_sgd_bad_input():
    model = DEEP
    p, X, y = make_data(model, 10)
    with pytest.raises(ValueError, match="cut"):
        split_sgd(model, p, X, y, 4)
    with pytest.raises(ValueError, match="cut"):
        split_sgd(fastmb.Linear(5), fastmb.Linear(5).init(), X, y, 1)
    with pytest.raises(ValueError, match="top"):
        split_sgd(model, p, X, y, 2, top=2)
    with pytest.raises(ValueError, match="lr"):
        split_sgd(model, p, X, y, 2, lr=0)
    X[7, 2] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        split_sgd(model, p, X, y, 2)


# --------------------------------------------------------------------------- micro-batches


@pytest.mark.parametrize("pipeline", ["gpipe", "1f1b"])
def test_microbatches_give_the_unpipelined_step(pipeline):
    """Per row (batch < 8) the micro-batches' gradients add in the unsplit row order: bit
    for bit ``sgd``; batched, the matrix products are summed in pieces: to rounding."""
    model = DEEP
    p, X, y = make_data(model, 45)
    for batch, m in [(6, 3), (6, 2), (4, 4), (16, 4), (16, 2)]:
        ref = fastmb.sgd(model, p, X, y, epochs=2, batch_size=batch, lr=0.05, momentum=0.9)
        for cut, top in [(2, None), (1, 3)]:
            res = split_sgd(model, p, X, y, cut, top=top, epochs=2, batch_size=batch, lr=0.05,
                            momentum=0.9, microbatches=m, pipeline=pipeline)
            if batch < 8:
                np.testing.assert_array_equal(res.params, ref)
            else:
                np.testing.assert_allclose(res.params, ref, rtol=1e-12, atol=1e-14)
            sizes = [min(batch, 45 - lo) for lo in range(0, 45, batch)]
            n_micro = sum(-(-k // (batch // m)) for k in sizes)
            assert res.messages == (2 if top is None else 4) * 2 * n_micro
            tl = res.timeline
            assert tl.peak_micro.tolist() == ([m] * len(tl.busy) if pipeline == "gpipe"
                                              else [min(m, len(tl.busy) - s)
                                                    for s in range(len(tl.busy))])


def test_microbatches_must_divide_the_batch():
    model = DEEP
    p, X, y = make_data(model, 10)
    with pytest.raises(ValueError, match="divide"):
        split_sgd(model, p, X, y, 2, batch_size=8, microbatches=3)
    with pytest.raises(ValueError, match="pipeline"):
        split_sgd(model, p, X, y, 2, pipeline="zigzag")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p_stages,m", [(2, 1), (2, 4), (3, 4), (4, 8), (5, 3)])
def test_timeline_bubble_formulas(schedule, p_stages, m):
    t = timeline([0.5] * p_stages, [1.0] * p_stages, m, schedule)
    assert t.idle_fraction == pytest.approx((p_stages - 1) / (m + p_stages - 1))
    assert t.makespan == pytest.approx(1.5 * (m + p_stages - 1))
    rng = np.random.default_rng(p_stages * 10 + m)
    times = rng.uniform(0.1, 2.0, p_stages)
    fwd_only = timeline(times, np.zeros(p_stages), m, schedule)
    assert fwd_only.makespan == pytest.approx(times.sum() + (m - 1) * times.max())


def test_timeline_links_memory_and_bytes():
    t = timeline([1.0, 1.0], [2.0, 2.0], 4, "gpipe", up_bytes=[100], down_bytes=[50],
                 bandwidth=100.0, latency=0.5, activation_bytes=[10, 20])
    # each transfer: 0.5 s latency + bytes / bandwidth; the link carries one at a time
    assert t.bytes_up == 400 and t.bytes_down == 200
    assert t.activation_bytes.tolist() == [40, 80]
    ends = {(s, k, i): e for s, k, i, _, e in t.ops}
    assert ends[(1, "F", 0)] == pytest.approx(1.0 + 1.5 + 1.0)
    free = timeline([1.0, 1.0], [2.0, 2.0], 4, "gpipe")
    assert t.makespan > free.makespan
    with pytest.raises(ValueError, match="same length"):
        timeline([1.0], [1.0, 2.0], 2)
    with pytest.raises(ValueError, match="one per link"):
        timeline([1.0, 1.0], [1.0, 1.0], 2, up_bytes=[1, 2])
    with pytest.raises(ValueError, match="schedule"):
        timeline([1.0], [1.0], 2, "zigzag")


def test_readme_example_runs(capsys):
    """The README's slicing example, as written."""
    code = readme_code("## Model slicing")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.split("\n")
    assert out[0] == "792000 768000 188" and out[1] == "[3 2 1]"


def test_party_checks_what_reaches_its_kernels():
    """A party's calls are a door to kernels without bounds checks: rows, labels, widths
    and gradient shapes are checked first."""
    from fastmb.learn.options import TrainOptions
    from fastmb.slicing.split import Party

    model = DEEP
    p, X, y = make_data(model, 10)
    opts = TrainOptions(batch_size=4)
    client, server = Party(model, p, 0, 2, opts), Party(model, p, 2, 4, opts)
    H = client.forward(X, [0, 1, 2])
    G = server.top(H, [0, 1, 2], y[:3])
    assert client.backward(X, [0, 1, 2], G) is None
    for rows in ([0, 10], [-1], [0.5]):
        with pytest.raises((ValueError, TypeError), match="rows"):
            client.forward(X, rows)
    with pytest.raises(ValueError, match="class indices"):
        server.top(H, [0, 1, 2], [0, 1, 99])
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        server.top(X, [0, 1, 2], y[:3])
    with pytest.raises(ValueError, match="G_out"):
        client.backward(X, [0, 1, 2], G[:2])
    with pytest.raises(ValueError, match="loss"):
        client.top(X, [0], y[:1])


# --------------------------------------------------------------------------- SplitFed


@pytest.mark.parametrize("opts", [dict(batch_size=16), dict(batch_size=4, momentum=0.9),
                                  dict(batch_size=16, optimizer="adam", epochs=2),
                                  dict(batch_size=5, prox_mu=0.1, schedule="cosine")],
                         ids=["batched", "per-row-momentum", "adam", "prox-cosine"])
def test_splitfed_v1_is_fedavg_of_train_clients(opts):
    model = DEEP
    p, X, y = make_data(model, 90)
    off = [0, 20, 45, 70, 90]
    for cut, clients in [(1, None), (2, [3, 0, 2]), (3, [1])]:
        res = fastmb.slicing.splitfed(model, p, X, y, off, cut, clients=clients, lr=0.05,
                                      seed=7, engine="parties", **opts)
        ids = np.arange(4) if clients is None else np.array(clients)
        U = fastmb.train_clients(model, p, X, y, off, clients=ids, lr=0.05, seed=7, **opts)
        rows = np.diff(off)[ids]
        np.testing.assert_array_equal(res.params, fastmb.fedavg(U, weights=rows))
        fast = fastmb.slicing.splitfed(model, p, X, y, off, cut, clients=clients, lr=0.05,
                                       seed=7, **opts)
        np.testing.assert_array_equal(fast.params, res.params)
        assert (fast.bytes_up, fast.bytes_down, fast.messages) == (
            res.bytes_up, res.bytes_down, res.messages)


def test_splitfed_v2_trains_one_server_block_in_sequence():
    """The naive form of V2: each client trains the whole model from the global client
    block and the server block as the previous client left it (its own stream); the
    client blocks are averaged, the server block is the last client's."""
    model = DEEP
    p, X, y = make_data(model, 60)
    off = np.array([0, 15, 40, 60])
    cut = 2
    p_cut = param_range(model, 0, cut)[1]
    for opts in (dict(batch_size=8), dict(batch_size=3, weight_decay=0.01)):
        res = fastmb.slicing.splitfed(model, p, X, y, off, cut, version=2, clients=[2, 0, 1],
                                      lr=0.05, **opts)
        server = p[p_cut:]
        bottoms = []
        for k in (2, 0, 1):
            full = np.concatenate([p[:p_cut], server])
            out = fastmb.train_clients(model, full, X, y, off, clients=[k], lr=0.05, **opts)[0]
            bottoms.append(out[:p_cut])
            server = out[p_cut:]
        want = np.concatenate([fastmb.fedavg(np.stack(bottoms), weights=[20, 15, 25]), server])
        np.testing.assert_array_equal(res.params, want)
        assert res.messages == 2 * sum(-(-n // opts["batch_size"]) for n in (20, 15, 25))


def test_splitfed_bad_input():
    model = DEEP
    p, X, y = make_data(model, 20)
    with pytest.raises(ValueError, match="version"):
        fastmb.slicing.splitfed(model, p, X, y, [0, 10, 20], 1, version=3)
    with pytest.raises(ValueError, match="client_offsets"):
        fastmb.slicing.splitfed(model, p, X, y, [0, 10, 30], 1)
    with pytest.raises(ValueError, match="clients"):
        fastmb.slicing.splitfed(model, p, X, y, [0, 10, 20], 1, clients=[2])
    with pytest.raises(ValueError, match="cut"):
        fastmb.slicing.splitfed(model, p, X, y, [0, 10, 20], 0)
    with pytest.raises(ValueError, match="engine"):
        fastmb.slicing.splitfed(model, p, X, y, [0, 10, 20], 1, engine="gpu")


# --------------------------------------------------------------------------- command line


def test_simulate_split_at(tmp_path, capsys):
    """``fastmb simulate --split-at``: SplitFed rounds beside FedAvg, bytes, the timeline."""
    import json

    from fastmb.cli import main

    args = ["simulate", "--data", "synthetic", "--n-samples", "600", "--n-features", "8",
            "--n-classes", "3", "--hidden", "12,8", "--clients", "6", "--fraction", "0.5",
            "--rounds", "3", "--epochs", "1", "--batch-size", "8", "--no-progress",
            "--no-plot"]
    out = tmp_path / "split"
    assert main([*args, "--out", str(out), "--split-at", "2", "--microbatches", "2",
                 "--schedule", "1f1b", "--splitfed", "2"]) == 0
    text = capsys.readouterr().out
    assert "FedAvg:" in text and "SplitFed round   3/3" in text and "1f1b" in text
    s = json.loads((out / "summary.json").read_text())
    assert len(s["splitfed"]["history"]) == 3 and s["splitfed"]["bytes_up"] > 0
    assert s["timeline"]["peak_micro"] == [2, 1]
    assert 0 <= s["splitfed"]["final_accuracy"] <= 1
    cases = [(["--split-at", "3"], "split_at"), (["--split-at", "1", "--microbatches", "3"],
                                                 "divide"),
             (["--split-at", "1", "--schedule", "zigzag"], "schedule"),
             (["--split-at", "1", "--splitfed", "3"], "splitfed")]
    for flags, match in cases:
        capsys.readouterr()
        code = main([*args, "--out", str(tmp_path / "bad"), *flags])
        assert code != 0
        assert match in capsys.readouterr().err


# --------------------------------------------------------------------------- width slices


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.3, 0.01])
@pytest.mark.parametrize("shift", [0, 5])
def test_width_slice_against_naive(rate, shift):
    from fastmb.slicing import width_slice

    model = fastmb.MLP([5, 10, 7, 3], activation="tanh")
    p = model.init(seed=2, dtype=np.float64)
    sl = width_slice(model, rate, shift=shift)
    sub, sizes = naive.width_submodel(model, p, rate, shift)
    assert list(sl.model.sizes) == sizes
    np.testing.assert_array_equal(p[sl.index], sub)
    assert np.unique(sl.index).shape == sl.index.shape
    # the sub-model computes what the full model computes with the other units silenced
    X = np.random.default_rng(0).normal(size=(9, 5))
    masked = p.copy()
    for l, (W, _) in enumerate(model.layers(masked)):
        if l > 0:
            dropped = np.setdiff1d(np.arange(W.shape[0]), sl.units[l])
            W[dropped, :] = 0.0
    np.testing.assert_allclose(fastmb.decision_function(sl.model, p[sl.index], X),
                               fastmb.decision_function(model, masked, X), rtol=1e-12,
                               atol=1e-12)


def test_width_rate_one_is_the_model_and_fedavg():
    from fastmb.slicing import WidthMean, multiply_adds, width_slice

    model = DEEP
    p, X, y = make_data(model, 60)
    sl = width_slice(model, 1.0)
    np.testing.assert_array_equal(sl.index, np.arange(model.n_params))
    assert sl.model == model
    U = fastmb.train_clients(model, p, X, y, [0, 20, 40, 60], lr=0.05)
    agg = WidthMean(model)
    for u, n in zip(U, [20, 20, 20]):
        agg.add(u, sl, weight=n)
    np.testing.assert_allclose(agg.result(p), fastmb.fedavg(U, weights=[20, 20, 20]),
                               rtol=1e-14, atol=1e-15)
    lin = fastmb.Linear(5, 3, loss="softmax")
    np.testing.assert_array_equal(width_slice(lin, 0.25).index, np.arange(lin.n_params))
    assert multiply_adds(model) == 5 * 7 + 7 * 6 + 6 * 4 + 4 * 3
    assert multiply_adds(model, 0.5) == 5 * 4 + 4 * 3 + 3 * 2 + 2 * 3


def test_heterogeneous_round_against_naive():
    from fastmb.slicing import WidthMean, train_width_clients

    model = fastmb.MLP([5, 8, 6, 3])
    p, X, y = make_data(model, 80)
    off = [0, 20, 35, 60, 80]
    rates = [1.0, 0.5, 0.25, 0.5]
    for shift in (0, 3):
        out = train_width_clients(model, p, X, y, off, rates, shift=shift, clients=[3, 0, 2],
                                  lr=0.05, batch_size=8, seed=1)
        for (u, sl), k in zip(out, [3, 0, 2]):
            assert sl.rate == rates[k]
            ref = fastmb.train_clients(sl.model, p[sl.index], X, y, off, clients=[k], lr=0.05,
                                       batch_size=8, seed=1)[0]
            np.testing.assert_array_equal(u, ref)
        agg = WidthMean(model)
        for (u, sl), n in zip(out, [20, 20, 25]):
            agg.add(u, sl, weight=n)
        want = naive.width_mean(model.n_params, p, [u for u, _ in out],
                                [sl.index for _, sl in out], [20, 20, 25])
        np.testing.assert_allclose(agg.result(p), want, rtol=1e-13, atol=1e-14)
        held = agg.held()
        np.testing.assert_array_equal(agg.result(p)[~held], p[~held])
        at_once = WidthMean(model)
        at_once.add_all(out, [20, 20, 25])
        np.testing.assert_array_equal(at_once.result(p), agg.result(p))
        assert at_once.count == agg.count == 3


@pytest.mark.parametrize("opts", [
    dict(batch_size=4, lr=0.05, momentum=0.9, epochs=[2, 1, 3]),           # sample by sample
    dict(batch_size=8, lr=0.01, optimizer="adam", schedule="cosine", epochs=3),
    dict(batch_size=8, lr=0.05, clip_norm=1.0, noise_multiplier=0.5, max_steps=[2, -1, 5]),
    dict(batch_size=8, lr=0.05, weight_decay=1e-3, prox_mu=0.1, shuffle=False),
])
def test_width_clients_one_call_equal_per_client(opts, monkeypatch):
    """Clients of three widths in one kernel call train each client's sub-model bit for bit
    as ``train_clients`` does alone: every path (per sample, batched, DP-SGD), rows given by
    a permutation, sample weights, per-client epochs and step limits, and a training cut
    into chunks of epochs (the optimizer state carried between calls)."""
    from fastmb.learn import training as T
    from fastmb.slicing import train_width_clients

    model = fastmb.MLP([5, 8, 6, 3])
    p, X, y = make_data(model, 90)
    rng = np.random.default_rng(4)
    rows = rng.permutation(90)
    sw = rng.uniform(0.5, 2.0, 90)
    off = [0, 20, 35, 60, 90]
    rates = [0.25, 1.0, 0.5, 0.5]
    clients = [1, 3, 0]
    for chunk in (T.CHUNK_WORK, 2000):   # 2000: a few epochs per call
        monkeypatch.setattr(T, "CHUNK_WORK", chunk)
        w = None if "clip_norm" in opts else sw   # (DP-SGD takes no sample weights)
        out = train_width_clients(model, p, X, y, off, rates, rows=rows, clients=clients,
                                  sample_weight=w, seed=7, **opts)
        for i, ((u, sl), k) in enumerate(zip(out, clients)):
            assert sl.rate == rates[k]
            one = {key: (v[i] if isinstance(v, list) else v) for key, v in opts.items()}
            ref = fastmb.train_clients(sl.model, p[sl.index], X, y, off, rows=rows,
                                       clients=[k], sample_weight=w, seed=7, **one)[0]
            np.testing.assert_array_equal(u, ref)


def test_width_bad_input():
    from fastmb.slicing import WidthMean, train_width_clients, width_slice
    from fastmb.slicing.width import WidthSlice

    model = DEEP
    p, X, y = make_data(model, 20)
    for r in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="rate"):
            width_slice(model, r)
    with pytest.raises(ValueError, match="rates"):
        train_width_clients(model, p, X, y, [0, 10, 20], [1.0])
    with pytest.raises(ValueError, match="rates"):
        train_width_clients(model, p, X, y, [0, 10, 20], [1.0, 2.0])
    with pytest.raises(ValueError, match="clients"):
        train_width_clients(model, p, X, y, [0, 10, 20], [1.0, 0.5], clients=[2])
    with pytest.raises(TypeError, match="device"):
        train_width_clients(model, p, X, y, [0, 10, 20], [1.0, 0.5], device="cuda")
    Xn = X.copy()
    Xn[13, 0] = np.nan
    with pytest.raises(ValueError, match="row 13"):
        train_width_clients(model, p, Xn, y, [0, 10, 20], [1.0, 0.5])
    agg = WidthMean(model)
    sl = width_slice(model, 0.5)
    with pytest.raises(ValueError, match="parameters"):
        agg.add(np.ones(3), sl)
    bad = WidthSlice(sl.model, sl.index + model.n_params, 0.5, 0, sl.units)
    with pytest.raises(ValueError, match="index"):
        agg.add(np.ones(sl.model.n_params), bad)
    dup = WidthSlice(sl.model, np.zeros_like(sl.index), 0.5, 0, sl.units)
    with pytest.raises(ValueError, match="repeats"):
        agg.add(np.ones(sl.model.n_params), dup)
    other = width_slice(fastmb.MLP([4, 6, 3]), 0.5)
    with pytest.raises(ValueError):
        agg.add(np.ones(other.model.n_params), other)
    with pytest.raises(TypeError, match="WidthSlice"):
        agg.add(np.ones(3), (1, 2))
    with pytest.raises(ValueError, match="NaN"):
        agg.add(np.full(sl.model.n_params, np.nan), sl)
    good = (np.ones(sl.model.n_params), sl)
    with pytest.raises(ValueError, match="weights"):
        agg.add_all([good, good], [1.0])
    with pytest.raises(ValueError, match="weights"):
        agg.add_all([good], [-1.0])
    with pytest.raises(TypeError, match=r"updates\[1\]"):
        agg.add_all([good, np.ones(3)], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"updates\[1\] must have"):   # nothing added
        agg.add_all([good, (np.ones(2), sl)], [1.0, 1.0])
    assert agg.count == 0 and not agg.held().any()


def test_simulate_rates(tmp_path, capsys):
    """``fastmb simulate --rates``: width slices beside FedAvg on the full-width clients."""
    import json

    from fastmb.cli import main

    args = ["simulate", "--data", "synthetic", "--n-samples", "600", "--n-features", "8",
            "--n-classes", "3", "--hidden", "12", "--clients", "10", "--fraction", "0.5",
            "--rounds", "3", "--epochs", "1", "--batch-size", "8", "--no-progress",
            "--no-plot"]
    out = tmp_path / "w"
    assert main([*args, "--out", str(out), "--rates", "1,0.5", "--rate-mix", "0.5,0.5",
                 "--rolling"]) == 0
    text = capsys.readouterr().out
    assert "FedRolex" in text and "accuracy by width" in text
    s = json.loads((out / "summary.json").read_text())
    assert set(s["accuracy_by_rate"]) == {"1.0", "0.5"}
    assert sum(s["client_rates"].values()) == 10
    for flags, match in [(["--rates", "1,0.5", "--rate-mix", "1"], "rate_mix"),
                         (["--rates", "0.5,0.2", "--rate-mix", "1,1"], "include 1"),
                         (["--rates", "1,1.5", "--rate-mix", "1,1"], "(0, 1]")]:
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / "bad"), *flags]) != 0
        assert match in capsys.readouterr().err


# --------------------------------------------------------------------------- compact models

FORMATS = ["f32", "csr", "int8", "csr+int8", "fp16", "csr+fp16"]


def test_prune_layer_and_global():
    from fastmb.slicing import prune

    model = DEEP
    p, _, _ = make_data(model, 5)
    q = prune(model, p, 0.6)
    for (W, b), (W0, b0) in zip(model.layers(q), model.layers(p)):
        assert np.mean(W == 0) == pytest.approx(np.floor(0.6 * W.size) / W.size)
        kept = W != 0
        assert np.abs(W0[~kept]).max() <= np.abs(W0[kept]).min()
        np.testing.assert_array_equal(b, b0)
    g = prune(model, p, 0.5, scope="global")
    weights = np.concatenate([W.ravel() for W, _ in model.layers(g)])
    assert np.mean(weights == 0) == pytest.approx(np.floor(0.5 * weights.size) / weights.size)
    assert np.array_equal(prune(model, p, 0.0), p)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="sparsity"):
            prune(model, p, bad)
    with pytest.raises(ValueError, match="scope"):
        prune(model, p, 0.5, scope="row")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["deep", "linear-softmax", "mlp-relu-huber"])
def test_compact_inference_against_naive(fmt, name):
    from fastmb.slicing import CompactModel, prune

    model = DEEP if name == "deep" else MODEL_CASES[name]()
    p, X, _ = make_data(model, 40, dtype=np.float32)
    q = prune(model, p, 0.5)
    L = model.n_layers
    for start, stop in [(0, L)] + ([(0, 2), (2, L)] if L > 2 else []):
        cm = CompactModel.from_params(model, q, fmt, start=start, stop=stop)
        A = X if start == 0 else forward(model, q, X, 0, start)
        out = cm.decision_function(A)
        ref = np.array([naive.compact_forward(model, q, r, fmt, start, stop) for r in A])
        np.testing.assert_allclose(out, ref.reshape(out.shape), rtol=1e-5, atol=1e-5)
        back = CompactModel.from_bytes(cm.to_bytes())
        np.testing.assert_array_equal(back.decision_function(A), out)
        assert back.to_bytes() == cm.to_bytes()
    if fmt in ("f32", "csr"):  # exact weights: the model's own predictions
        cm = CompactModel.from_params(model, q, fmt)
        np.testing.assert_array_equal(cm.predict(X), fastmb.predict(model, q, X))


def test_compact_sizes_shrink_and_save_load(tmp_path):
    from fastmb.slicing import CompactModel, prune

    model = fastmb.MLP([64, 128, 10])
    q = prune(model, model.init(seed=0), 0.9)
    sizes = {f: CompactModel.from_params(model, q, f).nbytes for f in FORMATS}
    assert sizes["csr+int8"] < sizes["csr+fp16"] < sizes["csr"] < sizes["f32"]
    assert sizes["int8"] < sizes["fp16"] < sizes["f32"]
    cm = CompactModel.from_params(model, q, "csr+int8")
    cm.save(tmp_path / "m.fmbc")
    assert CompactModel.load(tmp_path / "m.fmbc").to_bytes() == cm.to_bytes()
    assert "csr+int8" in repr(cm)


def test_compact_file_refuses_truncation_and_flips():
    from fastmb.slicing import CompactModel

    model = fastmb.MLP([3, 4, 2])
    data = CompactModel.from_params(model, model.init(seed=1), "csr+int8").to_bytes()
    for n in range(len(data)):
        with pytest.raises(ValueError):
            CompactModel.from_bytes(data[:n])
    for i in range(len(data)):
        for bit in (0, 3, 7):
            b = bytearray(data)
            b[i] ^= 1 << bit
            with pytest.raises(ValueError):
                CompactModel.from_bytes(bytes(b))
    with pytest.raises(TypeError):
        CompactModel.from_bytes(3)


def test_compact_bad_input():
    from fastmb.slicing import CompactModel

    model = DEEP
    p, X, _ = make_data(model, 5)
    with pytest.raises(ValueError, match="format"):
        CompactModel.from_params(model, p, "int4")
    cm = CompactModel.from_params(model, p, "csr", start=0, stop=2)
    with pytest.raises(ValueError, match="last layer"):
        cm.predict(X)
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        cm.decision_function(np.ones((2, 3)))
    big = p.copy()
    big[0] = 1e6
    with pytest.raises(ValueError, match="half"):
        CompactModel.from_params(model, big, "fp16")
    X[1, 0] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        CompactModel.from_params(model, p, "f32").decision_function(X)


def test_asynchronous_split_learning_against_naive():
    """One step stale on the client: against the naive reference that keeps the client's
    previous weights explicitly; its first step is synchronous, later ones are not."""
    model = DEEP
    p, X, y = make_data(model, 30)
    for cut, batch in [(1, 4), (2, 10), (3, 16)]:
        res = split_sgd(model, p, X, y, cut, epochs=2, batch_size=batch, lr=0.1,
                        shuffle=False, asynchronous=True)
        ref = naive.async_split_sgd(model, p, X, y, cut, epochs=2, batch_size=batch, lr=0.1)
        np.testing.assert_allclose(res.params, ref, rtol=1e-10, atol=1e-12)
        sync = split_sgd(model, p, X, y, cut, epochs=2, batch_size=batch, lr=0.1,
                         shuffle=False)
        assert not np.array_equal(res.params, sync.params)
    one = split_sgd(model, p, X, y, 2, epochs=1, batch_size=30, lr=0.1, asynchronous=True)
    np.testing.assert_array_equal(one.params, split_sgd(model, p, X, y, 2, epochs=1,
                                                        batch_size=30, lr=0.1).params)
    with pytest.raises(TypeError, match="asynchronous"):
        split_sgd(model, p, X, y, 2, asynchronous="yes")


def test_prune_finetune_keeps_the_mask_and_recovers():
    from fastmb.slicing import prune, prune_finetune

    data = fastmb.data.digits()
    model = fastmb.MLP([64, 32, 10])
    p = fastmb.sgd(model, model.init(seed=0), data.X, data.y, epochs=10, lr=0.05,
                   momentum=0.9)
    pruned = prune(model, p, 0.9)
    tuned = prune_finetune(model, p, data.X, data.y, 0.9, epochs=3, lr=0.05, momentum=0.9)
    np.testing.assert_array_equal(tuned == 0, (pruned == 0) & (tuned == 0))
    for (W, _), (Wp, _) in zip(model.layers(tuned), model.layers(pruned)):
        np.testing.assert_array_equal(W == 0, Wp == 0)

    def acc(q):
        return fastmb.evaluate(model, q, data.X_test, data.y_test)["accuracy"]

    assert acc(tuned) > acc(pruned) + 0.05


def test_masked_sgd_against_naive_and_sgd():
    """Masked training: the pruned parameters are zero after every step (against the naive
    reference's masked SGD, float64); with nothing masked it is ``fastmb.sgd`` bit for bit,
    as it runs the training kernel's own code a mini-batch at a time."""
    from fastmb.slicing import masked_sgd, prune_finetune

    model = fastmb.MLP([5, 7, 3])
    p, X, y = make_data(model, 50)
    keep = np.random.default_rng(1).random(model.n_params) < 0.6
    opts = dict(epochs=2, batch_size=8, lr=0.1, momentum=0.9, seed=3)
    got = masked_sgd(model, p, X, y, keep, **opts)
    want = naive.sgd(model, np.where(keep, p, 0.0), X, y, keep=keep, key=naive.hash2(3, 0),
                     **{k: v for k, v in opts.items() if k != "seed"})
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert (got[~keep] == 0).all()
    everything = np.ones(model.n_params, bool)
    np.testing.assert_array_equal(masked_sgd(model, p, X, y, everything, **opts),
                                  fastmb.sgd(model, p, X, y, **opts))
    with pytest.raises(ValueError, match="boolean mask"):
        masked_sgd(model, p, X, y, keep.astype(int))
    with pytest.raises(ValueError, match="DP-SGD"):
        masked_sgd(model, p, X, y, keep, clip_norm=1.0)
    with pytest.raises(ValueError, match="mask_every"):
        prune_finetune(model, p, X, y, 0.5, mask_every="batch")
    # both modes keep the pruned model's zeros
    from fastmb.slicing import prune

    pruned = prune(model, p, 0.5) == 0
    for every in ("step", "epoch"):
        q = prune_finetune(model, p, X, y, 0.5, epochs=2, lr=0.05, mask_every=every)
        assert (q[pruned] == 0).all()
