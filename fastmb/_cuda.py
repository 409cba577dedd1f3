"""``device="cuda"``: arguments to and from the GPU, launch configurations, the CUDA paths
of the public functions.

Imported only when a caller asks for ``device="cuda"``. numba-cuda is then imported (an
optional extra); a missing package or a missing GPU raises :class:`CUDAUnavailableError`
saying which. ``NUMBA_ENABLE_CUDASIM=1`` runs everything on Numba's CUDA simulator.

Arrays already on the GPU (numba device arrays, and anything that exposes
``__cuda_array_interface__``: CuPy arrays, PyTorch CUDA tensors) are used in place, without a
copy, and the results then stay on the GPU (as numba device arrays; wrap them with
``cupy.asarray`` or ``torch.as_tensor`` for free). NumPy inputs are checked as on the CPU,
copied to the GPU, and the results copied back as NumPy arrays. A device array must
already have the dtype and layout the kernel needs (C-contiguous; the parameters'
float dtype, int64 class labels): converting it would be a hidden copy, so a mismatch
is a ``TypeError`` naming the argument.
"""

from __future__ import annotations


import numpy as np

from . import _validation as V

SHARED_LIMIT = 48 * 1024   # dynamic shared memory every CUDA device grants without opt-in
MAX_GRID_Y = 65535         # the y (and z) limit of a CUDA grid; kernels stride beyond it


class CUDAUnavailableError(RuntimeError):
    """``device="cuda"`` was asked for, but numba-cuda or a usable GPU is missing."""


_STATE = {}


def cuda():
    """The ``numba.cuda`` module, once it is known to work here."""
    mod = _STATE.get("cuda")
    if mod is not None:
        return mod
    try:
        from numba import cuda as mod
    except ImportError as exc:
        raise CUDAUnavailableError(
            f"device='cuda' needs numba-cuda, which is not installed ({exc}); install it with "
            "pip install 'fastmb[cuda]' (or 'fastmb[cuda12]' / 'fastmb[cuda13]' to get the CUDA "
            "compiler libraries from pip as well)") from None
    if not mod.is_available():
        reason = "no CUDA driver or GPU was found"
        try:
            mod.current_context()
        except Exception as exc:  # the driver's own explanation
            reason = str(exc).strip() or reason
        raise CUDAUnavailableError(
            f"device='cuda' needs a usable NVIDIA GPU: {reason}. Use device='cpu', or set "
            "NUMBA_ENABLE_CUDASIM=1 before importing fastmb to run on Numba's (slow) CUDA "
            "simulator")
    _STATE["cuda"] = mod
    return mod


def threads():
    """Threads per block for every launch (``fastmb.kernels.cuda.THREADS_PER_BLOCK``)."""
    from .kernels import cuda as KC

    T = KC.THREADS_PER_BLOCK
    if not (isinstance(T, int) and 1 <= T <= 1024 and T & (T - 1) == 0):
        raise ValueError(f"fastmb.kernels.cuda.THREADS_PER_BLOCK must be a power of two in "
                         f"[1, 1024], got {T!r}")
    return T


