"""The cryptographic primitives fastmb uses, all from the ``cryptography`` package (the
``secure`` extra), imported on first use so that ``import fastmb.secure`` stays light.

fastmb writes no cipher of its own: key agreement is X25519, key derivation HKDF-SHA256,
keystreams AES-256-CTR or ChaCha20, authenticated encryption AES-256-GCM or
ChaCha20-Poly1305.
"""

from __future__ import annotations

CIPHERS = ("aes-ctr", "chacha20")   # keystreams (masks)
AEADS = ("aes-gcm", "chacha20-poly1305")  # authenticated encryption (shares, envelopes)
KEY_BYTES = 32


_MODULES = []


def require():
    """The ``cryptography`` modules fastmb uses, or an ImportError that says what to install
    (imported once; later calls cost a list lookup)."""
    if _MODULES:
        return _MODULES[0]
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import x25519
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError as e:  # pragma: no cover - the test extra installs it
        raise ImportError("fastmb.secure needs the cryptography package: pip install "
                          "'fastmb[secure]'") from e
    _MODULES.append((InvalidTag, hashes, x25519, Cipher, algorithms, modes, AESGCM,
                     ChaCha20Poly1305, HKDF))
    return _MODULES[0]


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def new_private_key():
    """A fresh X25519 private key (the OS's random generator, through cryptography)."""
    return require()[2].X25519PrivateKey.generate()


def private_key_from_bytes(raw):
    return require()[2].X25519PrivateKey.from_private_bytes(bytes(raw))


def private_bytes(key):
    """The 32 raw bytes of an X25519 private key (for secret sharing only)."""
    from cryptography.hazmat.primitives import serialization as S

    return key.private_bytes(S.Encoding.Raw, S.PrivateFormat.Raw, S.NoEncryption())


def public_bytes(key):
    """The 32 raw bytes of the public key of X25519 private key ``key``."""
    from cryptography.hazmat.primitives import serialization as S

    return key.public_key().public_bytes(S.Encoding.Raw, S.PublicFormat.Raw)


def hkdf(secret, info, length=KEY_BYTES, salt=None):
    """HKDF-SHA256 of ``secret`` bound to ``info``."""
    _, hashes, _, _, _, _, _, _, HKDF = require()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def agree(private_key, peer_public, info):
    """A 32-byte key both ends derive: HKDF-SHA256 of the X25519 shared secret, bound to
    ``info``. A peer's public key that is not 32 bytes, or a low-order point (the shared
    secret all zeros), raises ValueError."""
    x25519 = require()[2]
    peer_public = bytes(peer_public)
    if len(peer_public) != 32:
        raise ValueError(f"a public key must be 32 bytes, got {len(peer_public)}")
    shared = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
    return hkdf(shared, info)


def keystream(key, cipher="aes-ctr", nonce=None):
    """An encryptor whose ``update_into(zeros, buf)`` writes the next keystream bytes of
    ``key``: AES-256 in counter mode from counter block ``nonce`` (16 bytes, default 0), or
    ChaCha20 with ``nonce`` (16 bytes: the 32-bit block counter, little-endian, then the
    96-bit nonce; default 0). A key must expand one stream only."""
    _, _, _, Cipher, algorithms, modes, _, _, _ = require()
    nonce = bytes(16) if nonce is None else bytes(nonce)
    if cipher == "aes-ctr":
        return Cipher(algorithms.AES(bytes(key)), modes.CTR(nonce)).encryptor()
    return Cipher(algorithms.ChaCha20(bytes(key), nonce), None).encryptor()


def aead(name, key):
    """The AEAD object (``encrypt(nonce, data, ad)`` / ``decrypt``) for ``name``."""
    _, _, _, _, _, _, AESGCM, ChaCha20Poly1305, _ = require()
    return AESGCM(bytes(key)) if name == "aes-gcm" else ChaCha20Poly1305(bytes(key))


def invalid_tag():
    """The exception cryptography raises when an AEAD tag does not verify."""
    return require()[0]


def new_signing_key():
    """A fresh Ed25519 private key: a party's long-term identity for signatures."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


def signing_public(key):
    """The 32 raw bytes of the public half of Ed25519 key ``key``."""
    from cryptography.hazmat.primitives import serialization as S

    return key.public_key().public_bytes(S.Encoding.Raw, S.PublicFormat.Raw)


def verify(public, signature, message):
    """Whether ``signature`` is Ed25519 ``public``'s signature of ``message`` (False for a
    malformed key or signature, never an exception)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature),
                                                                        message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
