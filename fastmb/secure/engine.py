"""Secure aggregation in the simulation's round (``fastmb.Simulation(secure=...)``).

The round's phases (:mod:`fastmb.federation.rounds`) with secure aggregation:

* select: the sampled clients run the protocol's key stages (advertise, share keys) as
  :class:`~fastmb.secure.secagg.SecAggClient` objects here, each deriving its own masks
  (:class:`~fastmb.secure.secagg.MaskPlan`); clients that drop during setup leave now;
* train, then transform: :class:`SecureMask`, the last transform, runs where the shard
  trained (in this process or on a Dask worker): each client's update is quantized and
  masked there; a client whose update is not finite sends nothing (it drops before
  masking, and the protocol removes its pairwise masks);
* aggregate: each shard's masked vectors are summed modulo ``2**bits`` where they are
  (:func:`masked_sum`) and the partial sums merged in a tree (:func:`merge_masked`), the
  exact integers whatever the order;
* :meth:`SecureRound.finish`: the survivors answer the unmasking request (some may not),
  the server removes the masks and dequantizes the mean update.
"""

from __future__ import annotations

import numpy as np

from . import secagg as S

_KEY_MIX = 0x9E3779B97F4A7C15


class MaskedShard:
    """A shard's masked updates: ``Y`` (k, P + 1) integers, the clients' ``ids`` and
    ``sent`` (False: the client sent nothing). Sliced by rows like an array."""

    __slots__ = ("Y", "ids", "sent")

    def __init__(self, Y, ids, sent):
        self.Y, self.ids, self.sent = Y, ids, sent

    def __getitem__(self, rows):
        return MaskedShard(self.Y[rows], self.ids[rows], self.sent[rows])

    def __len__(self):
        return self.Y.shape[0]


class SecureMask:
    """The masking transform: ``(updates (k, P), ids, round seed)`` -> :class:`MaskedShard`.

    It holds each client's :class:`~fastmb.secure.secagg.MaskPlan` (in a simulation the
    clients' secrets travel with their training task; a real device keeps its own)."""

    def __init__(self, quantizer, plans, weights):
        self.quantizer, self.plans, self.weights = quantizer, plans, weights

    def __repr__(self):
        return f"SecureMask({self.quantizer!r}, clients={len(self.plans)})"

    def __call__(self, D, ids, seed):
        q = self.quantizer
        Y = np.zeros((D.shape[0], D.shape[1] + 1), q.dtype)
        sent = np.isfinite(D).all(axis=1)
        for i, cid in enumerate(ids.tolist()):
            if not sent[i]:
                continue
            key = (int(seed) ^ (cid * _KEY_MIX)) % (1 << 64)
            q.quantize(D[i], self.weights[cid], key, out=Y[i])
            S.mask_update(self.plans[cid], Y[i])
        return MaskedShard(Y, np.asarray(ids, np.int64), sent)


def masked_sum(shard):
    """A shard's partial sum: ``(sum modulo 2**bits of the sent rows, their ids)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.secure.engine import MaskedShard, masked_sum, merge_masked
    >>> Y = np.array([[2**32 - 1, 5], [1, 7], [9, 9]], np.uint32)
    >>> shard = MaskedShard(Y, np.array([4, 8, 9]), np.array([True, True, False]))
    >>> total, ids = merge_masked(masked_sum(shard[:1]), masked_sum(shard[1:]))
    >>> total.tolist(), ids.tolist()        # wraps modulo 2**32; client 9 sent nothing
    ([0, 12], [4, 8])
    """
    Y = shard.Y[shard.sent]
    return Y.sum(axis=0, dtype=shard.Y.dtype), shard.ids[shard.sent]


def merge_masked(a, b):
    """Two partial sums added (modulo ``2**bits``: the integer type wraps)."""
    return a[0] + b[0], np.concatenate([a[1], b[1]])


