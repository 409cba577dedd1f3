"""PyTorch models in and out of fastmb without copies (``pip install "fastmb[torch]"``).

fastmb keeps a model's parameters in one flat vector, layer by layer ``W_l`` (row-major
``(n_in, n_out)``) then ``b_l``. A ``torch.nn.Linear`` keeps its weight as ``(n_out, n_in)``,
which is the transpose of ``W_l``: so every torch parameter can be a *view* into the flat
vector (a transposed view for weights), and the two libraries then share one copy of the
parameters. A torch optimizer's in-place step changes fastmb's vector, and fastmb's kernels
read what torch just wrote.

* :func:`from_torch` moves an ``nn.Sequential`` (Linear layers with one activation between
  them) into a new flat vector; the module keeps working, with the same ``Parameter``
  objects (an optimizer made before still holds them).
* :func:`to_torch` builds the ``nn.Sequential`` of a fastmb model over a given vector.
* :class:`TorchModel` (what both return) is fastmb as a per-sample-gradient backend for the
  module, as Opacus' ``GradSampleModule`` is: per-sample gradients (also left in each
  parameter's ``grad_sample``, as Opacus does) and per-sample gradient norms computed without
  forming the gradients (as Opacus' ghost clipping does), for torch's loss.

torch's losses and fastmb's differ by constant factors, which :class:`TorchModel` applies:
fastmb's squared loss is ``0.5 * sum_j (f_j - y_j)**2`` a sample, ``MSELoss`` averages
``(f_j - y_j)**2`` over the outputs too (a factor ``2 / k``, or 2 with ``reduction="sum"``);
``HuberLoss`` likewise averages over the outputs (``1 / k``). Per-sample gradients are those
of each sample's own term of the loss, scaled as Opacus scales them: with
``reduction="mean"`` the gradient of ``criterion(f(x_i), y_i)`` for the one sample, with
``"sum"`` the same times the number of outputs averaged over (1 for the class losses).
"""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from ..learn import gradients as G
from ..models import MLP, Linear

_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}
_REDUCTIONS = ("mean", "sum")


def _torch():
    import torch

    return torch


# ------------------------------------------------------------------ the module's shape


def _sequence(module):
    """The Linear layers and the hidden activation of a supported module, checked."""
    nn = _torch().nn
    if isinstance(module, nn.Linear):
        mods = [module]
    elif isinstance(module, nn.Sequential):
        mods = list(module)
    else:
        raise TypeError("module must be a torch.nn.Sequential of Linear layers with ReLU, "
                        f"Tanh or Sigmoid between them, or a torch.nn.Linear; got "
                        f"{type(module).__name__}")
    if not mods:
        raise ValueError("module is an empty nn.Sequential")
    linears, acts = [], []
    for i, m in enumerate(mods):
        name = type(m).__name__
        if i % 2 == 0:
            if type(m) is not nn.Linear:
                raise ValueError(f"module[{i}] must be a Linear layer (fastmb models alternate "
                                 f"Linear layers and one activation), got {name}")
            linears.append(m)
        elif name in _ACTIVATIONS and type(m) is getattr(nn, name):
            acts.append(_ACTIVATIONS[name])
        else:
            raise ValueError(f"module[{i}] must be one of nn.ReLU, nn.Tanh, nn.Sigmoid "
                             f"between two Linear layers, got {name}")
    if len(mods) % 2 == 0:
        raise ValueError(f"module's last layer must be Linear (fastmb's output layer is "
                         f"affine), got {type(mods[-1]).__name__}; put a sigmoid or softmax "
                         "in the loss (BCEWithLogitsLoss, CrossEntropyLoss)")
    if len(set(acts)) > 1:
        raise ValueError(f"module must use one activation for every hidden layer, got "
                         f"{sorted(set(acts))}")
    for i, lin in enumerate(linears):
        if tuple(lin.weight.shape) != (lin.out_features, lin.in_features):
            raise ValueError(f"Linear layer {i}: weight has shape {tuple(lin.weight.shape)}, "
                             f"expected ({lin.out_features}, {lin.in_features})")
        if lin.bias is not None and tuple(lin.bias.shape) != (lin.out_features,):
            raise ValueError(f"Linear layer {i}: bias has shape {tuple(lin.bias.shape)}, "
                             f"expected ({lin.out_features},)")
        if i and lin.in_features != linears[i - 1].out_features:
            raise ValueError(f"Linear layer {i} takes {lin.in_features} inputs but layer "
                             f"{i - 1} gives {linears[i - 1].out_features}")
    if len({lin.bias is None for lin in linears}) > 1:
        raise ValueError("module's Linear layers must all have a bias or all have none")
    params = [p for lin in linears for p in (lin.weight, lin.bias) if p is not None]
    dtypes = {p.dtype for p in params}
    torch = _torch()
    if len(dtypes) > 1 or not dtypes <= {torch.float32, torch.float64}:
        raise TypeError(f"module's parameters must all be float32 or all float64, got "
                        f"{sorted(str(d) for d in dtypes)}")
    if len({p.device for p in params}) > 1:
        raise ValueError("module's parameters must all be on one device")
    return linears, (acts[0] if acts else "identity"), params[0].dtype, params[0].device


