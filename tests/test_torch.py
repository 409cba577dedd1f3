"""The PyTorch adapter: shared parameters, torch's losses, per-sample gradients and norms
against Opacus (hooks and ghost clipping) and torch.func, on real torch modules."""

import copy
import io
import warnings

import numpy as np
import pytest

import fastmb

torch = pytest.importorskip("torch")
from fastmb.torch import (  # noqa: E402
    from_torch,
    params_from_state_dict,
    to_torch,
    torch_loss,
)

from .conftest import readme_code  # noqa: E402

nn = torch.nn
N = 13


def _net(sizes, act=nn.Tanh, bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(act())
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias, dtype=dtype))
    return nn.Sequential(*layers)


def _data(k, kind, dtype=torch.float64, n=N, d=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, dtype=dtype, generator=g)
    if kind == "class":
        return X, torch.randint(0, k, (n,), generator=g)
    if kind == "binary":
        return X, torch.randint(0, 2, (n, 1), generator=g).to(dtype)
    return X, 2 * torch.randn(n, k, dtype=dtype, generator=g)


# (criterion, outputs, labels)
CASES = {
    "ce-mean": (lambda: nn.CrossEntropyLoss(), 3, "class"),
    "ce-sum": (lambda: nn.CrossEntropyLoss(reduction="sum"), 4, "class"),
    "bce": (lambda: nn.BCEWithLogitsLoss(), 1, "binary"),
    "mse-mean": (lambda: nn.MSELoss(), 3, "reg"),
    "mse-sum": (lambda: nn.MSELoss(reduction="sum"), 2, "reg"),
    "huber": (lambda: nn.HuberLoss(delta=0.7), 2, "reg"),
}


def _case(name, hidden=(7,), act=nn.Tanh, bias=True):
    make, k, kind = CASES[name]
    net = _net((5, *hidden, k), act, bias)
    X, y = _data(k, kind)
    return net, make(), X, y


def _flat_grad(net):
    return np.concatenate([p.grad.detach().T.reshape(-1) if p.dim() == 2 else p.grad.numpy()
                           for p in net.parameters()])


