"""fastmb.secure: secure aggregation (SecAgg, SecAgg+), authenticated envelopes, encrypted
model files. The primitives are the cryptography package's; these tests check fastmb's
protocol and hot loops against naive references, published test vectors and the
promises of the README's threat model."""

import dataclasses
import os
import pickle
import stat
import struct

import numpy as np
import pytest

pytest.importorskip("cryptography")

import fastmb
from fastmb.secure import (
    Channel,
    EnvelopeError,
    FieldQuantizer,
    Identity,
    ModelKey,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    add_mask,
    decrypt_model,
    encrypt_model,
    load_encrypted_model,
    mask_words,
    rotate_model_key,
    save_encrypted_model,
    secure_aggregate,
    shamir,
)
from fastmb.secure import _crypto as C
from fastmb.secure import field as F

from . import naive
from .conftest import readme_code

# ----------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("modulus_bits", [32, 64])
def test_field_quantize_against_naive(modulus_bits):
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.normal(0, 0.6, 300), [0.0, 1.0, -1.0, 5.0, -7.0, 0.999999]])
    fq = FieldQuantizer(clip=1.0, bits=12, modulus_bits=modulus_bits, max_weight=9)
    for dtype in (np.float32, np.float64):
        x = u.astype(dtype)
        got = fq.quantize(x, 7, key=12345)
        want = naive.field_quantize(x, 1.0, 12, 7, 12345, modulus_bits)
        assert got.dtype == fq.dtype
        assert got.tolist() == want
    # unbiased: the mean over many keys approaches the scaled value
    q = np.mean([fq.quantize(np.array([0.3]), 1, key=k)[0] for k in range(2000)])
    assert abs(q - (0.3 + 1.0) * fq.scale) < 0.05


