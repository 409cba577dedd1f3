"""Authenticated envelopes for anything two parties exchange (updates, compressed updates,
split-learning activations): X25519 + HKDF-SHA256 + AES-256-GCM or ChaCha20-Poly1305.

Each party has an :class:`Identity` (an X25519 key pair). Two parties that know each
other's public key open a :class:`Channel`; each direction has its own key (HKDF of the
shared secret, bound to the sender, the receiver, the AEAD and the channel's context) and
its own sequence numbers. An envelope is::

    header (38 bytes): "FMBE", version, AEAD, round, sender, receiver, sequence number
    ciphertext and 16-byte tag of the payload, the header as associated data

The nonce is the sequence number: a key seals each number once, so a nonce never repeats
under a key (a channel refuses to seal past ``2**64 - 1`` envelopes). The receiver accepts
exactly the next sequence number of its peer for the round it expects: a replayed,
reordered, truncated, altered, misaddressed or other-round envelope raises
:class:`EnvelopeError` and changes nothing.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from .. import _validation as V
from . import _crypto as C

MAGIC = b"FMBE"
VERSION = 1
HEADER = struct.Struct(">4sBBQQQQ")
TAG_BYTES = 16
_AEAD_CODE = {"aes-gcm": 1, "chacha20-poly1305": 2}
_INFO = b"fastmb envelope v1"
MAX_SEQ = (1 << 64) - 1
_ID_MAX = (1 << 64) - 1


class EnvelopeError(ValueError):
    """An envelope that must not be opened: altered, truncated, replayed, reordered, for
    another receiver or round, or from another sender."""


class Identity:
    """A party's X25519 key pair: ``public`` (32 bytes) is what others need.

    The private key never appears in a repr, and an Identity refuses to be pickled.

    Examples
    --------
    >>> from fastmb.secure import Identity
    >>> alice = Identity()
    >>> len(alice.public), "private" in repr(alice)
    (32, False)
    """

    __slots__ = ("_key", "public")

    def __init__(self, private_bytes=None):
        self._key = (C.new_private_key() if private_bytes is None
                     else C.private_key_from_bytes(private_bytes))
        self.public = C.public_bytes(self._key)

    def __repr__(self):
        return f"Identity(public={self.public.hex()[:16]}...)"

    def __reduce__(self):
        raise TypeError("an Identity holds a private key and is not pickled")


def _check_id(name, value):
    return V.check_number(name, value, low=0, high=_ID_MAX, integer=True)


class Channel:
    """One party's end of an authenticated channel with a peer.

    Parameters
    ----------
    identity : Identity
        This party's key pair.
    peer_public : bytes
        The peer's 32-byte public key.
    own_id, peer_id : int
        The two parties' ids (bound into every envelope).
    aead : {"aes-gcm", "chacha20-poly1305"}
    context : bytes
        Binds the keys to an application or session (both ends pass the same).

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.secure import Channel, Identity
    >>> client, server = Identity(), Identity()
    >>> up = Channel(client, server.public, own_id=7, peer_id=0)
    >>> down = Channel(server, client.public, own_id=0, peer_id=7)
    >>> env = up.seal_array(np.arange(3.0), round=5)
    >>> down.open_array(env, round=5).tolist()
    [0.0, 1.0, 2.0]
    >>> down.open_array(env, round=5)
    Traceback (most recent call last):
    ...
    fastmb.secure.envelope.EnvelopeError: envelope 0 from 7 replayed (expected sequence number 1)
    """

    def __init__(self, identity, peer_public, own_id, peer_id, *, aead="aes-gcm", context=b""):
        if not isinstance(identity, Identity):
            raise TypeError(f"identity must be an Identity, got {type(identity).__name__}")
        self.aead = C.check_choice("aead", aead, C.AEADS)
        self.own_id = _check_id("own_id", own_id)
        self.peer_id = _check_id("peer_id", peer_id)
        if self.own_id == self.peer_id:
            raise ValueError("own_id and peer_id must differ")
        if not isinstance(context, (bytes, bytearray)):
            raise TypeError("context must be bytes")
        code = bytes([_AEAD_CODE[aead]])
        ctx = struct.pack(">Q", len(context)) + bytes(context)

        def direction(sender, receiver):
            return _INFO + code + struct.pack(">QQ", sender, receiver) + ctx

        send_key = C.agree(identity._key, peer_public, direction(self.own_id, self.peer_id))
        recv_key = C.agree(identity._key, peer_public, direction(self.peer_id, self.own_id))
        self._send = C.aead(aead, send_key)
        self._recv = C.aead(aead, recv_key)
        self._code = _AEAD_CODE[aead]
        self.sent = 0        # sequence number of the next envelope sealed
        self.received = 0    # sequence number expected next from the peer

    def __repr__(self):
        return (f"Channel({self.own_id} <-> {self.peer_id}, {self.aead}, sent={self.sent}, "
                f"received={self.received}, keys=<hidden>)")

    def __reduce__(self):
        raise TypeError("a Channel holds keys and is not pickled")

    def seal(self, payload, round):
        """The envelope of ``payload`` (bytes-like) for round ``round``: a bytearray, the
        header then the ciphertext, written in place (no copy of the payload)."""
        round = _check_id("round", round)
        if self.sent >= MAX_SEQ:
            raise EnvelopeError("this channel has sealed 2**64 - 1 envelopes: open a new one")
        data = memoryview(payload).cast("B")
        out = bytearray(HEADER.size + data.nbytes + TAG_BYTES)
        HEADER.pack_into(out, 0, MAGIC, VERSION, self._code, round, self.own_id, self.peer_id,
                         self.sent)
        header = bytes(out[:HEADER.size])
        if hasattr(self._send, "encrypt_into"):   # cryptography >= 45: no temporary copy
            self._send.encrypt_into(_nonce(self.sent), data, header,
                                    memoryview(out)[HEADER.size:])
        else:  # pragma: no cover - older cryptography
            out[HEADER.size:] = self._send.encrypt(_nonce(self.sent), bytes(data), header)
        self.sent += 1
        return out

    def open(self, envelope, round):
        """The payload of ``envelope`` (bytes-like), checked: this channel's peer to this
        party, round ``round``, the next sequence number, unaltered."""
        round = _check_id("round", round)
        env = memoryview(envelope).cast("B")
        if env.nbytes < HEADER.size + TAG_BYTES:
            raise EnvelopeError(f"envelope truncated: {env.nbytes} bytes, at least "
                                f"{HEADER.size + TAG_BYTES} needed")
        header = bytes(env[:HEADER.size])
        magic, version, code, r, sender, receiver, seq = HEADER.unpack(header)
        if magic != MAGIC:
            raise EnvelopeError("not a fastmb envelope (bad magic)")
        if version != VERSION:
            raise EnvelopeError(f"envelope version {version}, this fastmb reads {VERSION}")
        if code != self._code:
            raise EnvelopeError("envelope sealed with another AEAD")
        if receiver != self.own_id:
            raise EnvelopeError(f"envelope addressed to {receiver}, not to {self.own_id}")
        if sender != self.peer_id:
            raise EnvelopeError(f"envelope from {sender}, not from {self.peer_id}")
        if r != round:
            raise EnvelopeError(f"envelope of round {r}, round {round} expected")
        if seq != self.received:
            what = "replayed" if seq < self.received else "out of order"
            raise EnvelopeError(f"envelope {seq} from {sender} {what} (expected sequence "
                                f"number {self.received})")
        try:
            payload = self._recv.decrypt(_nonce(seq), env[HEADER.size:], header)
        except C.invalid_tag() as e:
            raise EnvelopeError("envelope altered or truncated: its tag does not "
                                "verify") from e
        self.received += 1
        return payload

    def seal_array(self, a, round):
        """:meth:`seal` of an array (``.npy`` bytes: dtype and shape travel with it)."""
        a = np.asarray(a)
        if a.dtype.hasobject:
            raise TypeError("an envelope carries numeric arrays only")
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return self.seal(buf.getbuffer(), round)

    def open_array(self, envelope, round):
        """The array of :meth:`seal_array`'s envelope."""
        return np.load(io.BytesIO(self.open(envelope, round)), allow_pickle=False)


def _nonce(seq):
    return struct.pack(">IQ", 0, seq)