# ------------------------------------------------------------------------- the losses


def _criterion(criterion, n_outputs):
    """``(fastmb loss, huber delta, per-sample factor)`` of a torch loss module."""
    nn = _torch().nn
    if not isinstance(criterion, nn.Module):
        raise TypeError(f"criterion must be a torch loss module (CrossEntropyLoss, "
                        f"BCEWithLogitsLoss, MSELoss, HuberLoss), got "
                        f"{type(criterion).__name__}")
    red = getattr(criterion, "reduction", None)
    if red not in _REDUCTIONS:
        raise ValueError(f"criterion.reduction must be 'mean' or 'sum', got {red!r}")
    name = type(criterion).__name__
    if type(criterion) is nn.CrossEntropyLoss:
        if criterion.weight is not None or criterion.label_smoothing != 0.0:
            raise ValueError("CrossEntropyLoss with class weights or label smoothing has no "
                             "fastmb equivalent; use the defaults")
        if n_outputs < 2:
            raise ValueError("CrossEntropyLoss needs a model with at least 2 outputs")
        return "softmax", 1.0, 1.0
    if type(criterion) is nn.BCEWithLogitsLoss:
        if criterion.weight is not None or criterion.pos_weight is not None:
            raise ValueError("BCEWithLogitsLoss with weight or pos_weight has no fastmb "
                             "equivalent; use the defaults")
        if n_outputs != 1:
            raise ValueError(f"BCEWithLogitsLoss maps to fastmb's binary logistic loss, "
                             f"which needs 1 output; the model has {n_outputs}")
        return "logistic", 1.0, 1.0
    per_output = 1.0 / n_outputs if red == "mean" else 1.0
    if type(criterion) is nn.MSELoss:
        # torch: (f - y)**2 an output; fastmb: 0.5 (f - y)**2
        return "squared", 1.0, 2.0 * per_output
    if type(criterion) is nn.HuberLoss:
        return "huber", float(criterion.delta), per_output
    raise ValueError(f"criterion {name} has no fastmb equivalent; use CrossEntropyLoss, "
                     "BCEWithLogitsLoss, MSELoss or HuberLoss")


def torch_loss(model, reduction="mean"):
    """The torch loss module that computes ``model``'s loss (for the losses torch has).

    ``"softmax"`` gives ``CrossEntropyLoss``, ``"logistic"`` ``BCEWithLogitsLoss``,
    ``"squared"`` ``MSELoss`` and ``"huber"`` ``HuberLoss(delta)``; torch's values differ from
    fastmb's by the factors in the module docstring. ``"hinge"`` has no torch loss.

    Examples
    --------
    >>> import fastmb
    >>> from fastmb.torch import torch_loss
    >>> torch_loss(fastmb.MLP([4, 3]))
    CrossEntropyLoss()
    """
    V.check_model(model)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    nn = _torch().nn
    if model.loss == "softmax":
        return nn.CrossEntropyLoss(reduction=reduction)
    if model.loss == "logistic":
        return nn.BCEWithLogitsLoss(reduction=reduction)
    if model.loss == "squared":
        return nn.MSELoss(reduction=reduction)
    if model.loss == "huber":
        return nn.HuberLoss(reduction=reduction, delta=model.huber_delta)
    raise ValueError(f"fastmb's loss {model.loss!r} has no torch loss module")