def test_from_torch_shares_parameters_with_the_module():
    net = _net((5, 7, 3))
    X, y = _data(3, "class")
    before = net(X).detach().clone()
    params = list(net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=0.05)  # made before: must keep working
    tm = from_torch(net, nn.CrossEntropyLoss())
    assert tm.model == fastmb.MLP([5, 7, 3], "tanh", "softmax")
    assert list(net.parameters()) == params  # the same Parameter objects
    # values unchanged; the forward pass may round differently (BLAS reads the weight
    # transposed now)
    torch.testing.assert_close(net(X), before, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(fastmb.decision_function(tm.model, tm.params, X.numpy()),
                               before.numpy(), rtol=1e-12, atol=1e-12)
    old = tm.params.copy()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    assert not np.array_equal(old, tm.params)  # the step wrote into fastmb's vector
    for (W, b), lin in zip(tm.model.layers(tm.params), (net[0], net[2])):
        np.testing.assert_array_equal(W.T, lin.weight.detach().numpy())
        np.testing.assert_array_equal(b, lin.bias.detach().numpy())
    # and fastmb's gradient is the gradient torch computes
    opt.zero_grad()
    nn.functional.cross_entropy(net(X), y).backward()
    np.testing.assert_allclose(fastmb.grad(tm.model, tm.params, X.numpy(), y.numpy()),
                               _flat_grad(net), rtol=1e-12, atol=1e-14)


def test_to_torch_module_is_a_view_of_params():
    model = fastmb.MLP([5, 6, 4, 3], "relu")
    params = model.init(seed=3)
    tm = to_torch(model, params)
    assert [type(m).__name__ for m in tm.module] == ["Linear", "ReLU", "Linear", "ReLU",
                                                    "Linear"]
    X = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    out = tm.module(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(out, fastmb.decision_function(model, params, X), rtol=1e-5,
                               atol=1e-6)
    params[model.layout.b_off[-1]] += 1.0  # fastmb writes, torch sees it
    np.testing.assert_allclose(tm.module(torch.from_numpy(X)).detach().numpy()[:, 0],
                               out[:, 0] + 1.0, rtol=1e-5, atol=1e-5)
    opt = torch.optim.SGD(tm.module.parameters(), lr=0.1)
    before = params.copy()
    nn.functional.cross_entropy(tm.module(torch.from_numpy(X)),
                                torch.zeros(9, dtype=torch.long)).backward()
    opt.step()  # torch writes, fastmb sees it
    assert not np.array_equal(before, params)
    assert to_torch(fastmb.Linear(4, loss="hinge"), np.zeros(5, np.float32)).criterion is None
    assert isinstance(to_torch(fastmb.Linear(4, 2), torch.zeros(10)).module, nn.Sequential)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip_is_bit_exact(dtype, bias):
    for model in (fastmb.MLP([5, 6, 3], "sigmoid", fit_intercept=bias),
                  fastmb.Linear(5, 2, fit_intercept=bias)):
        params = model.init(seed=2, dtype=dtype)
        params += np.random.default_rng(1).normal(size=params.size).astype(dtype)
        buf = io.BytesIO()
        torch.save(to_torch(model, params.copy()).module.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf)
        back = params_from_state_dict(model, sd)
        assert back.dtype == dtype and back.tobytes() == params.tobytes()
        target = np.zeros_like(params)
        to_torch(model, target).module.load_state_dict(sd)  # torch writes into the vector
        assert target.tobytes() == params.tobytes()
    lone = nn.Linear(5, 2, dtype=torch.float64)  # a bare Linear's keys
    tm = from_torch(lone, nn.MSELoss())
    assert params_from_state_dict(tm.model, lone.state_dict()).tobytes() == tm.params.tobytes()


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_matches_torch(case):
    net, crit, X, y = _case(case)
    tm = from_torch(net, crit)
    expect = crit(net(X), y).item()
    assert tm.loss(X, y) == pytest.approx(expect, rel=1e-12)


def _torch_func(net, crit, X, y):
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}

    def one(p, x, t):
        return crit(functional_call(net, p, (x[None],)), t[None])

    return list(vmap(grad(one), in_dims=(None, 0, 0))(params, X, y).values())


def _opacus_hooks(net, crit, X, y):
    from opacus import GradSampleModule

    gsm = GradSampleModule(copy.deepcopy(net), loss_reduction=crit.reduction)
    crit(gsm(X), y).backward()
    return [p.grad_sample for p in gsm.parameters()]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("shape", ["mlp", "linear"])
def test_per_sample_grads_match_opacus_and_torch_func(case, shape):
    pytest.importorskip("opacus")
    hidden, act = ((7, 6), nn.Sigmoid) if shape == "mlp" else ((), None)
    net, crit, X, y = _case(case, hidden, act)
    tm = from_torch(net, crit)
    G = tm.per_sample_grad(X, y)
    assert G.shape == (N, tm.model.n_params)
    ours = [p.grad_sample for p in net.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' notes on secure RNG and hooks
        peers = {"opacus": _opacus_hooks(net, crit, X, y)}
    if crit.reduction == "mean":  # torch.func's per-sample loss is the mean reduction's
        peers["torch.func"] = _torch_func(net, crit, X, y)
    for name, theirs in peers.items():
        assert len(theirs) == len(ours), name
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape, name
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    # the norms without forming the gradients
    torch.testing.assert_close(tm.per_sample_grad_norm(X, y), G.norm(dim=1), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("case", ["ce-mean", "mse-mean", "bce"])
def test_norms_match_opacus_ghost_clipping(case):
    pytest.importorskip("opacus")
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    net, crit, X, y = _case(case, (8,), nn.ReLU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModuleFastGradientClipping(copy.deepcopy(net), loss_reduction="mean",
                                                   max_grad_norm=1.0, use_ghost_clipping=True)
        crit(gsm(X), y).backward()
        theirs = gsm.get_norm_sample()
    ours = from_torch(net, crit).per_sample_grad_norm(X, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_tensors_in_and_out_without_copies():
    net = _net((5, 4, 3), dtype=torch.float32)
    X, y = _data(3, "class", dtype=torch.float32)
    tm = from_torch(net, nn.CrossEntropyLoss())
    out = torch.empty(N, tm.model.n_params)
    G = tm.per_sample_grad(X, y, out=out)
    assert G is out
    assert net[0].weight.grad_sample.data_ptr() == out.data_ptr()  # a view of the result
    assert tm.flat.numpy().ctypes.data == tm.params.ctypes.data
    expect = fastmb.per_sample_grad(tm.model, tm.params, X.numpy(), y.numpy())
    np.testing.assert_array_equal(out.numpy(), expect)
    with pytest.raises(ValueError, match="out must have shape"):
        tm.per_sample_grad(X, y, out=torch.empty(N, 3))


# ------------------------------------------------------------------------ bad input


BAD_MODULES = [
    (lambda: nn.Conv1d(1, 1, 3), TypeError, "Sequential of Linear"),
    (lambda: nn.Sequential(), ValueError, "empty"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.Linear(4, 2)), ValueError,
     r"module\[1\] must be one of"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(),
                           nn.Linear(4, 2)), ValueError, "one activation"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU()), ValueError, "last layer must be"),
    (lambda: nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), ValueError,
     r"module\[0\] must be a Linear"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)), ValueError,
     "takes 5 inputs"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)),
     ValueError, "all have a bias"),
    (lambda: nn.Linear(3, 2).half(), TypeError, "float32 or all float64"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2).double()),
     TypeError, "float32 or all float64"),
]