def blocks_for(n, T, cap=65535):
    """Blocks of T threads covering n items, at most ``cap`` (kernels stride beyond it)."""
    return max(1, min(cap, -(-n // T)))


# ----------------------------------------------------------------------------- arrays


is_device_array = V.on_gpu


def device_view(name, a, dtypes=None, ndim=None):
    """A numba view of the device array ``a`` (no copy), checked for dtype, rank, layout."""
    cu = cuda()
    d = a if getattr(a, "__cuda_ndarray__", False) else cu.as_cuda_array(a)
    dt = np.dtype(d.dtype)
    if dtypes is not None and dt not in [np.dtype(t) for t in dtypes]:
        want = " or ".join(str(np.dtype(t)) for t in dtypes)
        raise TypeError(f"{name} on the GPU must have dtype {want}, got {dt} (device arrays "
                        "are used in place, never converted)")
    if ndim is not None and len(d.shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(d.shape)}")
    if not d.is_c_contiguous():
        raise ValueError(f"{name} on the GPU must be C-contiguous")
    return d


def to_device(a):
    """A checked, contiguous NumPy array copied to the GPU."""
    return cuda().to_device(np.ascontiguousarray(a))


def empty(shape, dtype):
    return cuda().device_array(shape, dtype)


def zeros(shape, dtype):
    return cuda().to_device(np.zeros(shape, dtype))


def finish(out, on_device):
    """The result as the caller expects it: a device array, or NumPy."""
    return out if on_device else out.copy_to_host()


def summary(a):
    """``(min, max, number of NaN/Inf)`` of a 1-D device array, without copying it to the host."""
    from .kernels.cuda import aggregation as KA

    T = threads()
    nb = blocks_for(a.shape[0], T, cap=256)
    n = nb * T
    lo, hi = empty(n, np.float64), empty(n, np.float64)
    cnt = empty(n, np.int64)
    KA.summary[nb, T](a, lo, hi, cnt)
    lo, hi = lo.copy_to_host(), hi.copy_to_host()
    return float(lo.min()), float(hi.max()), int(cnt.copy_to_host().sum())


# ----------------------------------------------------------------------------- model inputs


class Batch:
    """``(params, X, y, sample_weight)`` on the GPU, the CUDA counterpart of ``_Batch``."""

    __slots__ = ("model", "params", "X", "yc", "yr", "sw", "n", "on_device", "meta", "dtype")

    def __init__(self, model, params, X, y=None, sample_weight=None):
        self.model = V.check_model(model)
        x_dev = is_device_array(X)
        p_dev = is_device_array(params)
        self.on_device = x_dev or p_dev
        if x_dev:
            X = device_view("X", X, V.FLOATS, ndim=2)
            self.dtype = np.dtype(X.dtype)
        if p_dev:
            params = device_view("params", params, V.FLOATS, ndim=1)
            if params.shape[0] != model.n_params:
                raise ValueError(f"params must be a 1-D array of length model.n_params="
                                 f"{model.n_params}, got shape {tuple(params.shape)}")
            if x_dev and np.dtype(params.dtype) != self.dtype:
                raise TypeError(f"params ({params.dtype}) and X ({X.dtype}) on the GPU must "
                                "have the same dtype")
            self.dtype = np.dtype(params.dtype)
            if summary(params)[2]:
                raise ValueError("params contains NaN or Inf")
        else:
            p = V.as_params(model, params)
            self.dtype = self.dtype if x_dev else p.dtype
            params = to_device(p.astype(self.dtype, copy=False))
        if x_dev:
            if X.shape[0] == 0:
                raise ValueError("X is empty: it needs at least one sample")
            if X.shape[1] != model.n_features:
                raise ValueError(f"X has {X.shape[1]} features but the model expects "
                                 f"{model.n_features}")
        else:
            X = to_device(V.as_X(model, X, self.dtype))
        self.params, self.X, self.n = params, X, X.shape[0]
        self.meta = to_device(_meta(model))
        if y is not None:
            self.yc, self.yr = self._labels(y)
        self.sw = self._weights(sample_weight)

    def _labels(self, y):
        model, n, k = self.model, self.n, self.model.n_outputs
        if not is_device_array(y):
            yc, yr = V.as_y(model, y, n, self.dtype)
            return to_device(yc), to_device(yr)
        if model.is_classifier:
            yc = device_view("y", y, [np.int64], ndim=1)
            if yc.shape[0] != n:
                raise ValueError(f"y must be a 1-D array of {n} class indices, got shape "
                                 f"{tuple(yc.shape)}")
            lo, hi, _ = summary(yc)
            if lo < 0 or hi >= model.n_classes:
                raise ValueError(f"y must hold class indices in [0, {model.n_classes}) for loss "
                                 f"{model.loss!r}; got values in [{int(lo)}, {int(hi)}]")
            return yc, empty((0, k), self.dtype)
        yr = device_view("y", y, [self.dtype])
        if len(yr.shape) == 1 and k == 1:
            yr = yr.reshape(yr.shape[0], 1)
        if tuple(yr.shape) != (n, k):
            raise ValueError(f"y must have shape ({n}, {k}) for a model with {k} output(s), "
                             f"got {tuple(yr.shape)}")
        if summary(yr.reshape(n * k))[2]:
            raise ValueError("y contains NaN or Inf")
        return empty(0, np.int64), yr

    def _weights(self, sample_weight):
        if sample_weight is None:
            return empty(0, np.float64)
        if is_device_array(sample_weight):
            w = device_view("sample_weight", sample_weight, [np.float64], ndim=1)
            if w.shape[0] != self.n:
                raise ValueError(f"sample_weight must be a 1-D array of length {self.n}")
            lo, hi, bad = summary(w)
            if bad or lo < 0 or hi <= 0:
                raise ValueError("sample_weight must be finite, non-negative and not all zero")
            # Scaled on the host as on the CPU path (see V.as_sample_weight): n numbers.
            sample_weight = w.copy_to_host()
        return to_device(V.as_sample_weight(sample_weight, self.n))

    def check(self, bad, overflow=None):
        """Raise for the first row a kernel flagged (``bad``: per-slot rows, -1 for none)."""
        row = V.first_bad(bad)
        if row >= 0:
            V.raise_bad_row(self.X, row, overflow)


def _device_span(a):
    """``(first byte, last byte + 1)`` of a device array (C-contiguous views only here)."""
    if hasattr(a, "__cuda_array_interface__"):
        ptr = a.__cuda_array_interface__["data"][0]
    else:  # the simulator's device arrays wrap NumPy arrays
        ptr = a.ctypes.data
    return ptr, ptr + a.size * a.dtype.itemsize


def _check_overlap(name, out, **inputs):
    """Refuse a device output that shares memory with a device input the kernel reads."""
    lo, hi = _device_span(out)
    for other, arr in inputs.items():
        if arr is not None and arr.size and out.size:
            a_lo, a_hi = _device_span(arr)
            if a_lo < hi and lo < a_hi:
                raise ValueError(f"{name} shares memory with {other}: the kernel would "
                                 f"overwrite its own input; pass a separate array")


def _first_bad_row(b, out, rows_per_item=1):
    """Raise for the first row of ``out`` (a device result) that is not finite: an overflow
    the kernel did not flag (its inputs were finite). Row g of ``out`` stands for rows
    ``g * rows_per_item ...`` of X."""
    flags = rows_nonfinite(out)
    if flags.any():
        V.raise_bad_row(b.X, int(np.argmax(flags)) * rows_per_item)


def _meta(model):
    from .kernels.cuda._model import pack

    return pack(model._spec)


def _linear1(model):
    return model.n_layers == 1 and model.n_outputs == 1


def _units(model):
    return int(model._spec[3][-1])


def _shared(model, nbytes):
    """``nbytes`` of dynamic shared memory for a kernel's per-sample workspace, or a clear
    error when the model is too wide for it."""
    U = _units(model)
    if nbytes > SHARED_LIMIT:
        raise ValueError(f"the model has {U} units: its CUDA workspace needs {nbytes} bytes of "
                         f"shared memory, more than the {SHARED_LIMIT} every GPU grants; use "
                         "device='cpu' for models this wide")
    return nbytes


# ----------------------------------------------------------------------------- gradients


def _accum_blocks(n, P):
    """Blocks whose float64 partial sums a mean gradient keeps: a function of the problem
    only (so the sum order is the same on every GPU), at most 2**24 partial sums (128 MiB)."""
    return max(1, min(-(-n // 64), 4096, max(2, (1 << 24) // max(P, 1))))


def _samples(b, mode, microbatch, out, totals, nb):
    from .kernels.cuda import gradients as KG

    T = threads()
    bad = empty(nb, np.int64)
    shared = _shared(b.model, KG.shared_bytes_samples(_units(b.model), b.dtype.itemsize))
    KG.samples[nb, T, 0, shared](
        b.params, b.X, b.yc, b.yr, b.sw, b.meta, b.model.huber_delta, microbatch, mode, out,
        totals, bad)
    b.check(bad.copy_to_host())


def _linear1_launch(b, mode, out, totals, nb):
    from .kernels.cuda import gradients as KG

    T = threads()
    bad = empty(nb * T, np.int64)
    KG.linear1[nb, T, 0, KG.shared_bytes_linear1(T, b.dtype.itemsize)](
        b.params, b.X, b.yc, b.yr, b.sw, int(b.model._spec[5]), b.model.huber_delta,
        b.model.fit_intercept, mode, KG.group_size(T), out, totals, bad)
    b.check(bad.copy_to_host())


def _rows_blocks(n_items, linear1):
    """Blocks for the per-sample kernels, whose results do not depend on the grid: a block
    per item (a row, a micro-batch), or per ``T / G`` rows in the linear kernel."""
    from .kernels.cuda import gradients as KG

    T = threads()
    return blocks_for(n_items, T // KG.group_size(T) if linear1 else 1, cap=16384)


def per_sample_grad(model, params, X, y, microbatch, out):
    from .kernels.cuda import gradients as KG

    b = Batch(model, params, X, y)
    rows = -(-b.n // microbatch)
    shape = (rows, model.n_params)
    user_out = out
    if out is None:
        out = empty(shape, b.dtype)
    else:
        if not is_device_array(out):
            raise TypeError("out must be a GPU array when device='cuda'")
        out = device_view("out", out, [b.dtype])
        if tuple(out.shape) != shape:
            raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
        _check_overlap("out", out, params=b.params, X=b.X, y=b.yr)
    no_totals = empty((0, 2), np.float64)
    if _linear1(model) and microbatch == 1:
        _linear1_launch(b, KG.MODE_WRITE, out, no_totals, _rows_blocks(rows, True))
    else:
        _samples(b, KG.MODE_WRITE, microbatch, out, no_totals, _rows_blocks(rows, False))
    _first_bad_row(b, out, microbatch)
    return finish(out, b.on_device) if user_out is None else user_out


def per_sample_grad_norm(model, params, X, y):
    from .kernels.cuda import gradients as KG

    b = Batch(model, params, X, y)
    out = empty((b.n, 1), b.dtype)
    no_totals = empty((0, 2), np.float64)
    if _linear1(model):
        _linear1_launch(b, KG.MODE_NORM, out, no_totals, _rows_blocks(b.n, True))
    else:
        _samples(b, KG.MODE_NORM, 1, out, no_totals, _rows_blocks(b.n, False))
    _first_bad_row(b, out)
    return finish(out.reshape(b.n), b.on_device)


def loss_grad(model, params, X, y, sample_weight, want_grad):
    """``(mean loss, mean gradient)``: float64 sums per block, merged in block order."""
    from .kernels.cuda import aggregation as KA, gradients as KG

    b = Batch(model, params, X, y, sample_weight)
    P = model.n_params
    T = threads()
    if _linear1(model):
        nb = _accum_blocks(-(-b.n // (T // KG.group_size(T))), P)
        acc = empty((nb, P), np.float64)
        totals = empty((nb * T, 2), np.float64)
        _linear1_launch(b, KG.MODE_ACCUM, acc, totals, nb)
    else:
        nb = _accum_blocks(b.n, P)
        acc = empty((nb, P), np.float64)
        totals = empty((nb, 2), np.float64)
        _samples(b, KG.MODE_ACCUM, 1, acc, totals, nb)
    lsum, wsum = totals.copy_to_host().sum(axis=0)
    value = float(V.finite_result(np.float64(lsum / wsum), "the mean loss"))
    if not want_grad:
        return value, None
    g = empty(P, b.dtype)
    nbad = empty(blocks_for(P, T) * T, np.int64)
    ones = to_device(np.ones(nb))
    KA.weighted_mean[blocks_for(P, T), T](acc, ones, 1.0 / wsum, g, nbad)
    if nbad.copy_to_host().sum():
        V.finite_result(np.array([np.inf], b.dtype), "the mean gradient")
    return value, finish(g, b.on_device)


# ----------------------------------------------------------------------------- training


def train_clients(b, idx, offsets, opts, clip, noise_std, ids, epochs, steps):
    """Local SGD of the clients ``ids`` on the GPU (arguments checked by the caller)."""
    from .kernels.cuda import training as KT

    model = b.model
    K = ids.shape[0]
    P = model.n_params
    starts = offsets[ids]
    ends = offsets[ids + 1]
    perm_off = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    out = empty((K, P), b.dtype)
    gbuf = empty((K, P), b.dtype)
    vbuf = empty((K, P) if opts["momentum"] else (K, 0), b.dtype)
    perm = empty(int(perm_off[-1]), np.int64)
    bad = empty(K, np.int64)
    T = threads()
    shared = _shared(model, KT.shared_bytes(_units(model), b.dtype.itemsize))
    KT.train_clients[min(K, 65535), T, 0, shared](
        b.params, b.X, b.yc, b.yr, b.sw, b.meta, model.huber_delta, to_device(idx),
        to_device(starts), to_device(ends), to_device(ids), np.uint64(opts["seed"]),
        to_device(epochs), to_device(steps), opts["batch"], opts["lr_schedule"],
        opts["shuffle"], opts["lr"], opts["power_t"], opts["momentum"], opts["weight_decay"],
        opts["prox_mu"], float(clip), float(noise_std), perm, to_device(perm_off), gbuf, vbuf,
        out, bad)
    bad = bad.copy_to_host()
    flagged = bad[bad >= 0]
    if flagged.size:
        row = int(flagged.min())  # a row of X: the kernel maps through rows
        V.raise_bad_row(b.X, row, overflow=(
            f"training diverged: the loss became NaN or Inf at row {row}; lower lr or scale "
            "the inputs"))
    diverged = rows_nonfinite(out)
    if diverged.any():
        k = int(np.argmax(diverged))
        raise ValueError(f"training diverged: the parameters of client {int(ids[k])} overflowed "
                         f"{b.dtype}; lower lr or scale the inputs")
    return finish(out, b.on_device)


# ----------------------------------------------------------------------------- aggregation


def as_updates(updates, name="updates"):
    """``(U on the GPU, on_device)`` for a (K, P) stack of updates."""
    if is_device_array(updates):
        U = device_view(name, updates, V.FLOATS, ndim=2)
        if U.shape[0] == 0 or U.shape[1] == 0:
            raise ValueError(f"{name} is empty: got shape {tuple(U.shape)}")
        return U, True
    from .aggregation import _as_updates

    return to_device(_as_updates(updates)), False


def rows_nonfinite(U):
    """Boolean (K,) NumPy mask of the rows of a device stack that hold NaN or Inf."""
    from .kernels.cuda import aggregation as KA

    K, P = U.shape
    T = threads()
    flags = zeros(K, np.int32)
    KA.rows_nonfinite[(blocks_for(P, T, cap=64), min(K, MAX_GRID_Y)), T](U, flags)
    return flags.copy_to_host().astype(bool)


def weighted_mean(U, w):
    """``sum_k w_k U_k / sum_k w_k`` (w NumPy float64, already checked); NaN-free or raises."""
    from .kernels.cuda import aggregation as KA

    P = U.shape[1]
    T = threads()
    w = w / w.max()
    out = empty(P, U.dtype)
    nb = blocks_for(P, T)
    nbad = empty(nb * T, np.int64)
    KA.weighted_mean[nb, T](U, to_device(w), 1.0 / float(np.sum(w)), out, nbad)
    if nbad.copy_to_host().sum():
        bad = np.flatnonzero(rows_nonfinite(U)).tolist()
        if bad:
            raise ValueError(f"updates contains NaN or Inf (clients {bad})")
        raise ValueError("the weighted mean overflows the dtype of updates")
    return out


def finite_rows(U):
    """``(U without its non-finite rows, kept, rejected)``, kept rows copied on the GPU."""
    from .kernels.cuda import aggregation as KA

    bad = rows_nonfinite(U)
    if not bad.any():
        return U, np.arange(U.shape[0]), np.empty(0, np.int64)
    kept = np.flatnonzero(~bad)
    if kept.size == 0:
        raise ValueError("every client's update in updates contains NaN or Inf")
    T = threads()
    out = empty((kept.size, U.shape[1]), U.dtype)
    KA.take_rows[(blocks_for(U.shape[1], T, cap=64), min(kept.size, MAX_GRID_Y)), T](
        U, to_device(kept), out)
    return out, kept, np.flatnonzero(bad)


SCRATCH_BYTES = 1 << 28   # the sorting scratch of rank_mean: at most 256 MiB at a time


def rank_mean(U, pairs, r_lo, r_hi):
    """Mean of the ranks ``r_lo:r_hi`` of every coordinate (median, trimmed mean)."""
    from .kernels.cuda import robust as KR

    K, P = U.shape
    T = threads()
    C = max(1, min(P, SCRATCH_BYTES // (K * U.dtype.itemsize)))
    buf = empty((K, C), U.dtype)
    out = empty(P, U.dtype)
    d_pairs = to_device(pairs)
    for lo in range(0, P, C):
        KR.rank_mean[blocks_for(C, T), T](U, d_pairs, r_lo, r_hi, lo, buf, out)
    return out


# ----------------------------------------------------------------------------- compression


def topk(update, k, residual):
    """Top-k with error feedback on the GPU: ``(idx, val, P, on_device)``."""
    from .kernels import compress as KC0
    from .kernels.cuda import compress as KC

    on_device = is_device_array(update)
    if on_device:
        u = device_view("update", update, V.FLOATS, ndim=1)
        if u.shape[0] == 0:
            raise ValueError("update must be a non-empty 1-D array, got shape (0,)")
    else:
        from .compress import _as_vector

        u = to_device(_as_vector(update))
    dt = np.dtype(u.dtype)
    P = u.shape[0]
    k = V.check_number("k", k, low=1, high=P, integer=True)
    r_user = r_host = None
    if residual is None:
        work = zeros(P, dt)
    elif is_device_array(residual):
        r_user = device_view("residual", residual, [dt], ndim=1)
        if r_user.shape[0] != P:
            raise TypeError(f"residual must have shape ({P},), got {tuple(r_user.shape)}")
        work = empty(P, dt)
        work.copy_to_device(r_user)  # the caller's residual changes only on success
    elif on_device:
        raise TypeError("residual must be a GPU array when update is one (it is updated in "
                        "place)")
    else:
        from .compress import _as_residual

        r_host = _as_residual(residual, np.empty(P, dt))
        work = to_device(r_host)
    T = threads()
    nb = blocks_for(P, T, cap=4096)
    nbad = empty(nb * T, np.int64)
    KC.add_residual[nb, T](u, work, nbad)
    if nbad.copy_to_host().sum():
        raise ValueError("update + residual contains NaN or Inf")
    ity = np.int32 if dt.itemsize == 4 else np.int64
    width = dt.itemsize * 8
    shift = width - 1 - KC0.BITS
    mask = (1 << (width - 1)) - 1
    bits = work.view(ity)
    hist = zeros(KC0.NBINS, np.int64)
    KC.histogram[nb, T](bits, ity(mask), ity(shift), hist)
    counts = hist.copy_to_host()
    above_incl = np.cumsum(counts[::-1])          # how many lie in bucket >= b, from the top
    tb = KC0.NBINS - 1 - int(np.searchsorted(above_incl, k))
    above = int(counts[tb + 1:].sum())
    need = k - above
    cand = empty(int(counts[tb]), dt)
    fill = zeros(1, np.int64)
    KC.gather[nb, T](work, bits, ity(mask), ity(shift), ity(tb), cand, fill)
    thr = np.sort(cand.copy_to_host())[-need]
    n_seg = -(-P // KC.SEGMENT)
    gt, eq = empty(n_seg, np.int64), empty(n_seg, np.int64)
    KC.count[blocks_for(n_seg, T, cap=1 << 30), T](work, dt.type(thr), gt, eq)
    gt, eq = gt.copy_to_host(), eq.copy_to_host()
    ties = k - int(gt.sum())
    tie_start = np.concatenate([[0], np.cumsum(eq)[:-1]]).astype(np.int64)
    taken = np.minimum(eq, np.maximum(0, ties - tie_start))
    start = np.concatenate([[0], np.cumsum(gt + taken)[:-1]]).astype(np.int64)
    idx, val = empty(k, np.int64), empty(k, dt)
    KC.select[blocks_for(n_seg, T, cap=1 << 30), T](work, dt.type(thr), ties, to_device(start),
                                                     to_device(tie_start), idx, val)
    if r_user is not None:
        r_user.copy_to_device(work)
    elif r_host is not None:
        work.copy_to_host(r_host)
    return idx, val, P, on_device
