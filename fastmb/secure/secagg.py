"""Secure aggregation that survives dropouts: SecAgg (Bonawitz et al. 2017) and SecAgg+
(Bell et al. 2020).

The server learns the sum of the surviving clients' quantized updates and nothing else,
against an honest-but-curious server and fewer than ``threshold`` colluding clients (the
README's "Threat model"). One round, four stages:

0. **Advertise keys.** Client u makes two X25519 key pairs: ``c`` (to encrypt shares) and
   ``s`` (to agree on masks), and sends the public halves. The server forwards to each
   client the keys of its neighbours: the complete graph (SecAgg) or a random k-regular
   graph (SecAgg+: clients on a ring in a random order, each joined to the k/2 nearest
   on either side, k of order log N: ``4 ceil(log2 N)`` by default).
1. **Share keys.** u draws a self-mask seed ``b_u`` (32 random bytes) and splits ``b_u``
   and its private key ``s_u`` t-of-n among its neighbours (:mod:`.shamir`); the two
   shares for neighbour v travel encrypted with AES-256-GCM under a key u and v agree on
   with their ``c`` keys (HKDF-SHA256 bound to the round and both ids).
2. **Masked input.** u sends ``y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv)`` modulo
   ``2**bits`` over the neighbours v that shared keys, where ``x_u`` is the quantized
   update (:class:`~fastmb.secure.field.FieldQuantizer`), ``s_uv`` the key u and v agree
   on with their ``s`` keys, ``sign = +1`` if u < v else -1, and PRG a keystream.
3. **Unmask.** The server names, to each survivor, which of its neighbours sent ``y``
   and which dropped; a client reveals its share of ``b_v`` for the first and of ``s_v``
   for the second, never both for one peer (it remembers, and refuses a request that
   would). With t shares the server recovers each survivor's ``b_u`` (removes the self
   masks) and each dropped client's ``s`` key (removes the pairwise masks it shared with
   survivors; the recovered key must match the public one it advertised).

Pairwise masks between two survivors cancel in the sum. A client that drops at any stage
is recovered as long as t neighbours of each survivor respond: one that drops before
masking (while keys are shared) is simply left out of its neighbours' masks, unlike
Flower's SecAgg+, whose round then aborts. With fewer than t responses for some secret,
:meth:`SecAggServer.finish` raises :class:`SecAggError` before reconstructing anything.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from typing import NamedTuple

import numpy as np

from .. import _validation as V
from . import _crypto as C
from . import shamir
from .field import FieldQuantizer, add_mask

VERSION = 1
_SHARE_INFO = b"fastmb secagg v1 shares"
_MASK_INFO = b"fastmb secagg v1 mask"
_PLAIN = struct.Struct(">QQ")          # sender, receiver in a share message
_SHARE_MSG = _PLAIN.size + 2 * shamir.SHARE_BYTES
MAX_ID = (1 << 31) - 2                 # a client id is a Shamir point x = id + 1 < 2**31


class SecAggError(RuntimeError):
    """The round cannot complete without revealing something: too few shares, or a
    share or key that does not check out. Nothing about any update was revealed."""


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
    """Settings of a secure-aggregation round.

    Parameters
    ----------
    clip, bits, modulus_bits, max_weight
        The quantization (:class:`~fastmb.secure.field.FieldQuantizer`): coordinates are
        clipped to ``[-clip, clip]`` and rounded to ``2**bits`` levels; the group is the
        integers modulo ``2**modulus_bits`` (32 or 64); weights are integers up to
        ``max_weight``.
    neighbours : int, optional
        k, the neighbours of each client (SecAgg+). Default ``4 * ceil(log2 N)`` (at most
        N - 1: the complete graph up to about 20 clients). With the default threshold a
        round then survives a fifth of each neighbourhood dropping with room to spare:
        at ``2 * ceil(log2 N)`` and 5% dropouts at each of three stages, a simulated round
        of 20 clients failed one time in five. ``complete=True`` gives every client all
        the others (classic SecAgg).
    threshold : int, optional
        t, the shares that recover a secret, in ``[2, k]``. Default ``k // 2 + 1``.
    cipher : {"aes-ctr", "chacha20"}
        The keystream that expands masks.
    signed : bool, default False
        Against a server that does not follow the protocol: each client signs its
        advertised keys with a long-term Ed25519 identity (the others check it against
        the identities they trust, so a server cannot substitute keys), and before
        unmasking signs the list of clients that sent masked inputs; a client unmasks only
        when t of its neighbours signed the same list and the request matches it (so a
        server cannot tell clients different stories about who dropped: Bonawitz et al.'s
        consistency check).

    Examples
    --------
    >>> from fastmb.secure import SecAggConfig
    >>> cfg = SecAggConfig(clip=0.5)
    >>> cfg.degree(100), cfg.threshold_for(100), SecAggConfig(complete=True).degree(10)
    (28, 15, 9)
    """

    clip: float = 1.0
    bits: int = 16
    modulus_bits: int = 32
    max_weight: int = 1
    neighbours: int | None = None
    threshold: int | None = None
    complete: bool = False
    cipher: str = "aes-ctr"
    signed: bool = False

    def __post_init__(self):
        self.quantizer  # noqa: B018 - checks clip, bits, modulus_bits, max_weight
        if self.neighbours is not None:
            V.check_number("neighbours", self.neighbours, low=2, integer=True)
        if self.threshold is not None:
            V.check_number("threshold", self.threshold, low=2, integer=True)
        for name in ("complete", "signed"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got "
                                f"{type(getattr(self, name)).__name__}")
        C.check_choice("cipher", self.cipher, C.CIPHERS)

    @property
    def quantizer(self):
        return FieldQuantizer(self.clip, self.bits, self.modulus_bits, self.max_weight)

    def degree(self, n):
        """k for a round of ``n`` clients."""
        if self.complete or n <= 2:
            return max(0, n - 1)
        k = self.neighbours if self.neighbours is not None else 4 * math.ceil(math.log2(n))
        k += k % 2
        return min(k, n - 1)

    def threshold_for(self, n):
        """t for a round of ``n`` clients (checked against k)."""
        k = self.degree(n)
        t = self.threshold if self.threshold is not None else k // 2 + 1
        if not 2 <= t <= k:
            raise ValueError(f"threshold must be in [2, {k}] (the neighbours of each client "
                             f"among {n}), got {t}")
        return t

    def check_round(self, n):
        """Refuse a round of ``n`` clients that cannot work: too few clients for a
        threshold of 2, or a sum that could wrap around the modulus."""
        if n < 3:
            raise ValueError(f"secure aggregation needs at least 3 clients, got {n}")
        self.threshold_for(n)
        self.quantizer.check_clients(n)


def neighbour_graph(ids, k, seed):
    """Each client's neighbours: ``{id: sorted int64 array}``, a k-regular graph (k even,
    or N - 1: complete). The clients sit on a ring in a random order drawn from ``seed``
    (the server's public randomness), each joined to the k/2 nearest on either side."""
    ids = np.asarray(ids, np.int64)
    n = ids.shape[0]
    if k >= n - 1:
        return {int(u): np.delete(ids, i) for i, u in enumerate(ids)}
    ring = ids[np.random.default_rng(seed).permutation(n)]
    pos = {int(u): i for i, u in enumerate(ring)}
    half = k // 2
    out = {}
    for u, i in pos.items():
        near = [ring[(i + d) % n] for d in range(-half, half + 1) if d]
        out[u] = np.sort(np.array(near, np.int64))
    return out


class PublicKeys(NamedTuple):
    """What a client advertises: its id, two X25519 public keys (32 bytes each) and, with
    ``SecAggConfig(signed=True)``, its identity's Ed25519 signature of them."""

    cid: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes = b""


class MaskPlan(NamedTuple):
    """What a client needs to mask its update: its self-mask seed, and for each neighbour
    that shared keys the pairwise seed and whether it is subtracted. Secret: it never
    leaves the client (in a simulation, it travels with the client's training task)."""

    cid: int
    self_seed: bytes
    pairs: tuple          # ((peer, seed, negate), ...)
    cipher: str

    def __repr__(self):
        return f"MaskPlan(cid={self.cid}, pairs={len(self.pairs)}, seeds=<hidden>)"


def mask_update(plan, x):
    """``x`` (a quantized vector, modified in place) plus every mask of ``plan``."""
    add_mask(x, plan.self_seed, cipher=plan.cipher)
    for _, seed, negate in plan.pairs:
        add_mask(x, seed, negate=negate, cipher=plan.cipher)
    return x


def _pair_info(base, round_id, u, v):
    a, b = min(u, v), max(u, v)
    return base + struct.pack(">QQQ", round_id, a, b)


def _share_ad(round_id, sender, receiver):
    return _SHARE_INFO + struct.pack(">BQQQ", VERSION, round_id, sender, receiver)


def _share_nonce(sender, receiver):
    # The share key is the same both ways (one X25519 agreement per pair and round); the
    # nonce names the direction, and a direction carries one message per round.
    return sender.to_bytes(6, "big") + receiver.to_bytes(6, "big")


def _keys_message(round_id, cid, c_pk, s_pk):
    return b"fastmb secagg v1 keys" + struct.pack(">QQ", round_id, cid) + c_pk + s_pk


def _survivors_message(round_id, survivors):
    return b"fastmb secagg v1 survivors" + struct.pack(f">Q{len(survivors)}Q", round_id,
                                                       *survivors)


def _check_id(cid, name="cid"):
    return V.check_number(name, cid, low=0, high=MAX_ID, integer=True)


class SecAggClient:
    """One client's side of a round (see the module docstring for the stages).

    Its secrets (private keys, the self-mask seed, the shares it holds) stay in this
    object; its repr shows none of them, and it refuses to be pickled.
    """

    def __init__(self, cid, config, round_id=0, *, signing_key=None, trusted=None):
        if not isinstance(config, SecAggConfig):
            raise TypeError(f"config must be a SecAggConfig, got {type(config).__name__}")
        if config.signed and (signing_key is None or trusted is None):
            raise ValueError("a signed round needs each client's signing_key (its Ed25519 "
                             "identity) and trusted (the identities it trusts, by client id)")
        self._sign, self._trusted = signing_key, (dict(trusted) if trusted else {})
        self._u3 = None
        self.cid = _check_id(cid)
        self.config = config
        self.round_id = V.check_number("round_id", round_id, low=0, integer=True)
        self._c = self._s = None
        self._roster = {}
        self._held = {}          # peer -> (b share, s share) this client holds
        self._senders = ()
        self._revealed = {}      # peer -> "b" or "s": what this client already revealed
        self._b = None
        self._t = None
        self._share_keys = {}

    def __repr__(self):
        return f"SecAggClient(cid={self.cid}, round={self.round_id}, keys=<hidden>)"

    def __reduce__(self):
        raise TypeError("a SecAggClient holds secrets and is not pickled")

    def advertise(self):
        """Stage 0: fresh key pairs for this round; returns the public keys."""
        self._c, self._s = C.new_private_key(), C.new_private_key()
        c_pk, s_pk = C.public_bytes(self._c), C.public_bytes(self._s)
        sig = (self._sign.sign(_keys_message(self.round_id, self.cid, c_pk, s_pk))
               if self.config.signed else b"")
        return PublicKeys(self.cid, c_pk, s_pk, sig)

    def share_keys(self, roster, n_clients):
        """Stage 1: ``roster`` is ``{peer: PublicKeys}`` of the neighbours that advertised,
        in a round of ``n_clients``; returns ``{peer: encrypted shares}``."""
        if self._c is None:
            raise SecAggError("share_keys before advertise")
        t = self.config.threshold_for(n_clients)
        roster = dict(roster)
        seen = set()
        for v, keys in roster.items():
            v = _check_id(v, "roster id")
            if not isinstance(keys, PublicKeys) or keys.cid != v or v == self.cid:
                raise ValueError(f"roster entry {v}: expected another client's PublicKeys")
            for pk in (keys.c_pk, keys.s_pk):
                if len(pk) != 32 or pk in seen:
                    raise SecAggError(f"roster entry {v}: a public key is malformed or repeated")
                seen.add(pk)
            if self.config.signed and not C.verify(
                    self._trusted.get(v, b""), keys.signature,
                    _keys_message(self.round_id, v, keys.c_pk, keys.s_pk)):
                raise SecAggError(f"client {self.cid}: the keys advertised for {v} are not "
                                  "signed by its identity")
        if len(roster) < t:
            raise SecAggError(f"client {self.cid}: {len(roster)} neighbours advertised keys, "
                              f"fewer than the threshold {t}: the round cannot recover it")
        self._roster, self._t = roster, t
        self._b = os.urandom(32)
        peers = sorted(roster)
        xs = [v + 1 for v in peers]
        b_shares = shamir.split(self._b, t, xs)
        s_shares = shamir.split(C.private_bytes(self._s), t, xs)
        out = {}
        self._share_keys = {}    # one agreement per pair: it encrypts to v and decrypts from v
        for v, bs, ss in zip(peers, b_shares, s_shares):
            key = C.agree(self._c, roster[v].c_pk, _pair_info(_SHARE_INFO, self.round_id,
                                                               self.cid, v))
            self._share_keys[v] = aead = C.aead("aes-gcm", key)
            msg = _PLAIN.pack(self.cid, v) + bs + ss
            out[v] = aead.encrypt(_share_nonce(self.cid, v), msg,
                                  _share_ad(self.round_id, self.cid, v))
        return out

    def receive_shares(self, inbox):
        """Stage 2, first half: decrypt the shares neighbours sent (``{sender: bytes}``)
        and derive the masks; returns this client's :class:`MaskPlan`."""
        if self._b is None:
            raise SecAggError("receive_shares before share_keys")
        held = {}
        for w, ct in dict(inbox).items():
            w = _check_id(w, "inbox sender")
            if w not in self._roster:
                raise SecAggError(f"client {self.cid}: shares from {w}, not a neighbour")
            try:
                msg = self._share_keys[w].decrypt(_share_nonce(w, self.cid), bytes(ct),
                                                  _share_ad(self.round_id, w, self.cid))
            except C.invalid_tag() as e:
                raise SecAggError(f"client {self.cid}: the shares from {w} do not "
                                  "authenticate") from e
            if len(msg) != _SHARE_MSG or _PLAIN.unpack_from(msg) != (w, self.cid):
                raise SecAggError(f"client {self.cid}: the shares from {w} are malformed")
            o = _PLAIN.size
            held[w] = (msg[o:o + shamir.SHARE_BYTES], msg[o + shamir.SHARE_BYTES:])
        if len(held) < self._t:
            raise SecAggError(f"client {self.cid}: {len(held)} neighbours shared keys, fewer "
                              f"than the threshold {self._t}")
        self._held = held
        self._senders = tuple(sorted(held))
        pairs = tuple((v, C.agree(self._s, self._roster[v].s_pk,
                                  _pair_info(_MASK_INFO, self.round_id, self.cid, v)),
                       self.cid > v) for v in self._senders)
        return MaskPlan(self.cid, self._b, pairs, self.config.cipher)

    def masked_input(self, update, weight, inbox, key=0):
        """Stage 2: the masked quantized update ``y`` (``(P + 1,)`` integers).
        ``key`` seeds the stochastic rounding."""
        plan = self.receive_shares(inbox)
        return mask_update(plan, self.config.quantizer.quantize(update, weight, key))

    def confirm(self, senders):
        """Signed rounds, between stages 2 and 3: sign the list of the clients that sent a
        masked input (the server's claim, the same for everyone); returns the signature.
        Refuses a list without this client or shorter than t."""
        if not self.config.signed:
            raise SecAggError("confirm() is for signed rounds (SecAggConfig(signed=True))")
        u3 = tuple(sorted({_check_id(v, "sender") for v in senders}))
        if self.cid not in u3 or len(u3) < self._t:
            raise SecAggError(f"client {self.cid}: a list of {len(u3)} senders without it or "
                              f"below the threshold {self._t}; refusing to confirm")
        self._u3 = u3
        return self._sign.sign(_survivors_message(self.round_id, u3))

    def _check_consistent(self, survivors, dropped, proofs):
        """A signed round's unmasking request must follow from the list this client
        confirmed, and t of its neighbours must have signed that same list."""
        if self._u3 is None:
            raise SecAggError(f"client {self.cid}: unmask before confirm in a signed round")
        msg = _survivors_message(self.round_id, self._u3)
        good = 0
        for v, sig in dict(proofs or {}).items():
            if good == self._t - 1:   # with its own confirmation, t: enough
                break
            v = int(v)
            if v in self._roster and v in self._u3 and C.verify(self._trusted.get(v, b""),
                                                                 sig, msg):
                good += 1
        if good < self._t - 1:
            raise SecAggError(f"client {self.cid}: {good} neighbours signed the list of "
                              f"survivors it confirmed, {self._t - 1} needed; refusing")
        held = set(self._held)
        alive = set(self._u3)
        if survivors & held != held & alive or dropped & held != held - alive:
            raise SecAggError(f"client {self.cid}: the unmasking request does not match the "
                              "signed list of survivors; refusing")

    def unmask(self, survivors, dropped, proofs=None):
        """Stage 3: this client's shares of ``b_v`` for the neighbours v in ``survivors``
        and of ``s_v`` for those in ``dropped``: ``{v: ("b" or "s", share)}``.

        Refuses (SecAggError) a peer in both lists, a peer whose other share it already
        revealed, and fewer than t survivors (the server could then learn a single
        client's update). In a signed round, ``proofs`` (``{client: signature}`` of the
        list of senders, see :meth:`confirm`) must hold t - 1 valid signatures of its
        neighbours on the list it confirmed, and the request must follow from that list."""
        survivors = {_check_id(v, "survivor") for v in survivors}
        dropped = {_check_id(v, "dropped id") for v in dropped}
        if self.config.signed:
            self._check_consistent(survivors, dropped, proofs)
        both = survivors & dropped
        if both:
            raise SecAggError(f"client {self.cid}: asked for both shares of {sorted(both)}")
        if len(survivors | {self.cid}) < self._t:
            raise SecAggError(f"client {self.cid}: {len(survivors | {self.cid})} survivors, "
                              f"fewer than the threshold {self._t}; refusing to unmask")
        asked = [(v, kind) for kind, peers in (("b", survivors), ("s", dropped))
                 for v in sorted(peers) if v in self._held]
        for v, kind in asked:   # every check before anything is revealed
            if self._revealed.get(v, kind) != kind:
                raise SecAggError(f"client {self.cid}: already revealed the other share "
                                  f"of {v}; refusing")
        self._revealed.update(asked)
        return {v: (kind, self._held[v][0 if kind == "b" else 1]) for v, kind in asked}


class SecAggServer:
    """The server's side of a round of the clients ``ids``.

    Parameters
    ----------
    config : SecAggConfig
    ids : sequence of int
        The round's clients (distinct ids in ``[0, 2**31 - 2]``).
    round_id : int
    seed : int
        Draws the neighbour graph.
    """

    def __init__(self, config, ids, round_id=0, seed=0):
        if not isinstance(config, SecAggConfig):
            raise TypeError(f"config must be a SecAggConfig, got {type(config).__name__}")
        ids = V.as_index_array("ids", ids, high=MAX_ID + 1)
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise ValueError("ids must be distinct")
        self.config = config
        self.ids = np.sort(ids)
        self.n = int(ids.shape[0])
        config.check_round(self.n)
        self.k = config.degree(self.n)
        self.t = config.threshold_for(self.n)
        self.round_id = V.check_number("round_id", round_id, low=0, integer=True)
        self.graph = neighbour_graph(self.ids, self.k, seed)
        self.keys = {}            # U1: advertised
        self.shared = set()       # U2: sent shares
        self.sent = set()         # U3: sent a masked input
        self.total = None

    def rosters(self, adverts):
        """Stage 0: collect ``PublicKeys`` (an iterable); returns ``{cid: roster}``, each
        client's neighbours that advertised."""
        for keys in adverts:
            if not isinstance(keys, PublicKeys) or int(keys.cid) not in self.graph:
                raise ValueError(f"advertised keys of an unknown client: {keys!r}")
            self.keys[int(keys.cid)] = keys
        return {u: {int(v): self.keys[int(v)] for v in self.graph[u] if int(v) in self.keys}
                for u in self.keys}

    def route(self, shares):
        """Stage 1: ``{sender: {receiver: ciphertext}}``; returns each receiver's inbox."""
        inbox = {}
        for u, msgs in shares.items():
            u = int(u)
            if u not in self.keys:
                raise ValueError(f"shares from client {u}, which did not advertise keys")
            allowed = set(self.graph[u].tolist()) & set(self.keys)
            if set(msgs) - allowed:
                raise ValueError(f"client {u} sent shares to non-neighbours "
                                 f"{sorted(set(msgs) - allowed)}")
            self.shared.add(u)
            for v, ct in msgs.items():
                inbox.setdefault(int(v), {})[u] = ct
        return {v: box for v, box in inbox.items() if v in self.shared}

    def _zero(self, P):
        if self.total is None:
            self.total = np.zeros(P + 1, self.config.quantizer.dtype)
        elif self.total.shape[0] != P + 1:
            raise ValueError(f"a masked input of {P + 1} values after ones of "
                             f"{self.total.shape[0]}")

    def add_masked(self, cid, y):
        """Stage 2: client ``cid``'s masked input, added to the running sum."""
        cid = int(cid)
        if cid not in self.shared:
            raise ValueError(f"a masked input from client {cid}, which did not share keys")
        if cid in self.sent:
            raise ValueError(f"a second masked input from client {cid}")
        y = np.asarray(y)
        if y.dtype != self.config.quantizer.dtype or y.ndim != 1 or y.shape[0] < 2:
            raise ValueError(f"a masked input must be a (P + 1,) {self.config.quantizer.dtype} "
                             "vector")
        self._zero(y.shape[0] - 1)
        self.total += y
        self.sent.add(cid)

    def add_masked_sum(self, total, cids):
        """Stage 2, summed elsewhere: the modular sum of the masked inputs of ``cids``
        (shards of clients summed where they were masked)."""
        cids = [int(c) for c in cids]
        if set(cids) - self.shared or set(cids) & self.sent or len(set(cids)) != len(cids):
            raise ValueError("masked inputs from clients that did not share keys or sent twice")
        total = np.asarray(total)
        if total.dtype != self.config.quantizer.dtype or total.ndim != 1:
            raise ValueError(f"the sum must be a {self.config.quantizer.dtype} vector")
        self._zero(total.shape[0] - 1)
        self.total += total
        self.sent.update(cids)

    def unmask_requests(self):
        """Stage 3: ``{cid: (survivors, dropped)}`` for every client that sent a masked
        input: which of its neighbours did, and which shared keys but did not."""
        dropped = self.shared - self.sent
        return {u: (sorted(set(self.graph[u].tolist()) & self.sent),
                    sorted(set(self.graph[u].tolist()) & dropped)) for u in sorted(self.sent)}

    def finish(self, responses):
        """Stage 3: remove the masks with the clients' ``{responder: {peer: (kind,
        share)}}``; returns the exact sum ``(P + 1,)`` of the survivors' quantized updates.

        Every secret's shares are counted before any is combined: with fewer than t for
        one of them, SecAggError and nothing reconstructed."""
        if self.total is None or not self.sent:
            raise SecAggError("no masked input arrived: nothing to aggregate")
        if len(self.sent) < self.t:
            raise SecAggError(f"{len(self.sent)} clients sent masked inputs, fewer than the "
                              f"threshold {self.t}")
        dropped = sorted(self.shared - self.sent)
        want = [(u, "b") for u in sorted(self.sent)] + [(d, "s") for d in dropped]
        got = {w: {} for w in want}
        for r, shares in responses.items():
            r = int(r)
            if r not in self.sent:
                continue   # only clients that sent a masked input are asked
            for peer, (kind, share) in shares.items():
                peer = int(peer)
                if (peer, kind) in got and r in self.graph[peer]:
                    got[(peer, kind)][r + 1] = share
        short = [(u, kind, len(got[(u, kind)])) for u, kind in want if len(got[(u, kind)]) < self.t]
        if short:
            u, kind, m = short[0]
            what = "self-mask seed" if kind == "b" else "mask key"
            raise SecAggError(
                f"the round fails: client {u}'s {what} has {m} shares, {self.t} needed "
                f"({len(short)} secrets short); nothing was reconstructed")
        total = self.total.copy()
        cipher = self.config.cipher
        for u, kind in want:
            pts = sorted(got[(u, kind)].items())[:self.t]
            try:
                secret = shamir.combine(pts)
            except ValueError as e:
                raise SecAggError(f"client {u}'s shares do not combine: {e}") from e
            if kind == "b":
                add_mask(total, secret, negate=True, cipher=cipher)
                continue
            key = C.private_key_from_bytes(secret)
            if C.public_bytes(key) != self.keys[u].s_pk:
                raise SecAggError(f"the mask key recovered for client {u} does not match "
                                  "the one it advertised (a wrong share)")
            for v in self.graph[u].tolist():
                if v in self.sent:
                    seed = C.agree(key, self.keys[v].s_pk, _pair_info(_MASK_INFO, self.round_id,
                                                                      v, u))
                    # v added sign(v, u) PRG: subtract it
                    add_mask(total, seed, negate=not (v > u), cipher=cipher)
        return total


def collect_stage(clients, stage, absent=()):
    """One stage for simulated clients: ``{cid: stage(client)}`` over ``clients`` (a dict),
    leaving out the ``absent`` ones (they dropped) and those that refuse (SecAggError: the
    stage is unsafe for them, e.g. fewer than t neighbours took part; a client that
    refuses sends nothing, as a dropped one)."""
    out = {}
    for c, client in clients.items():
        if c in absent:
            continue
        try:
            out[c] = stage(client)
        except SecAggError:
            continue
    return out


def collect_unmask(clients, requests, absent=(), proofs=None):
    """Stage 3 for simulated clients: the responses of the clients asked (``requests``
    from :meth:`SecAggServer.unmask_requests`) that neither dropped nor refused. In a
    signed round the asked clients first confirm the list of senders, and every
    response comes with all the confirmations (``proofs``, computed here when None)."""
    asked = {c: clients[c] for c in requests if c not in absent}
    if proofs is None and asked and next(iter(asked.values())).config.signed:
        senders = sorted(requests)
        proofs = collect_stage(asked, lambda client: client.confirm(senders))
    return collect_stage(asked, lambda client: client.unmask(*requests[client.cid],
                                                               proofs=proofs))


def signing_identities(ids):
    """A simulated PKI: ``(signing keys, trusted public keys)`` by client id, fresh Ed25519
    identities (a deployment keeps each device's key on the device)."""
    keys = {int(c): C.new_signing_key() for c in ids}
    return keys, {c: C.signing_public(k) for c, k in keys.items()}


class RoundResult(NamedTuple):
    """A secure round's outcome: the weighted ``mean`` (float64) of the survivors' clipped
    updates, the exact integer ``total``, and who took part at each stage."""

    mean: np.ndarray
    total: np.ndarray
    survivors: np.ndarray
    dropped: np.ndarray
    stats: dict


def secure_aggregate(updates, weights=None, config=None, *, ids=None, drop=None, round_id=0,
                     seed=0):
    """One whole round of secure aggregation in this process, every client a real
    :class:`SecAggClient`, the server a :class:`SecAggServer`.

    Parameters
    ----------
    updates : (N, P) float array
    weights : (N,) non-negative integers, optional (default 1 each)
    config : SecAggConfig, optional
    ids : (N,) distinct integers, optional (default 0..N-1)
    drop : dict, optional
        Clients (ids) that drop out at each stage: ``"advertise"``, ``"share"`` (before
        sending shares), ``"masked"`` (after sharing keys, before sending their masked
        input) and ``"unmask"`` (they do not answer the unmasking request).
    round_id, seed : int
        The round's number (bound into every key) and the seed of the neighbour graph and
        of the stochastic rounding.

    Returns
    -------
    RoundResult

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.secure import SecAggConfig, secure_aggregate
    >>> U = np.random.default_rng(0).uniform(-0.5, 0.5, size=(12, 5))
    >>> res = secure_aggregate(U, config=SecAggConfig(clip=1.0), drop={"masked": [3]})
    >>> res.survivors.tolist() == [i for i in range(12) if i != 3]
    True
    >>> keep = np.arange(12) != 3
    >>> bool(np.abs(res.mean - U[keep].mean(axis=0)).max() <= SecAggConfig().quantizer.error)
    True
    """
    config = SecAggConfig() if config is None else config
    U = V._as_numeric("updates", updates)
    if U.ndim != 2 or U.shape[1] == 0:
        raise ValueError(f"updates must be a (N, P) array, got shape {U.shape}")
    N = U.shape[0]
    ids = np.arange(N, dtype=np.int64) if ids is None else \
        V.as_index_array("ids", ids, high=MAX_ID + 1, length=N)
    w = np.ones(N, np.int64) if weights is None else V.as_index_array(
        "weights", weights, high=config.max_weight + 1, length=N)
    drop = {} if drop is None else dict(drop)
    stages = ("advertise", "share", "masked", "unmask")
    if set(drop) - set(stages):
        raise ValueError(f"drop's stages are {', '.join(stages)}, got {sorted(set(drop))}")
    gone = {s: {int(c) for c in drop.get(s, ())} for s in stages}
    server = SecAggServer(config, ids, round_id, seed)
    sign, trusted = signing_identities(ids) if config.signed else ({}, None)
    clients = {int(c): SecAggClient(int(c), config, round_id, signing_key=sign.get(int(c)),
                                    trusted=trusted) for c in ids}
    alive = [c for c in clients if c not in gone["advertise"]]
    rosters = server.rosters([clients[c].advertise() for c in alive])
    inbox = server.route(collect_stage({c: clients[c] for c in alive},
                                       lambda cl: cl.share_keys(rosters[cl.cid], server.n),
                                       gone["share"]))
    row = {int(c): i for i, c in enumerate(ids)}
    masked = collect_stage(
        {c: clients[c] for c in sorted(server.shared)},
        lambda cl: cl.masked_input(U[row[cl.cid]], int(w[row[cl.cid]]), inbox.get(cl.cid, {}),
                                   key=((seed << 32) ^ cl.cid) % (1 << 64)), gone["masked"])
    for c, y in masked.items():
        server.add_masked(c, y)
    responses = collect_unmask(clients, server.unmask_requests(), gone["unmask"])
    total = server.finish(responses)
    survivors = np.array(sorted(server.sent), np.int64)
    return RoundResult(config.quantizer.dequantize(total), total, survivors,
                       np.setdiff1d(ids, survivors),
                       {"advertised": len(server.keys), "shared": len(server.shared),
                        "masked": len(server.sent), "responded": len(responses),
                        "neighbours": server.k, "threshold": server.t})