# --------------------------------------------------------------- flat parameter views


def _blocks(model):
    """``(n_in, n_out, weight offset, bias offset or -1)`` of each layer."""
    lay = model.layout
    return [(int(lay.sizes[i]), int(lay.sizes[i + 1]), int(lay.w_off[i]), int(lay.b_off[i]))
            for i in range(model.n_layers)]


def _views(model, flat):
    """``[(weight, bias), ...]`` torch views of the last axis of ``flat`` in torch's shapes
    (weight ``(..., n_out, n_in)``: the transpose of fastmb's row-major ``(n_in, n_out)``
    block); ``flat`` is the parameter vector, or ``(n, P)`` per-sample gradients."""
    lead = tuple(flat.shape[:-1])
    return [(flat[..., wo:wo + nin * nout].reshape(*lead, nin, nout).transpose(-1, -2),
             flat[..., bo:bo + nout] if bo >= 0 else None)
            for nin, nout, wo, bo in _blocks(model)]


def _bind(linears, model, flat):
    """Point every Linear layer's parameters at their views of ``flat`` (same Parameter
    objects, new storage)."""
    for lin, (W, b) in zip(linears, _views(model, flat)):
        lin.weight.data = W
        if b is not None:
            lin.bias.data = b


def _model_of(linears, activation, loss, huber_delta):
    sizes = [linears[0].in_features] + [lin.out_features for lin in linears]
    bias = linears[0].bias is not None
    if len(linears) == 1:
        return Linear(sizes[0], sizes[1], loss, fit_intercept=bias, huber_delta=huber_delta)
    return MLP(sizes, activation, loss, fit_intercept=bias, huber_delta=huber_delta)


def _host(t):
    """A tensor as fastmb's kernels take it: a NumPy view of a CPU tensor (no copy), the
    tensor itself on a GPU (read through ``__cuda_array_interface__``)."""
    t = t.detach()
    return t if t.is_cuda else t.numpy()


class TorchModel:
    """A torch module whose parameters are views into one flat fastmb parameter vector.

    Made by :func:`from_torch` or :func:`to_torch`, not directly.

    Attributes
    ----------
    module : torch.nn.Module
        The torch model; its parameters share memory with ``flat``.
    criterion : torch.nn.Module or None
        The torch loss the gradients are of.
    model : fastmb.Linear or fastmb.MLP
        The same network as fastmb describes it.
    flat : torch.Tensor
        The flat parameter vector, ``(model.n_params,)``.
    params : numpy.ndarray or GPU tensor
        ``flat`` as fastmb's functions take it (a NumPy view of a CPU vector).
    scale : float
        torch's per-sample loss over fastmb's (see the module docstring).
    """

    def __init__(self, module, criterion, model, flat, scale):
        self.module, self.criterion, self.model = module, criterion, model
        self.flat, self.scale = flat, scale
        self.params = _host(flat)

    @property
    def _device(self):
        return "cuda" if self.flat.is_cuda else "cpu"

    def _data(self, X, y):
        torch = _torch()
        if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"X and y must be torch tensors, got {type(X).__name__} and "
                            f"{type(y).__name__}")
        if X.device != self.flat.device or y.device != self.flat.device:
            raise ValueError(f"X and y must be on the model's device ({self.flat.device}), "
                             f"got {X.device} and {y.device}")
        if self.model.is_classifier and y.is_floating_point():
            # BCEWithLogitsLoss takes float targets; fastmb checks they are 0 or 1
            y = y.reshape(-1)
        return _host(X), _host(y)

    def _tensor(self, a):
        return _torch().as_tensor(a, device=self.flat.device)

    def loss(self, X, y):
        """``criterion(module(X), y)``, computed by fastmb's kernels (float)."""
        x, t = self._data(X, y)
        value = G.loss(self.model, self.params, x, t, device=self._device)
        n = x.shape[0] if self.criterion is not None and self.criterion.reduction == "sum" else 1
        return value * self.scale * n

    def per_sample_grad(self, X, y, out=None):
        """Each sample's gradient of its term of the loss, ``(n, model.n_params)``.

        Also sets ``param.grad_sample`` on each of the module's parameters to its views of
        the result, ``(n, *param.shape)``, as Opacus' ``GradSampleModule`` does.

        Parameters
        ----------
        X, y : torch.Tensor
            On the model's device; ``X`` converted to the parameters' dtype if it differs.
        out : torch.Tensor, optional
            ``(n, P)``, C-contiguous, of the parameters' dtype: written in place.

        Returns
        -------
        torch.Tensor
        """
        x, t = self._data(X, y)
        res = G.per_sample_grad(self.model, self.params, x, t,
                                out=None if out is None else _host(out), device=self._device)
        res = out if out is not None else self._tensor(res)
        if self.scale != 1.0:
            res.mul_(self.scale)
        self._grad_sample(res)
        return res

    def _grad_sample(self, res):
        # nn.Sequential lists each Linear layer's weight, then its bias
        views = [v for pair in _views(self.model, res) for v in pair if v is not None]
        for p, g in zip(self.module.parameters(), views):
            p.grad_sample = g

    def per_sample_grad_norm(self, X, y):
        """The L2 norm of each sample's gradient, ``(n,)``, without forming the gradients
        (what Opacus' ghost clipping computes)."""
        x, t = self._data(X, y)
        res = self._tensor(G.per_sample_grad_norm(self.model, self.params, x, t,
                                                  device=self._device))
        if self.scale != 1.0:
            res.mul_(self.scale)
        return res

    def __repr__(self):
        return f"<fastmb.torch.TorchModel {self.model!r}, {self.flat.dtype}, {self.flat.device}>"