class SecureRound:
    """The server's side of one simulated round: the key stages for the ``sampled``
    clients (minus ``setup_dropped``, who drop before sending their shares), the masking
    transform for the others, and :meth:`finish`.

    ``unmask_dropped`` clients do not answer the unmasking request. ``weights[cid]`` is a
    client's integer weight (its example count)."""

    def __init__(self, config, sampled, weights, *, round_id, seed, setup_dropped=(),
                 unmask_dropped=()):
        self.config = config
        self.server = S.SecAggServer(config, sampled, round_id, seed)
        self.unmask_dropped = {int(c) for c in unmask_dropped}
        setup_dropped = {int(c) for c in setup_dropped}
        n = self.server.n
        sign, trusted = S.signing_identities(sampled) if config.signed else ({}, None)
        self.clients = {int(c): S.SecAggClient(int(c), config, round_id,
                                               signing_key=sign.get(int(c)), trusted=trusted)
                        for c in sampled}
        adverts = [c.advertise() for c in self.clients.values()]
        rosters = self.server.rosters(adverts)
        shares = S.collect_stage(self.clients, lambda c: c.share_keys(rosters[c.cid], n),
                                 setup_dropped)
        inbox = self.server.route(shares)
        # a client with fewer than t neighbours' shares cannot mask safely: it drops here
        plans = S.collect_stage({c: self.clients[c] for c in sorted(self.server.shared)},
                                lambda c: c.receive_shares(inbox.get(c.cid, {})))
        w = {c: int(weights[c]) for c in plans}
        self.transform = SecureMask(config.quantizer, plans, w)
        self.stats, self.error = {}, None
        # the protocol's own messages (ids as 8 bytes; the masked vectors are the
        # simulation's to count): keys up and the neighbours' keys down, shares both ways
        key_bytes = {k.cid: 8 + len(k.c_pk) + len(k.s_pk) + len(k.signature) for k in adverts}
        share_bytes = sum(16 + len(ct) for box in shares.values() for ct in box.values())
        self.traffic = {"up": sum(key_bytes.values()) + share_bytes,
                        "down": sum(key_bytes[v] for r in rosters.values() for v in r)
                        + share_bytes}

    @property
    def shared(self):
        """The clients that completed the key stages and can mask (the ones that train)."""
        return np.array(sorted(self.transform.plans), np.int64)

    def finish(self, total, sent, ids):
        """``(mean update float64 or None, used ids, rejected ids)`` from the round's
        modular sum ``total`` of the masked inputs of ``sent``, of the trained ``ids``
        (those that trained and sent nothing are rejected: their update was not finite)."""
        sent = np.sort(np.asarray(sent, np.int64))
        rejected = np.setdiff1d(ids, sent)
        if sent.size == 0:
            return None, sent, rejected
        self.server.add_masked_sum(total, sent)
        requests = self.server.unmask_requests()
        proofs = None
        if self.config.signed:   # every asked client confirms the list of senders
            senders = sorted(requests)
            proofs = S.collect_stage({c: self.clients[c] for c in requests},
                                     lambda client: client.confirm(senders),
                                     self.unmask_dropped)
            self.traffic["up"] += sum(8 + len(sig) for sig in proofs.values())
            self.traffic["down"] += len(requests) * (8 * len(senders) + sum(
                8 + len(sig) for sig in proofs.values()))
        responses = S.collect_unmask(self.clients, requests, self.unmask_dropped, proofs)
        self.traffic["down"] += sum(8 * (1 + len(a) + len(b)) for a, b in requests.values())
        self.traffic["up"] += sum(8 + 9 + len(share) for r in responses.values()
                                  for _, share in r.values())
        self.stats = {"shared": len(self.server.shared), "masked": int(sent.size),
                      "responded": len(responses), "neighbours": self.server.k,
                      "threshold": self.server.t}
        try:
            exact = self.server.finish(responses)
        except S.SecAggError as e:
            # Too few shares: the round fails as a whole (no update), nothing revealed.
            self.error = str(e)
            return None, sent[:0], rejected
        return self.config.quantizer.dequantize(exact), sent, rejected