@pytest.mark.parametrize("make, exc, match", BAD_MODULES)
def test_unsupported_modules_are_refused(make, exc, match):
    module = make()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(exc, match=match):
        from_torch(module, nn.CrossEntropyLoss())
    for p, b in zip(module.parameters(), before):  # nothing rebound, nothing changed
        assert torch.equal(p, b)


BAD_CRITERIA = [
    (lambda: nn.NLLLoss(), 3, "has no fastmb equivalent"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=0.1), 3, "label smoothing"),
    (lambda: nn.CrossEntropyLoss(weight=torch.ones(3)), 3, "class weights"),
    (lambda: nn.CrossEntropyLoss(reduction="none"), 3, "reduction must be"),
    (lambda: nn.CrossEntropyLoss(), 1, "at least 2 outputs"),
    (lambda: nn.BCEWithLogitsLoss(), 3, "needs 1 output"),
    (lambda: nn.BCEWithLogitsLoss(pos_weight=torch.ones(1)), 1, "pos_weight"),
    (lambda: nn.SmoothL1Loss(), 2, "has no fastmb equivalent"),
]


@pytest.mark.parametrize("make, k, match", BAD_CRITERIA)
def test_unsupported_losses_are_refused(make, k, match):
    with pytest.raises(ValueError, match=match):
        from_torch(nn.Linear(3, k), make())
    with pytest.raises(TypeError, match="criterion must be a torch loss module"):
        from_torch(nn.Linear(3, 2), "mse")


def test_bad_state_dicts_and_params_are_refused():
    model = fastmb.MLP([3, 4, 2])
    sd = to_torch(model, model.init()).module.state_dict()
    with pytest.raises(ValueError, match="must have the keys"):
        params_from_state_dict(model, {k: v for k, v in sd.items() if k != "0.bias"})
    with pytest.raises(ValueError, match=r"state_dict\['2.weight'\] must have shape \(2, 4\)"):
        params_from_state_dict(model, {**sd, "2.weight": torch.zeros(4, 2)})
    with pytest.raises(TypeError, match="float32 or all float64"):
        params_from_state_dict(model, {**sd, "0.bias": torch.zeros(4, dtype=torch.int64)})
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        params_from_state_dict(model, {**sd, "0.bias": np.zeros(4)})
    with pytest.raises(TypeError, match="must be a mapping"):
        params_from_state_dict(model, [1, 2])
    assert params_from_state_dict(model, sd, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="contiguous 1-D array of length 26"):
        to_torch(model, np.zeros(25, np.float32))
    ro = np.zeros(26, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        to_torch(model, ro)
    with pytest.raises(TypeError, match="float32 or float64"):
        to_torch(model, torch.zeros(26, dtype=torch.int32))
    with pytest.raises(TypeError, match="numpy.ndarray or a torch.Tensor"):
        to_torch(model, [0.0] * 26)
    with pytest.raises(ValueError, match="has no torch loss"):
        torch_loss(fastmb.Linear(3, loss="hinge"))


def test_bad_batches_are_refused():
    net = _net((5, 4, 3))
    tm = from_torch(net, nn.CrossEntropyLoss())
    X, y = _data(3, "class")
    with pytest.raises(TypeError, match="must be torch tensors"):
        tm.per_sample_grad(X.numpy(), y)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        tm.per_sample_grad(X, y + 3)
    with pytest.raises(ValueError, match="X has 4 features"):
        tm.loss(X[:, :4], y)
    tb = from_torch(_net((5, 1)), nn.BCEWithLogitsLoss())
    with pytest.raises(ValueError, match="integer class indices"):
        tb.loss(X, torch.full((N, 1), 0.5, dtype=torch.float64))  # soft labels


def test_readme_example_runs():
    code = readme_code("## PyTorch models")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["same"].tobytes() == scope["p"].tobytes()
    assert scope["G"].shape == (256, scope["tm"].model.n_params)