def from_torch(module, criterion):
    """Move a torch model's parameters into one flat fastmb vector, in place.

    Each parameter becomes a view into the new vector (the same ``Parameter`` objects, so
    an optimizer already made keeps working); its values do not change.

    Parameters
    ----------
    module : torch.nn.Sequential or torch.nn.Linear
        Linear layers with one of ReLU, Tanh or Sigmoid between them (the same one each
        time), a Linear layer last; float32 or float64, all biased or all not.
    criterion : torch loss module
        ``CrossEntropyLoss``, ``BCEWithLogitsLoss``, ``MSELoss`` or ``HuberLoss``,
        reduction ``"mean"`` or ``"sum"``.

    Returns
    -------
    TorchModel

    Examples
    --------
    >>> import torch
    >>> from fastmb.torch import from_torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> tm = from_torch(net, torch.nn.CrossEntropyLoss())
    >>> tm.model
    MLP([4, 8, 3], activation='relu', loss='softmax', fit_intercept=True)
    >>> net[0].weight.data_ptr() == tm.flat.data_ptr()  # the first block of the vector
    True
    """
    linears, activation, dtype, device = _sequence(module)
    loss, delta, scale = _criterion(criterion, linears[-1].out_features)
    model = _model_of(linears, activation, loss, delta)
    torch = _torch()
    flat = torch.empty(model.n_params, dtype=dtype, device=device)
    with torch.no_grad():
        for lin, (W, b) in zip(linears, _views(model, flat)):
            W.copy_(lin.weight)
            if b is not None:
                b.copy_(lin.bias)
    _bind(linears, model, flat)
    return TorchModel(module, criterion, model, flat, scale)


