"""Fuzzing of every byte decoder, state loader and sparse-input door, run in a subprocess by
test_hardening.py.

``python -m tests.fuzz_decoders NAME`` runs one target: exhaustive truncations and single
bit flips of valid encodings, then hypothesis-driven mutations (bytes replaced, inserted,
deleted; forged headers; hostile but well-formed archives and state dicts). For every
input the decoder must either return an object that its consumers accept (densify,
dequantize, stream into a WeightedMean, run a round) or raise ``ValueError``/``TypeError``;
anything else fails the target. A crash kills only this process, and the test that
started it reports the exit status, so an out-of-bounds index can never take the test run
down with it.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmb
from fastmb.compress import QuantizedUpdate, SparseUpdate

ALLOWED = (ValueError, TypeError)
RUNS = settings(max_examples=int(os.environ.get("FASTMB_FUZZ_EXAMPLES", "150")),
                deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def _bytes_mutations():
    """Strategy: a list of (position fraction, operation, byte) edits."""
    edit = st.tuples(st.floats(0, 1), st.sampled_from(["set", "insert", "delete", "xor"]),
                     st.integers(0, 255))
    return st.lists(edit, min_size=1, max_size=6)


def _apply(data, edits):
    b = bytearray(data)
    for frac, op, val in edits:
        i = min(len(b), int(frac * len(b)))
        if op == "insert":
            b[i:i] = bytes([val])
        elif not b:
            continue
        elif op == "delete":
            del b[min(i, len(b) - 1)]
        elif op == "set":
            b[min(i, len(b) - 1)] = val
        else:
            b[min(i, len(b) - 1)] ^= val or 1
    return bytes(b)


def _every_truncation_and_flip(data, check):
    for n in range(len(data)):
        check(data[:n])
    for i in range(len(data)):
        for bit in range(8):
            b = bytearray(data)
            b[i] ^= 1 << bit
            check(bytes(b))


def _guard(fn):
    """Run ``fn``; a ValueError or TypeError is a clean refusal, anything else a failure."""
    try:
        return fn()
    except ALLOWED:
        return None


# ----------------------------------------------------------------------------- wire formats


def _use_sparse(s):
    assert isinstance(s.indices, np.ndarray) and s.indices.dtype == np.int64
    assert s.indices.size == 0 or (s.indices.min() >= 0 and s.indices.max() < s.n_params)
    if s.n_params <= 1 << 20:
        d = s.densify()
        wm = fastmb.WeightedMean(s.n_params, np.float64)
        wm.add_sparse(s, 2.0)
        np.testing.assert_allclose(wm.result(), d)
        assert SparseUpdate.from_bytes(s.to_bytes()).n_params == s.n_params


def _check_sparse(data):
    s = _guard(lambda: SparseUpdate.from_bytes(data))
    if s is not None:
        _use_sparse(s)


def _use_quantized(q):
    d = q.dequantize(np.float32)
    assert d.shape == (q.n_params,) and np.isfinite(d).all()
    wm = fastmb.WeightedMean(q.n_params, np.float64)
    wm.add_quantized(q, 3.0)
    assert np.isfinite(wm.result()).all()
    if q.scheme in ("int8", "qsgd"):
        assert np.isfinite(fastmb.mean_compressed([q, q])).all()
    assert QuantizedUpdate.from_bytes(q.to_bytes()).n_params == q.n_params


def _check_quantized(data):
    q = _guard(lambda: QuantizedUpdate.from_bytes(data))
    if q is not None:
        _use_quantized(q)


def _valid_sparse():
    u = np.random.default_rng(0).normal(size=23)
    return [fastmb.topk(u, 5).to_bytes(), fastmb.topk(u.astype(np.float32), 1).to_bytes(),
            SparseUpdate(np.array([0, 22]), np.array([1.0, -2.0]), 23).to_bytes()]


def _valid_quantized():
    u = np.random.default_rng(1).normal(size=21).astype(np.float32)
    return [fastmb.quantize_int8(u, block=8).to_bytes(), fastmb.qsgd(u, 5, 4).to_bytes(),
            fastmb.to_half(u, "fp16").to_bytes(), fastmb.to_half(u, "bf16").to_bytes()]


def _fuzz_encoding(valid, check, header, magic, fields):
    """The checks every wire format gets: each truncation and bit flip of each valid
    encoding, random edits of them, and headers forged from ``fields`` (strategies for the
    fields after the magic, packed with ``header``) before a random body."""
    for data in valid:
        _every_truncation_and_flip(data, check)

    @RUNS
    @given(st.sampled_from(valid), _bytes_mutations())
    def mutated(data, edits):
        check(_apply(data, edits))

    @RUNS
    @given(st.tuples(*fields), st.binary(max_size=96))
    def forged_header(values, body):
        check(struct.pack(header, magic, *values) + body)

    mutated()
    forged_header()


def fuzz_sparse():
    _fuzz_encoding(_valid_sparse(), _check_sparse, "<4sBQQ", b"FMBK",
                   (st.integers(0, 255), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)))

    @RUNS
    @given(st.integers(1, 64), st.data())
    def forged_body(n, data):
        k = data.draw(st.integers(0, 4))
        idx = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=k, max_size=k))
        val = data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                 min_size=k, max_size=k))
        body = np.array(idx, "<u4").tobytes() + np.array(val, "<f4").tobytes()
        _check_sparse(struct.pack("<4sBQQ", b"FMBK", 0, n, k) + body)

    forged_body()


def fuzz_quantized():
    _fuzz_encoding(_valid_quantized(), _check_quantized, "<4sBQI", b"FMBQ",
                   (st.integers(0, 255), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)))

    @RUNS
    @given(st.sampled_from(["int8", "qsgd"]), st.integers(1, 40), st.integers(1, 50), st.data())
    def forged_fields(scheme, n, block, data):
        nb = -(-n // block)
        codes = np.array(data.draw(st.lists(st.integers(-128, 127), min_size=n, max_size=n)),
                         np.int8)
        scales = np.array(data.draw(st.lists(st.floats(width=32), min_size=nb, max_size=nb)),
                          np.float32)
        body = codes.tobytes() + scales.astype("<f4").tobytes()
        _check_quantized(struct.pack("<4sBQI", b"FMBQ", 0 if scheme == "int8" else 1, n,
                                     block) + body)
        # the same fields through the constructor door (no bytes involved)
        q = _guard(lambda: QuantizedUpdate(codes, scales, n, block, scheme).checked())
        if q is not None:
            _use_quantized(q)

    forged_fields()


# ----------------------------------------------------------------------------- checkpoints


def _simulations():
    """Two tiny simulations whose checkpoints hold every kind of entry (a server
    optimizer's state, central DP's state)."""
    data = fastmb.data.synthetic(240, 4, 3, n_test=30, seed=0)
    part = fastmb.partition.iid(240, 8, seed=0)
    model = fastmb.Linear(4, 3, loss="softmax")
    return [fastmb.Simulation(model, data, part, clients_per_round=4, server="fedadam",
                              epochs=1, batch_size=8, seed=0),
            fastmb.Simulation(model, data, part, clients_per_round=4, aggregator="central_dp",
                              aggregator_options={"target_quantile": 0.5,
                                                  "noise_multiplier": 0.1},
                              epochs=1, batch_size=8, seed=0)]


class _Checkpoints:
    def __init__(self, folder):
        self.folder = folder
        self.sims = _simulations()
        self.valid = []
        for i, sim in enumerate(self.sims):
            sim.run(2)
            path = os.path.join(folder, f"valid{i}.npz")
            sim.save(path)
            with open(path, "rb") as fh:
                self.valid.append(fh.read())
        self.path = os.path.join(folder, "probe.npz")

    def check_bytes(self, i, data):
        with open(self.path, "wb") as fh:
            fh.write(data)
        self._load_and_use(i)

    def check_arrays(self, i, arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.check_bytes(i, buf.getvalue())

    def arrays(self, i):
        with np.load(io.BytesIO(self.valid[i]), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def _load_and_use(self, i):
        sim = self.sims[i]
        before = (sim.round, sim.params, list(sim.history))
        try:
            sim.load(self.path)
        except ALLOWED:
            # refused: nothing changed
            assert sim.round == before[0] and np.array_equal(sim.params, before[1])
            assert sim.history == before[2]
            return
        assert sim.params.shape == (sim.model.n_params,) and np.isfinite(sim.params).all()
        _guard(sim.step)  # a loaded state must run (or refuse cleanly), never crash


def fuzz_checkpoints():
    with tempfile.TemporaryDirectory() as folder:
        ck = _Checkpoints(folder)
        for i, data in enumerate(ck.valid):
            ck.check_bytes(i, data)  # the valid file loads
            for n in list(range(400)) + list(range(400, len(data), 53)):
                ck.check_bytes(i, data[:n])
            for pos in range(0, len(data), 41):
                for bit in (0, 3, 7):
                    b = bytearray(data)
                    b[pos] ^= 1 << bit
                    ck.check_bytes(i, bytes(b))

        @RUNS
        @given(st.integers(0, 1), _bytes_mutations())
        def mutated(i, edits):
            ck.check_bytes(i, _apply(ck.valid[i], edits))

        values = st.one_of(
            st.integers(-2**70, 2**70).map(lambda v: np.array(v if abs(v) < 2**63 else float(v))),
            st.floats(allow_nan=True, allow_infinity=True).map(np.array),
            st.booleans().map(np.array),
            st.text(max_size=40).map(np.array),
            st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=8)
            .map(lambda v: np.array(v, np.float32)),
            st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20).map(np.array),
            st.lists(st.integers(-5, 5), max_size=6).map(lambda v: np.array(v, np.int64)),
        )

        @RUNS
        @given(st.integers(0, 1), st.data())
        def hostile_entry(i, data):
            arrays = ck.arrays(i)
            key = data.draw(st.sampled_from([*sorted(arrays), "extra"]))
            if data.draw(st.booleans()) and key in arrays:
                del arrays[key]
            else:
                arrays[key] = data.draw(values)
            ck.check_arrays(i, arrays)

        def json_edit(doc, data):
            """A random edit of one field of a JSON document (the history, config, dp)."""
            if isinstance(doc, list) and doc:
                j = data.draw(st.integers(0, len(doc) - 1))
                doc[j] = json_edit(doc[j], data)
                return doc
            if isinstance(doc, dict) and doc:
                k = data.draw(st.sampled_from(sorted(doc)))
                doc[k] = json_edit(doc[k], data)
                return doc
            return data.draw(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                                       st.floats(), st.text(max_size=5),
                                       st.lists(st.integers(-3, 3), max_size=3)))

        @RUNS
        @given(st.integers(0, 1), st.data())
        def hostile_json(i, data):
            arrays = ck.arrays(i)
            key = data.draw(st.sampled_from([k for k in ("history", "config", "dp")
                                             if k in arrays]))
            doc = json.loads(str(arrays[key]))
            arrays[key] = np.array(json.dumps(json_edit(doc, data)))
            ck.check_arrays(i, arrays)

        mutated()
        hostile_entry()
        hostile_json()


# ----------------------------------------------------------------------------- state dicts


def fuzz_states():
    """``from_state_dict``/``load_state_dict`` of every stateful object, fed hostile dicts."""
    opt = fastmb.FedAdam(np.zeros(4, np.float32), lr=0.1)
    opt.step(np.ones(4, np.float32))
    wm = fastmb.WeightedMean(4, np.float64)
    wm.add(np.ones(4), 3.0)
    fb = fastmb.FedBuff(np.zeros(4), buffer_size=3)
    fb.add(np.ones(4), 0)
    dp = fastmb.CentralDP(1.0, 0.5, target_quantile=0.5, expected_clients=10)
    part = fastmb.partition.iid(12, 3)
    targets = {
        "server": (opt.state_dict(), lambda s: fastmb.ServerOptimizer.from_state_dict(s),
                   lambda o: o.step(np.ones(4, np.float32))),
        "weighted_mean": (wm.state_dict(), fastmb.WeightedMean.from_state_dict,
                          lambda w: w.result() if w.total_weight > 0 else None),
        "fedbuff": (fb.state_dict(),
                    lambda s: fastmb.FedBuff(np.zeros(4), buffer_size=3).load_state_dict(s),
                    lambda f: (f.add(np.ones(4), 0), f.flush())),
        "central_dp": (dp.state_dict(),
                       lambda s: fastmb.CentralDP(1.0, 0.5, target_quantile=0.5,
                                                  expected_clients=10).load_state_dict(s),
                       lambda d: d.aggregate(np.ones((3, 4)))),
        "partition": (part.state_dict(), fastmb.partition.Partition.from_state_dict,
                      lambda p: p.label_counts(np.arange(12) % 3)),
    }
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                        st.text(max_size=8),
                        st.lists(st.integers(-2**64, 2**64), max_size=5).map(
                            lambda v: np.array([float(x) for x in v])),
                        st.lists(st.integers(-5, 20), min_size=0, max_size=6).map(np.array),
                        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6)
                        .map(np.array))

    def mutate(state, data):
        state = dict(state)
        key = data.draw(st.sampled_from([*sorted(state), "extra"]))
        if isinstance(state.get(key), dict):
            state[key] = mutate(state[key], data)
        elif data.draw(st.booleans()) and key in state:
            del state[key]
        else:
            state[key] = data.draw(scalars)
        return state

    for state, load, use in targets.values():
        assert load(dict(state)) is not None  # the valid state loads
        _hostile_states(state, load, use, mutate)


def _hostile_states(state, load, use, mutate):
    @RUNS
    @given(st.data())
    def hostile(data):
        obj = _guard(lambda: load(mutate(state, data)))
        if obj is not None:
            _guard(lambda: use(obj))

    hostile()


# ----------------------------------------------------------------------------- CSR input


def _raw_csr(data, indices, indptr, shape):
    """A SciPy CSR matrix holding exactly these arrays, SciPy's own checks bypassed (a
    caller can build one so, or edit the arrays of a valid one)."""
    import scipy.sparse as sp

    X = sp.csr_matrix((1, 1))
    X.data, X.indices, X.indptr = data, indices, indptr
    X._shape = shape
    return X


def _use_csr(X, y):
    """Every kernel door a sparse X reaches."""
    for model in (fastmb.Linear(6, loss="logistic"), fastmb.MLP([6, 3, 2])):
        p = model.init(dtype=np.float64)
        yy = y % model.n_classes
        fastmb.loss(model, p, X, yy)
        fastmb.per_sample_grad(model, p, X, yy, microbatch=2)
        fastmb.per_sample_grad_norm(model, p, X, yy)
        fastmb.predict(model, p, X)
        fastmb.sgd(model, p, X, yy, batch_size=2, shuffle=True)
        fastmb.evaluate(model, p, X, yy)


def fuzz_csr():
    """Hostile CSR structures as ``X``: indices and ``indptr`` anywhere in int32/int64
    (negative, past the width, decreasing, past the stored values), mismatched lengths,
    NaN values. Every call must refuse with ValueError/TypeError or run to the end."""
    ints = st.integers(-3, 12)

    @RUNS
    @given(n=st.integers(1, 5), data=st.lists(st.floats(allow_nan=True, width=64), max_size=12),
           indices=st.lists(ints, max_size=12), indptr=st.lists(ints, min_size=1, max_size=7),
           idx64=st.booleans())
    def hostile(n, data, indices, indptr, idx64):
        it = np.int64 if idx64 else np.int32
        X = _raw_csr(np.array(data, np.float64), np.array(indices, it), np.array(indptr, it),
                     (n, 6))
        _guard(lambda: _use_csr(X, np.arange(n)))

    hostile()

    import scipy.sparse as sp

    path = os.path.join(tempfile.mkdtemp(), "m.npz")
    M = sp.random(12, 4, density=0.5, random_state=0, format="csr")
    M = sp.hstack([M, sp.csr_matrix((np.arange(12) % 2)[:, None])]).tocsr()
    sp.save_npz(path, M, compressed=False)
    with open(path, "rb") as fh:
        valid = fh.read()

    def check_file(blob):
        with open(path, "wb") as fh:
            fh.write(blob)
        d = _guard(lambda: fastmb.data.load(path, test_fraction=0.25))
        if d is not None:
            m = fastmb.Linear(d.X.shape[1], loss="squared")
            p, y = m.init(dtype=np.float64), d.y.astype(np.float64)
            _guard(lambda: (fastmb.loss(m, p, d.X, y), fastmb.sgd(m, p, d.X, y, batch_size=2)))

    assert fastmb.data.load(path).X.shape[1] == 4
    _every_truncation_and_flip(valid, check_file)

    @RUNS
    @given(_bytes_mutations())
    def mutated(edits):
        check_file(_apply(valid, edits))

    mutated()


def fuzz_npy():
    """Flower's wire format: a reply's ``.npy`` bytes read in place by fastmb's strategies.

    Each mutated array goes through ``array_from_npy`` and, when it decodes, through a
    whole FedAvg and FedMedian round beside two intact replies (the kernels then read the
    decoded buffers through their addresses: a wrong length would read past them)."""
    import logging

    from flwr.common import Code, FitRes, Parameters, Status

    from fastmb.adapters._flower_core import array_from_npy, npy_bytes
    from fastmb.flower_legacy import FedAvg, FedMedian

    logging.disable(logging.WARNING)
    good = [npy_bytes(np.arange(12, dtype=np.float32).reshape(3, 4)),
            npy_bytes(np.arange(4, dtype=np.float64))]

    def result(tensors):
        return (None, FitRes(Status(Code.OK, ""), Parameters(tensors, "numpy.ndarray"), 3, {}))

    def check(data):
        a = _guard(lambda: array_from_npy(data))
        if a is not None:
            assert a.nbytes <= len(data) - 10  # inside the message, after its header
            np.asarray(a).sum()
        results = [result([data, good[1]]), result(good), result(good)]
        for strategy in (FedAvg(), FedMedian()):
            out = _guard(lambda s=strategy: s.aggregate_fit(1, results, []))
            if out is not None:
                assert len(out[0].tensors) == 2

    @RUNS
    @given(st.sampled_from(good), _bytes_mutations())
    def mutated(valid, edits):
        check(_apply(valid, edits))

    for valid in good:
        _every_truncation_and_flip(valid, check)
    mutated()


def fuzz_compact():
    """Compact model files (``fastmb.slicing.CompactModel``): every truncation and bit flip
    (the checksum refuses them), then hypothesis edits with the checksum recomputed, so that
    the header and array checks themselves face hostile values. A file that loads must run
    its inference."""
    import zlib

    from fastmb.slicing import CompactModel, prune

    model = fastmb.MLP([5, 6, 4, 3])
    p = prune(model, model.init(seed=3), 0.5)
    X = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    goods = [CompactModel.from_params(model, p, f).to_bytes()
             for f in ("csr", "int8", "csr+fp16")]
    goods.append(CompactModel.from_params(model, p, "csr+int8", start=1).to_bytes())

    def check(data):
        cm = _guard(lambda: CompactModel.from_bytes(data))
        if cm is not None:
            A = X if cm.start == 0 else np.ones((4, model.sizes[cm.start]), np.float32)
            _guard(lambda: cm.decision_function(A))

    def resealed(data):
        body = data[:-4]
        return body + struct.pack("<I", zlib.crc32(body))

    for valid in goods[:2]:
        _every_truncation_and_flip(valid, check)

    @RUNS
    @given(st.sampled_from(goods), _bytes_mutations())
    def mutated(valid, edits):
        check(resealed(_apply(valid, edits) + b"\0\0\0\0"))

    @RUNS
    @given(st.sampled_from(goods), st.sampled_from(["sizes", "start", "stop", "nnz", "format",
                                                    "loss", "activation", "huber_delta"]),
           st.one_of(st.integers(-2**40, 2**40), st.text(max_size=5),
                     st.lists(st.integers(-5, 70), max_size=5), st.none(), st.floats()))
    def header(valid, key, value):
        hlen = struct.unpack_from("<I", valid, 10)[0]
        h = json.loads(valid[14:14 + hlen])
        h[key] = value
        head = json.dumps(h).encode()
        body = valid[:10] + struct.pack("<I", len(head)) + head + valid[14 + hlen:-4]
        check(body + struct.pack("<I", zlib.crc32(body)))

    mutated()
    header()


def fuzz_envelope():
    """Authenticated envelopes (``fastmb.secure.Channel.open``): every truncation and bit
    flip of valid envelopes, then hypothesis edits: each is refused with EnvelopeError (a
    ValueError) and leaves the channel where it was, so the genuine envelope still opens."""
    from fastmb.secure import Channel, Identity

    a, b = Identity(), Identity()
    up = Channel(a, b.public, 1, 2)
    down = Channel(b, a.public, 2, 1)
    envs = [up.seal(payload, 3) for payload in (b"", b"update", bytes(300))]

    def check(data, genuine):
        if data == genuine:
            return
        try:
            down.open(data, 3)
        except ValueError:
            return
        raise AssertionError("an altered envelope was opened")

    for env in envs[:2]:
        _every_truncation_and_flip(env, lambda d, env=env: check(d, env))

    @RUNS
    @given(st.sampled_from(range(3)), _bytes_mutations())
    def mutated(i, edits):
        check(_apply(envs[i], edits), envs[i])

    mutated()
    for env in envs:
        down.open(env, 3)


def fuzz_model_file():
    """Encrypted model files (``fastmb.secure.decrypt_model``): every truncation and bit flip
    of a file (the tag refuses them), then hypothesis edits of the plaintext re-encrypted
    with the key, so that the description and array checks behind the tag face hostile
    values. A model that loads must predict."""
    from fastmb.secure import ModelKey, decrypt_model
    from fastmb.secure import model_file as MF
    from fastmb.secure._crypto import aead
    from fastmb.slicing import CompactModel

    key = ModelKey.generate()
    model = fastmb.MLP([4, 5, 3])
    p = model.init(seed=1)
    files = [MF.encrypt_model(model, p, key),
             MF.encrypt_model(CompactModel.from_params(model, p, "csr+int8"), None, key)]
    X = np.ones((2, 4), np.float32)

    def use(obj):
        if isinstance(obj, CompactModel):
            obj.decision_function(X if obj.start == 0 else np.ones((2, obj.model.sizes[
                obj.start]), np.float32))
        else:
            fastmb.predict(obj[0], obj[1], np.ones((2, obj[0].sizes[0]), obj[1].dtype))

    def check(data):
        obj = _guard(lambda: decrypt_model(data, key))
        if obj is not None:
            _guard(lambda: use(obj))

    _every_truncation_and_flip(files[0], check)

    def resealed(plain):
        nonce = bytes(12)
        header = MF.HEADER.pack(MF.MAGIC, MF.VERSION, key.key_id, nonce)
        return header + aead("aes-gcm", key._secret).encrypt(nonce, plain, header)

    plains = [MF._payload(model, p), MF._payload(model, p.astype(np.float64)),
              MF._payload(CompactModel.from_params(model, p, "csr+int8"), None)]

    @RUNS
    @given(st.sampled_from(plains), _bytes_mutations())
    def mutated(plain, edits):
        check(resealed(_apply(plain, edits)))

    @RUNS
    @given(st.sampled_from(["sizes", "activation", "loss", "fit_intercept", "huber_delta",
                            "dtype"]),
           st.one_of(st.integers(-2**40, 2**40), st.text(max_size=5),
                     st.lists(st.integers(-5, 70), max_size=5), st.none(), st.floats()))
    def header(field, value):
        n = struct.unpack_from(">I", plains[0], 1)[0]
        h = json.loads(plains[0][5:5 + n])
        h[field] = value
        head = json.dumps(h).encode()
        check(resealed(b"P" + struct.pack(">I", len(head)) + head + plains[0][5 + n:]))

    mutated()
    header()


TARGETS = {"sparse": fuzz_sparse, "quantized": fuzz_quantized, "checkpoints": fuzz_checkpoints,
           "states": fuzz_states, "csr": fuzz_csr, "npy": fuzz_npy,
           "compact": fuzz_compact, "envelope": fuzz_envelope, "model_file": fuzz_model_file}

if __name__ == "__main__":
    TARGETS[sys.argv[1]]()
    print(f"fuzz {sys.argv[1]}: ok", flush=True)