def test_field_quantizer_limits_and_bad_input():
    fq = FieldQuantizer(clip=0.5, bits=16, modulus_bits=32, max_weight=1000)
    assert fq.largest_safe_clients() == (2**32 - 1) // (1000 * 65535) == 65
    fq.check_clients(65)
    with pytest.raises(ValueError, match="at most 65 clients are safe"):
        fq.check_clients(66)
    with pytest.raises(ValueError, match="weight must be <= 1000"):
        fq.quantize(np.zeros(3), 1001, key=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fq.quantize(np.array([0.0, np.nan]), 1, key=0)
    with pytest.raises(ValueError, match="bits"):
        FieldQuantizer(bits=33)
    with pytest.raises(ValueError, match="modulus_bits"):
        FieldQuantizer(modulus_bits=16)
    with pytest.raises(ValueError, match="does not fit"):
        FieldQuantizer(bits=32, max_weight=2)
    with pytest.raises(ValueError, match="clip"):
        FieldQuantizer(clip=0.0)
    with pytest.raises(ValueError, match="summed weight is 0"):
        fq.dequantize(np.zeros(4, np.uint32))
    # the mean of several clients is within one step of the weighted mean of the clipped ones
    rng = np.random.default_rng(1)
    U = rng.uniform(-0.7, 0.7, size=(6, 50))
    w = rng.integers(0, 1000, 6)
    total = sum(fq.quantize(U[i], int(w[i]), key=i) for i in range(6))
    want = (w[:, None] * np.clip(U, -0.5, 0.5)).sum(0) / w.sum()
    assert np.abs(fq.dequantize(total) - want).max() <= fq.error


# ----------------------------------------------------------------------------- keystreams


def test_keystreams_match_published_vectors():
    # NIST SP 800-38A, F.5.5 (CTR-AES256.Encrypt), first block
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    ctr = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plain = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    enc = C.keystream(key, "aes-ctr", ctr)
    assert enc.update(plain) == bytes.fromhex("601ec313775789a5b7a7f504bbf3d228")
    # RFC 7539, 2.3.2: the ChaCha20 block of key 00..1f, nonce 000000090000004a00000000,
    # block counter 1 (cryptography's 16-byte nonce: the counter, little-endian, first)
    key = bytes(range(32))
    nonce = struct.pack("<I", 1) + bytes.fromhex("000000090000004a00000000")
    block = C.keystream(key, "chacha20", nonce).update(bytes(64))
    assert block[:16] == bytes.fromhex("10f1e7e4d13b5915500fdd1fa32071c4")


@pytest.mark.parametrize("cipher", ["aes-ctr", "chacha20"])
def test_chunked_masks_equal_the_whole_keystream(cipher):
    seed = bytes(range(1, 33))
    for dtype in (np.uint32, np.uint64):
        words = F.CHUNK_BYTES // np.dtype(dtype).itemsize
        for n in (1, 5, words - 1, words, 2 * words + 3):
            whole = np.frombuffer(C.keystream(seed, cipher).update(bytes(n * np.dtype(
                dtype).itemsize)), dtype)
            np.testing.assert_array_equal(mask_words(seed, n, dtype, cipher), whole)
    # add then subtract is the identity, and an add is modular
    y = np.arange(2 * words + 3, dtype=np.uint64) * np.uint64(2**61)
    y0 = y.copy()
    add_mask(y, seed, cipher=cipher)
    assert not np.array_equal(y, y0)
    add_mask(y, seed, negate=True, cipher=cipher)
    np.testing.assert_array_equal(y, y0)
    with pytest.raises(TypeError, match="uint32 or uint64"):
        add_mask(np.zeros(3, np.int32), seed)
    with pytest.raises(ValueError, match="32 bytes"):
        add_mask(np.zeros(3, np.uint32), b"short")
    with pytest.raises(ValueError, match="cipher"):
        add_mask(np.zeros(3, np.uint32), seed, cipher="rc4")


def test_masked_input_against_naive():
    """A client's masked vector is its quantized update plus its masks, in integers."""
    cfg = SecAggConfig(clip=1.0, bits=10, max_weight=3)
    ids = [4, 9, 13, 21]
    server = SecAggServer(cfg, ids, round_id=2, seed=0)
    clients = {c: SecAggClient(c, cfg, round_id=2) for c in ids}
    rosters = server.rosters([c.advertise() for c in clients.values()])
    inbox = server.route({c: clients[c].share_keys(rosters[c], 4) for c in ids})
    u = np.linspace(-1.2, 1.2, 37)
    plan = clients[9].receive_shares(inbox[9])
    clients[9]._held = {}          # receive_shares again below
    y = clients[9].masked_input(u, 2, inbox[9], key=77)
    x = naive.field_quantize(u, 1.0, 10, 2, 77)
    want = naive.masked_input(x, mask_words(plan.self_seed, 38),
                              [mask_words(s, 38) for _, s, _ in plan.pairs],
                              [-1 if neg else 1 for _, _, neg in plan.pairs])
    assert y.tolist() == want
    assert [v for v, _, _ in plan.pairs] == [4, 13, 21]
    assert [neg for _, _, neg in plan.pairs] == [True, False, False]   # 9 > 4 subtracts


# ----------------------------------------------------------------------------- Shamir


def test_shamir_any_t_shares_recover_and_fewer_do_not():
    rng = np.random.default_rng(0)
    secret = os.urandom(32)
    xs = [3, 8, 100, 2**31 - 1, 17, 5]
    shares = shamir.split(secret, 4, xs)
    pts = list(zip(xs, shares))
    for _ in range(10):
        pick = rng.choice(6, 4, replace=False)
        assert shamir.combine([pts[i] for i in pick]) == secret
    assert shamir.combine(pts) == secret            # more than t: all agree
    try:
        three = shamir.combine(pts[:3])
    except ValueError:
        three = None
    assert three != secret
    bad = list(pts)
    bad[0] = (bad[0][0], (int.from_bytes(bad[0][1], "big") ^ 1).to_bytes(66, "big"))
    with pytest.raises(ValueError, match="do not agree"):
        shamir.combine(bad)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(secret, 2, [1, 1, 2])
    with pytest.raises(ValueError, match="t must be"):
        shamir.split(secret, 7, xs)
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(b"x", 2, xs)
    with pytest.raises(ValueError, match="66 bytes"):
        shamir.combine([(1, b"\0")])


# ----------------------------------------------------------------------------- the protocol


def _weighted_clipped_mean(U, w, clip):
    return (w[:, None] * np.clip(U, -clip, clip)).sum(0) / w.sum()


@pytest.mark.parametrize("N,P,complete", [(3, 1, False), (7, 13, True), (40, 5, False),
                                          (9, F.CHUNK_BYTES // 4 + 5, False)])
def test_secure_sum_is_exact(N, P, complete):
    rng = np.random.default_rng(N)
    U = rng.uniform(-1.5, 1.5, size=(N, P))
    w = rng.integers(0, 50, N)
    w[0] = 50
    ids = rng.choice(10_000, N, replace=False)
    cfg = SecAggConfig(clip=1.0, bits=16, max_weight=50, complete=complete)
    res = secure_aggregate(U, w, cfg, ids=ids, seed=3, round_id=9)
    q = cfg.quantizer
    want = np.zeros(P + 1, q.dtype)
    for i, c in enumerate(ids):
        want += q.quantize(U[i], int(w[i]), key=(3 << 32) ^ int(c))
    np.testing.assert_array_equal(res.total, want)
    assert np.abs(res.mean - _weighted_clipped_mean(U, w, 1.0)).max() <= q.error
    assert res.stats["neighbours"] == (N - 1 if complete or N <= 17 else cfg.degree(N))


def test_dropouts_at_every_stage_are_recovered():
    N, P = 30, 7
    U = np.random.default_rng(2).uniform(-1, 1, size=(N, P))
    cfg = SecAggConfig(neighbours=10, threshold=4)
    drop = {"advertise": [0], "share": [1, 2], "masked": [3, 4, 5], "unmask": [6, 7]}
    res = secure_aggregate(U, config=cfg, drop=drop, seed=1)
    keep = np.array([i not in range(6) for i in range(N)])   # 6, 7 sent their input
    np.testing.assert_array_equal(res.survivors, np.flatnonzero(keep))
    assert np.abs(res.mean - U[keep].mean(0)).max() <= cfg.quantizer.error
    assert res.stats == {"advertised": 29, "shared": 27, "masked": 24, "responded": 22,
                         "neighbours": 10, "threshold": 4}


def test_too_few_shares_fail_before_anything_is_reconstructed(monkeypatch):
    U = np.zeros((12, 3))
    cfg = SecAggConfig(neighbours=4, threshold=3)
    calls = []
    real = shamir.combine
    monkeypatch.setattr(shamir, "combine", lambda pts: calls.append(1) or real(pts))
    with pytest.raises(SecAggError, match="nothing was reconstructed"):
        secure_aggregate(U, config=cfg, drop={"unmask": list(range(0, 12, 2))}, seed=0)
    assert calls == []
    # half the clients drop before sharing keys: nobody holds t neighbours' shares, so
    # every survivor refuses to mask (it could not be recovered) and the round fails
    with pytest.raises(SecAggError, match="no masked input arrived"):
        secure_aggregate(U, config=cfg, drop={"share": list(range(0, 12, 2))})


def test_a_client_never_reveals_both_shares_of_a_peer():
    cfg = SecAggConfig(complete=True, threshold=2)
    ids = [0, 1, 2, 3]
    server = SecAggServer(cfg, ids)
    clients = {c: SecAggClient(c, cfg) for c in ids}
    rosters = server.rosters([c.advertise() for c in clients.values()])
    inbox = server.route({c: clients[c].share_keys(rosters[c], 4) for c in ids})
    c0 = clients[0]
    c0.masked_input(np.zeros(2), 1, inbox[0])
    with pytest.raises(SecAggError, match="both shares"):
        c0.unmask([1, 2], [2, 3])
    out = c0.unmask([1, 2], [3])
    assert {v: k for v, (k, _) in out.items()} == {1: "b", 2: "b", 3: "s"}
    with pytest.raises(SecAggError, match="already revealed"):
        c0.unmask([1, 3], [2])           # asks the s-share of 2 after its b-share
    with pytest.raises(SecAggError, match="refusing to unmask"):
        c0.unmask([], [1, 2, 3])         # too few survivors: one update would be exposed
    assert c0.unmask([1, 2], [3]) == out  # the same request again is answered the same


def test_a_masked_vector_looks_uniform_whatever_the_update():
    """Chi-square test of one client's masked vector over 64 bins of its words, with a
    zero update and with one at the clip limit: both uniform (p > 0.001)."""
    from scipy.stats import chisquare

    P = 20_000
    cfg = SecAggConfig(clip=1.0, neighbours=2, threshold=2)
    for fill in (0.0, 1.0):
        U = np.full((3, P), fill)
        server = SecAggServer(cfg, [0, 1, 2], seed=0)
        clients = {c: SecAggClient(c, cfg) for c in range(3)}
        rosters = server.rosters([c.advertise() for c in clients.values()])
        inbox = server.route({c: clients[c].share_keys(rosters[c], 3) for c in range(3)})
        y = clients[0].masked_input(U[0], 1, inbox[0])
        counts = np.bincount((y[:P] >> np.uint32(26)).astype(np.int64), minlength=64)
        assert chisquare(counts).pvalue > 1e-3
        plain = cfg.quantizer.quantize(U[0], 1, key=0)[:P]
        assert np.bincount((plain >> np.uint32(26)).astype(np.int64), minlength=64).max() == P


def test_protocol_refuses_bad_messages():
    cfg = SecAggConfig(complete=True, threshold=2)
    server = SecAggServer(cfg, [0, 1, 2])
    clients = {c: SecAggClient(c, cfg) for c in range(3)}
    keys = [c.advertise() for c in clients.values()]
    rosters = server.rosters(keys)
    shares = {c: clients[c].share_keys(rosters[c], 3) for c in range(3)}
    tampered = dict(shares[1])
    ct = bytearray(tampered[0])
    ct[5] ^= 1
    tampered[0] = bytes(ct)
    inbox = server.route({0: shares[0], 1: tampered, 2: shares[2]})
    with pytest.raises(SecAggError, match="do not authenticate"):
        clients[0].receive_shares(inbox[0])
    # a roster repeating a public key (a server replaying one client's keys)
    dup = {1: keys[1], 2: keys[2]._replace(s_pk=keys[1].s_pk)}
    with pytest.raises(SecAggError, match="malformed or repeated"):
        SecAggClient(0, cfg).share_keys(dup, 3) if False else clients[0].share_keys(dup, 3)
    with pytest.raises(ValueError, match="at least 3 clients"):
        SecAggServer(cfg, [0, 1])
    with pytest.raises(ValueError, match="distinct"):
        SecAggServer(cfg, [0, 1, 1])
    with pytest.raises(ValueError, match="threshold must be in"):
        SecAggServer(SecAggConfig(threshold=9), range(5))
    with pytest.raises(ValueError, match="clients are safe"):
        SecAggServer(SecAggConfig(max_weight=2**10, bits=16), range(70_000))
    small = SecAggServer(SecAggConfig(neighbours=2), range(8), seed=0)
    small.rosters([SecAggClient(c, cfg).advertise() for c in range(8)])
    with pytest.raises(ValueError, match="non-neighbours"):
        small.route({0: dict.fromkeys(range(1, 8), b"")})
    with pytest.raises(ValueError, match="drop's stages"):
        secure_aggregate(np.zeros((3, 2)), drop={"later": [1]})


def test_secrets_stay_out_of_reprs_and_pickles():
    cfg = SecAggConfig()
    client = SecAggClient(3, cfg)
    client.advertise()
    ident = Identity()
    key = ModelKey.generate()
    chan = Channel(ident, Identity().public, 1, 2)
    for obj in (client, ident, key, chan):
        assert "hidden" in repr(obj) or "public" in repr(obj)
        with pytest.raises(TypeError, match="not pickled"):
            pickle.dumps(obj)
    assert key._secret.hex() not in repr(key)


# ----------------------------------------------------------------------------- envelopes


def _pair(aead="aes-gcm"):
    a, b = Identity(), Identity()
    return (Channel(a, b.public, 1, 2, aead=aead), Channel(b, a.public, 2, 1, aead=aead), a, b)


@pytest.mark.parametrize("aead", ["aes-gcm", "chacha20-poly1305"])
def test_envelope_round_trip_and_every_bit_flip_rejected(aead):
    up, down, _, _ = _pair(aead)
    env = up.seal(b"update bytes", round=4)
    for i in range(len(env)):
        for bit in range(8):
            bad = bytearray(env)
            bad[i] ^= 1 << bit
            with pytest.raises(EnvelopeError):
                down.open(bytes(bad), round=4)
    for n in range(len(env)):
        with pytest.raises(EnvelopeError):
            down.open(env[:n], round=4)
    assert down.received == 0                       # nothing was accepted
    assert down.open(env, round=4) == b"update bytes"
    a = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(down.open_array(up.seal_array(a, 4), 4), a)


def test_envelope_replay_reorder_round_sender_receiver():
    up, down, a, b = _pair()
    e0, e1 = up.seal(b"0", 1), up.seal(b"1", 1)
    with pytest.raises(EnvelopeError, match="out of order"):
        down.open(e1, 1)
    assert down.open(e0, 1) == b"0"
    with pytest.raises(EnvelopeError, match="replayed"):
        down.open(e0, 1)
    with pytest.raises(EnvelopeError, match="round 1, round 2 expected"):
        down.open(e1, 2)
    assert down.open(e1, 1) == b"1"
    # a third party with its own channel to the receiver cannot pass as the sender
    mallory = Identity()
    forger = Channel(mallory, b.public, 1, 2)
    fake = [forger.seal(b"x", 1) for _ in range(3)][2]     # at the expected number, 2
    with pytest.raises(EnvelopeError, match="does not verify"):
        down.open(fake, 1)
    other = [Channel(mallory, b.public, 5, 2).seal(b"x", 1)][0]
    with pytest.raises(EnvelopeError, match="from 5, not from 1"):
        down.open(other, 1)
    to_other = Channel(a, mallory.public, 1, 9).seal(b"x", 1)
    with pytest.raises(EnvelopeError, match="addressed to 9"):
        down.open(to_other, 1)
    with pytest.raises(EnvelopeError, match="another AEAD"):
        Channel(b, a.public, 2, 1, aead="chacha20-poly1305").open(up.seal(b"y", 1), 1)
    with pytest.raises(ValueError, match="differ"):
        Channel(a, b.public, 1, 1)
    with pytest.raises(ValueError, match="aead"):
        Channel(a, b.public, 1, 2, aead="xor")
    with pytest.raises(ValueError, match="32 bytes"):
        Channel(a, b"short", 1, 2)


def test_no_nonce_repeats_over_100k_envelopes():
    up, down, _, _ = _pair()
    seqs, bodies = set(), set()
    for _ in range(100_000):
        env = up.seal(b"same payload", 7)
        seqs.add(struct.unpack_from(">Q", env, 30)[0])     # the nonce is this number
        bodies.add(bytes(env[38:]))
    assert len(seqs) == len(bodies) == 100_000
    assert up.sent == 100_000
    assert down.received == 0


# ----------------------------------------------------------------------------- model files


def test_encrypted_model_files(tmp_path):
    model = fastmb.MLP([5, 7, 3])
    key, key2 = ModelKey.generate(), ModelKey.generate()
    for dtype in (np.float32, np.float64):
        p = model.init(seed=1, dtype=dtype)
        path = tmp_path / f"m{dtype.__name__}.fmbenc"
        save_encrypted_model(path, model, p, key)
        m2, p2 = load_encrypted_model(path, [key2, key])
        assert m2.sizes == model.sizes and p2.dtype == dtype
        np.testing.assert_array_equal(p2, p)
    data = encrypt_model(model, p, key)
    assert encrypt_model(model, p, key) != data       # a fresh nonce every time
    for i in [*range(0, len(data), 7), len(data) - 1]:
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(ValueError):
            decrypt_model(bytes(bad), key)
    for n in (0, 10, 36, 37, 52, len(data) - 1):
        with pytest.raises(ValueError):
            decrypt_model(data[:n], key)
    with pytest.raises(ValueError, match="not among the keys"):
        decrypt_model(data, key2)
    # a compact model (a slice, pruned, int8) travels the same way
    from fastmb.slicing import CompactModel, prune

    cm = CompactModel.from_params(model, prune(model, model.init(seed=2), 0.5), "csr+int8",
                                  start=1)
    back = decrypt_model(encrypt_model(cm, None, key), key)
    assert isinstance(back, CompactModel) and back.to_bytes() == cm.to_bytes()
    # rotation: the old key no longer opens the file
    path = tmp_path / "mfloat64.fmbenc"
    rotate_model_key(path, key, key2)
    with pytest.raises(ValueError, match="not among the keys"):
        load_encrypted_model(path, key)
    np.testing.assert_array_equal(load_encrypted_model(path, key2)[1], p)


def test_key_files(tmp_path):
    key = ModelKey.generate()
    path = tmp_path / "model.key"
    key.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        key.save(path)
    again = ModelKey.load(path)
    assert again.key_id == key.key_id and again._secret == key._secret
    model = fastmb.Linear(3)
    assert decrypt_model(encrypt_model(model, model.init(), key), again)[0].sizes == (3, 1)
    path.write_text('{"format": "fastmb-model-key"}')
    with pytest.raises(ValueError, match="not a fastmb key file"):
        ModelKey.load(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not a fastmb key file"):
        ModelKey.load(path)
    with pytest.raises(TypeError, match="ModelKey"):
        encrypt_model(model, model.init(), b"0" * 32)


# ----------------------------------------------------------------------------- the engine


DATA = fastmb.data.digits()


def _sims(secure, faults=None, **kw):
    part = fastmb.partition.dirichlet(DATA.y, 30, alpha=0.5, seed=1)
    opts = dict(fraction=0.4, epochs=1, batch_size=8, lr=0.1, seed=4, faults=faults)
    opts.update(kw)
    model = fastmb.MLP([64, 16, 10])
    big = int(part.sizes.max())
    sec = fastmb.Simulation(model, DATA, part, secure=dataclasses.replace(secure, max_weight=big),
                            **opts)
    if faults is not None:
        opts["faults"] = dataclasses.replace(faults, setup_dropout=0.0, unmask_dropout=0.0)
    return fastmb.Simulation(model, DATA, part, **opts), sec


def test_simulation_secure_round_is_fedavg_within_the_quantization_error():
    cfg = SecAggConfig(clip=4.0, bits=20)
    plain, sec = _sims(cfg, fastmb.Faults(dropout=0.2))
    p0 = plain.params
    plain.step()
    h = sec.step()
    assert sec.secure_failures == []
    err = np.abs(sec.params.astype(np.float64) - plain.params).max()
    assert 0 < err <= cfg.quantizer.error + 1e-6        # float32 parameters
    assert np.abs(plain.params - p0).max() > 100 * cfg.quantizer.error
    # the masked vectors (P + 1 integers each) and the protocol's keys, shares, answers
    masked = h["reported"] * (sec.model.n_params + 1) * 4
    log = sec.secure_log[-1]
    assert h["bytes_up"] == masked + log["bytes_up"] and 0 < log["bytes_up"] < masked
    assert h["bytes_down"] == h["sampled"] * sec.model.n_params * 4 + log["bytes_down"]
    assert log["masked"] == h["reported"] and log["round"] == 1


def test_simulation_secure_dropouts_at_every_stage():
    faults = fastmb.Faults(dropout=0.1, setup_dropout=0.1, unmask_dropout=0.1, malicious=0.1,
                           attack="nan")
    _, sec = _sims(SecAggConfig(clip=2.0), faults, fraction=0.6)
    hist = sec.run(4)
    failed = {r for r, _ in sec.secure_failures}
    for h in hist:
        if h["round"] in failed:      # too few shares: no update, nothing revealed
            assert h["used"] == 0
        else:
            assert h["used"] + len(h["rejected"]) == h["reported"]
    ok = [h for h in hist if h["round"] not in failed]
    assert ok and sum(len(h["dropped"]) for h in ok) > 0
    assert sum(len(h["rejected"]) for h in hist) > 0    # NaN clients send nothing
    assert np.isfinite(sec.params).all()
    # too many dropouts: rounds fail one by one, each with its reason, and the run goes on
    _, bad = _sims(SecAggConfig(clip=2.0), fastmb.Faults(dropout=0.4, unmask_dropout=0.4))
    bad.run(2)
    assert [r for r, _ in bad.secure_failures] == [1, 2]
    # most clients drop at setup: the others refuse to mask, and the round fails alone
    _, setup = _sims(SecAggConfig(clip=2.0, neighbours=4, threshold=3),
                     fastmb.Faults(setup_dropout=0.7), fraction=0.6)
    setup.run(2)
    assert len(setup.secure_failures) >= 1
    assert bad.params.tolist() == bad._batch.params.tolist()   # no update was made


def test_simulation_signed_equals_unsigned():
    """Signatures change who can cheat, not the sum: a signed secure simulation ends with
    the unsigned one's parameters, bit for bit (the sums are exact integers)."""
    faults = fastmb.Faults(dropout=0.1, unmask_dropout=0.1)
    _, plain = _sims(SecAggConfig(clip=2.0), faults)
    _, signed = _sims(SecAggConfig(clip=2.0, signed=True), faults)
    plain.run(2)
    signed.run(2)
    np.testing.assert_array_equal(signed.params, plain.params)
    assert signed.secure_failures == plain.secure_failures == []


def test_simulation_secure_bad_settings():
    cfg = SecAggConfig()
    part = fastmb.partition.iid(len(DATA.y), 10, seed=0)
    model = fastmb.Linear(64, 10, loss="softmax")
    with pytest.raises(ValueError, match="max_weight"):
        fastmb.Simulation(model, DATA, part, secure=cfg)
    big = SecAggConfig(max_weight=10_000, bits=18)
    with pytest.raises(ValueError, match="at most 1 clients are safe"):
        fastmb.Simulation(model, DATA, part, clients_per_round=5, secure=big)
    ok = SecAggConfig(max_weight=200)
    with pytest.raises(ValueError, match="fedavg"):
        fastmb.Simulation(model, DATA, part, aggregator="median", secure=ok)
    with pytest.raises(TypeError, match="SecAggConfig"):
        fastmb.Simulation(model, DATA, part, secure={"clip": 1})
    with pytest.raises(ValueError, match="need secure aggregation"):
        fastmb.Simulation(model, DATA, part, faults=fastmb.Faults(unmask_dropout=0.1))


def test_simulate_secure(tmp_path, capsys):
    """``fastmb simulate --secure``: secure rounds with dropout faults, reported beside plain
    FedAvg with the same seed."""
    import json

    from fastmb.cli import main

    args = ["simulate", "--data", "synthetic", "--n-samples", "600", "--n-features", "8",
            "--n-classes", "3", "--hidden", "12", "--clients", "12", "--fraction", "0.5",
            "--rounds", "3", "--epochs", "1", "--batch-size", "8", "--no-progress",
            "--no-plot"]
    out = tmp_path / "s"
    assert main([*args, "--out", str(out), "--secure", "secagg+", "--dropout", "0.1",
                 "--setup-dropout", "0.1", "--threshold", "3", "--seed", "1",
                 "--secure-signed"]) == 0
    text = capsys.readouterr().out
    assert "secure aggregation (secagg+, signed): 5 neighbours, threshold 3" in text
    assert "plain FedAvg, same seed" in text
    s = json.loads((out / "summary.json").read_text())
    assert s["plain_fedavg_accuracy"] is not None and s["secure_failures"] == []
    for flags, match in [(["--secure", "rsa"], "secagg or secagg+"),
                         (["--secure", "secagg", "--rates", "1,0.5", "--rate-mix", "1,1"],
                          "FedAvg rounds"),
                         (["--secure", "secagg", "--aggregator", "median"], "fedavg")]:
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / "bad"), *flags]) != 0
        assert match in capsys.readouterr().err


def test_readme_example(capsys):
    """The README's secure-aggregation example, as written."""
    code = readme_code("## Security")
    exec(compile(code, "README.md", "exec"), {})
    n, err = capsys.readouterr().out.split()
    assert n == "47" and float(err) <= SecAggConfig().quantizer.error


def _signed_round(n=8, P=6, drop_masked=(2,)):
    """A signed SecAgg round of n clients up to the unmasking request."""
    from fastmb.secure.secagg import signing_identities

    cfg = SecAggConfig(complete=True, threshold=3, signed=True)
    sign, trusted = signing_identities(range(n))
    server = SecAggServer(cfg, range(n))
    clients = {c: SecAggClient(c, cfg, signing_key=sign[c], trusted=trusted) for c in range(n)}
    rosters = server.rosters([c.advertise() for c in clients.values()])
    inbox = server.route({c: clients[c].share_keys(rosters[c], n) for c in range(n)})
    U = np.random.default_rng(0).uniform(-1, 1, (n, P))
    for c in range(n):
        if c not in drop_masked:
            server.add_masked(c, clients[c].masked_input(U[c], 1, inbox[c], key=c))
    return cfg, server, clients, rosters, U


def test_signed_rounds_stop_key_substitution_and_inconsistent_views():
    from fastmb.secure.secagg import collect_unmask

    # a whole signed round: the same exact sum
    U = np.random.default_rng(5).uniform(-1, 1, (10, 4))
    res = secure_aggregate(U, config=SecAggConfig(signed=True, neighbours=6, threshold=3),
                           drop={"masked": [1], "unmask": [2]}, seed=2)
    q = SecAggConfig().quantizer
    want = sum(q.quantize(U[i], 1, key=(2 << 32) ^ i) for i in range(10) if i != 1)
    np.testing.assert_array_equal(res.total, want)
    with pytest.raises(ValueError, match="signing_key"):
        SecAggClient(0, SecAggConfig(signed=True))

    cfg, server, clients, rosters, U = _signed_round()
    # the server swaps client 1's keys for its own in client 0's roster: refused
    mallory = SecAggClient(1, SecAggConfig(), 0).advertise()
    forged = dict(rosters[0])
    forged[1] = mallory._replace(signature=rosters[0][1].signature)
    victim = SecAggClient(0, cfg, signing_key=clients[0]._sign, trusted=clients[0]._trusted)
    victim.advertise()
    with pytest.raises(SecAggError, match="not signed by its identity"):
        victim.share_keys(forged, 8)
    # an honest unmasking works
    requests = server.unmask_requests()
    total = server.finish(collect_unmask(clients, requests))
    np.testing.assert_array_equal(total, sum(cfg.quantizer.quantize(U[c], 1, key=c)
                                             for c in range(8) if c != 2))

    # the server tells client 0 that 3 dropped while the signed list says it sent
    cfg, server, clients, rosters, U = _signed_round()
    senders = sorted(server.sent)
    proofs = {c: clients[c].confirm(senders) for c in senders}
    survivors, dropped = server.unmask_requests()[0]
    lie = ([v for v in survivors if v != 3], sorted([*dropped, 3]))
    with pytest.raises(SecAggError, match="does not match the signed list"):
        clients[0].unmask(*lie, proofs=proofs)
    # ... or shows one group another list of senders: their signatures do not count
    other = [c for c in senders if c != 3]
    fake = {c: clients[c]._sign.sign(b"not the list") for c in other}
    with pytest.raises(SecAggError, match="neighbours signed"):
        clients[4].unmask(*server.unmask_requests()[4], proofs=fake)
    with pytest.raises(SecAggError, match="without it"):
        clients[5].confirm([0, 1, 3])
    assert clients[0].unmask(survivors, dropped, proofs=proofs)   # the truth is answered