def to_torch(model, params):
    """An ``nn.Sequential`` of ``model`` whose parameters are views into ``params``.

    Parameters
    ----------
    model : fastmb.Linear or fastmb.MLP
    params : (P,) float32 or float64 array (NumPy, or a torch tensor on any device)
        Shared, not copied: a torch optimizer's step on the module writes into it.

    Returns
    -------
    TorchModel
        ``.module`` the ``nn.Sequential``; ``.criterion`` torch's loss for ``model`` (None
        for the hinge loss, which torch lacks).

    Examples
    --------
    >>> import numpy as np, fastmb, torch
    >>> from fastmb.torch import to_torch
    >>> model = fastmb.MLP([4, 8, 3])
    >>> params = model.init()
    >>> tm = to_torch(model, params)
    >>> tm.module
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=3, bias=True)
    )
    >>> with torch.no_grad():
    ...     _ = tm.module[2].bias.fill_(1.0)
    >>> float(params[-1])
    1.0
    """
    V.check_model(model)
    torch = _torch()
    if isinstance(params, torch.Tensor):
        flat = params.detach()
    else:
        if not isinstance(params, np.ndarray):
            raise TypeError(f"params must be a numpy.ndarray or a torch.Tensor, got "
                            f"{type(params).__name__}")
        if not params.flags.writeable:
            raise ValueError("params must be writeable (torch's optimizers write into it)")
        flat = torch.from_numpy(params)
    if flat.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"params must be float32 or float64, got {flat.dtype}")
    if flat.dim() != 1 or flat.shape[0] != model.n_params or not flat.is_contiguous():
        raise ValueError(f"params must be a contiguous 1-D array of length {model.n_params}, "
                         f"got shape {tuple(flat.shape)}")
    nn = torch.nn
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}.get(model.activation)
    layers = []
    for i, (nin, nout) in enumerate(zip(model.sizes[:-1], model.sizes[1:])):
        if i:
            if act is None:
                raise ValueError("an MLP with the identity activation has no nn.Sequential "
                                 "form here (nn.Identity between layers is not supported)")
            layers.append(act())
        layers.append(nn.Linear(nin, nout, bias=model.fit_intercept, dtype=flat.dtype,
                                device=flat.device))
    module = nn.Sequential(*layers)
    _bind(layers[::2], model, flat)
    criterion, scale = None, 1.0
    if model.loss != "hinge":
        criterion = torch_loss(model)
        scale = _criterion(criterion, model.n_outputs)[2]
    return TorchModel(module, criterion, model, flat, scale)


def params_from_state_dict(model, state_dict, dtype=None):
    """A flat parameter vector of ``model`` from a torch ``state_dict`` (a copy, checked).

    The keys are ``nn.Sequential``'s (``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...) or
    ``nn.Linear``'s (``"weight"``, ``"bias"``); every shape is checked against the model.

    Examples
    --------
    >>> import fastmb
    >>> from fastmb.torch import params_from_state_dict, to_torch
    >>> model = fastmb.MLP([4, 8, 3])
    >>> p = model.init(seed=1)
    >>> sd = to_torch(model, p.copy()).module.state_dict()
    >>> bool((params_from_state_dict(model, sd) == p).all())
    True
    """
    V.check_model(model)
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    torch = _torch()
    prefix = ["" if model.n_layers == 1 and "weight" in state_dict else f"{2 * i}."
              for i in range(model.n_layers)]
    want = {}
    for i, (nin, nout) in enumerate(zip(model.sizes[:-1], model.sizes[1:])):
        want[prefix[i] + "weight"] = (nout, nin)
        if model.fit_intercept:
            want[prefix[i] + "bias"] = (nout,)
    if set(state_dict.keys()) != set(want):
        raise ValueError(f"state_dict must have the keys {sorted(want)}, got "
                         f"{sorted(state_dict.keys())}")
    dtypes = set()
    for key, shape in want.items():
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] must be a torch.Tensor, got "
                            f"{type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"state_dict[{key!r}] must have shape {shape}, got "
                             f"{tuple(t.shape)}")
        dtypes.add(t.dtype)
    if dtype is None:
        if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.float64}:
            raise TypeError(f"state_dict's tensors must all be float32 or all float64, got "
                            f"{sorted(str(d) for d in dtypes)}; pass dtype= to convert")
        dtype = np.float32 if dtypes == {torch.float32} else np.float64
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    params = np.empty(model.n_params, dtype)
    flat = torch.from_numpy(params)
    with torch.no_grad():
        for i, (W, b) in enumerate(_views(model, flat)):
            W.copy_(state_dict[prefix[i] + "weight"])
            if b is not None:
                b.copy_(state_dict[prefix[i] + "bias"])
    return params
