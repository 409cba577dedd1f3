"""Models at rest on a device, encrypted and authenticated (AES-256-GCM), with key files and
key rotation.

A model file is::

    "FMBENCM1" | version (1 byte) | key id (16 bytes) | nonce (12 bytes)
    AES-256-GCM ciphertext + tag of the payload, the 37 bytes above as associated data

and the payload is a JSON description of the model (sizes, activation, loss, intercept,
dtype) and its flat parameters, or a :class:`fastmb.slicing.CompactModel` file (a slice,
pruned, int8 or fp16). Each save draws a fresh random nonce. A truncated or altered file,
or the wrong key, fails the tag and raises ValueError: never a wrong model.

A key file holds one :class:`ModelKey` (an id and 32 random bytes) as a small JSON
document, written with permissions 0600. :func:`rotate_model_key` re-encrypts a model under
a new key. Keys never appear in reprs, logs or checkpoints.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import struct

import numpy as np

from .. import _validation as V
from ..models import MLP, Linear
from ..slicing.compact import CompactModel
from . import _crypto as C

MAGIC = b"FMBENCM1"
VERSION = 1
HEADER = struct.Struct(">8sB16s12s")
KEY_MAGIC = "fastmb-model-key"
_DTYPES = ("float32", "float64")


class ModelKey:
    """A model-encryption key: ``key_id`` (16 bytes, public: it names the key in a model
    file) and a 32-byte secret.

    Examples
    --------
    >>> from fastmb.secure import ModelKey
    >>> key = ModelKey.generate()
    >>> "secret=<hidden>" in repr(key)
    True
    """

    __slots__ = ("_secret", "created", "key_id")

    def __init__(self, key_id, secret, created=None):
        key_id, secret = bytes(key_id), bytes(secret)
        if len(key_id) != 16 or len(secret) != 32:
            raise ValueError("a model key is a 16-byte id and a 32-byte secret")
        self.key_id, self._secret = key_id, secret
        self.created = created or datetime.datetime.now(datetime.timezone.utc).isoformat()

    @classmethod
    def generate(cls):
        """A new random key (the operating system's generator)."""
        return cls(os.urandom(16), os.urandom(32))

    def __repr__(self):
        return f"ModelKey(id={self.key_id.hex()}, created={self.created}, secret=<hidden>)"

    def __reduce__(self):
        raise TypeError("a ModelKey is a secret and is not pickled: save it with .save()")

    def save(self, path, *, overwrite=False):
        """Write the key file (mode 0600; an existing file only with ``overwrite``)."""
        doc = {"format": KEY_MAGIC, "version": VERSION, "algorithm": "aes-256-gcm",
               "id": self.key_id.hex(), "created": self.created,
               "key": base64.b64encode(self._secret).decode()}
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        fd = os.open(os.fspath(path), flags, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)

    @classmethod
    def load(cls, path):
        """The key in the key file ``path``, every field checked."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a fastmb key file") from e
        want = {"format", "version", "algorithm", "id", "created", "key"}
        if not isinstance(doc, dict) or set(doc) != want or doc["format"] != KEY_MAGIC:
            raise ValueError(f"{path} is not a fastmb key file")
        if doc["version"] != VERSION or doc["algorithm"] != "aes-256-gcm":
            raise ValueError(f"{path}: key file version {doc['version']!r} / algorithm "
                             f"{doc['algorithm']!r} not supported")
        try:
            key_id = bytes.fromhex(doc["id"])
            secret = base64.b64decode(doc["key"], validate=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: the key file's id or key is malformed") from e
        if not isinstance(doc["created"], str):
            raise ValueError(f"{path}: the key file's creation time is malformed")
        return cls(key_id, secret, doc["created"])


def _payload(obj, params):
    if isinstance(obj, CompactModel):
        if params is not None:
            raise TypeError("params must be None for a CompactModel (it holds its weights)")
        return b"C" + obj.to_bytes()
    model = V.check_model(obj)
    p = V.as_params(model, params)
    head = json.dumps({"sizes": list(model.sizes), "activation": model.activation,
                       "loss": model.loss, "fit_intercept": model.fit_intercept,
                       "huber_delta": model.huber_delta, "dtype": p.dtype.name},
                      separators=(",", ":")).encode()
    return b"P" + struct.pack(">I", len(head)) + head + p.tobytes()


def _model_from(h):
    want = {"sizes", "activation", "loss", "fit_intercept", "huber_delta", "dtype"}
    if not isinstance(h, dict) or set(h) != want or h["dtype"] not in _DTYPES:
        raise ValueError("the model file's description is malformed")
    sizes = h["sizes"]
    if not (isinstance(sizes, list) and 2 <= len(sizes) <= 64 and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 1 << 20
            for s in sizes)):
        raise ValueError("the model file's sizes must be 2 to 64 layer widths in [1, 2**20]")
    try:
        kw = dict(loss=h["loss"], fit_intercept=h["fit_intercept"],
                  huber_delta=h["huber_delta"])
        if len(sizes) == 2:
            return Linear(sizes[0], sizes[1], **kw), np.dtype(h["dtype"])
        return MLP(sizes, activation=h["activation"], **kw), np.dtype(h["dtype"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model file describes no valid model: {e}") from None


def encrypt_model(model, params, key):
    """The encrypted file's bytes of ``(model, params)``, or of a CompactModel (then
    ``params`` is None)."""
    if not isinstance(key, ModelKey):
        raise TypeError(f"key must be a ModelKey, got {type(key).__name__}")
    nonce = os.urandom(12)
    header = HEADER.pack(MAGIC, VERSION, key.key_id, nonce)
    return header + C.aead("aes-gcm", key._secret).encrypt(nonce, _payload(model, params),
                                                            header)


def decrypt_model(data, keys):
    """``(model, params)`` (or a CompactModel) from encrypted bytes; ``keys`` is a ModelKey
    or several (a key ring: the file names the one it needs)."""
    ring = [keys] if isinstance(keys, ModelKey) else list(keys)
    if not ring or not all(isinstance(k, ModelKey) for k in ring):
        raise TypeError("keys must be a ModelKey or a sequence of them")
    data = bytes(memoryview(data))
    if len(data) < HEADER.size + 16:
        raise ValueError(f"the encrypted model is truncated ({len(data)} bytes)")
    magic, version, key_id, nonce = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not an encrypted fastmb model (bad magic)")
    if version != VERSION:
        raise ValueError(f"encrypted model version {version}, this fastmb reads {VERSION}")
    key = next((k for k in ring if k.key_id == key_id), None)
    if key is None:
        raise ValueError(f"the model is encrypted under key {key_id.hex()}, which is not "
                         "among the keys given")
    try:
        plain = C.aead("aes-gcm", key._secret).decrypt(nonce, data[HEADER.size:],
                                                        data[:HEADER.size])
    except C.invalid_tag() as e:
        raise ValueError("the encrypted model is altered or truncated (its tag does not "
                         "verify)") from e
    kind, body = plain[:1], plain[1:]
    if kind == b"C":
        return CompactModel.from_bytes(body)
    if kind != b"P" or len(body) < 4:
        raise ValueError("the encrypted model's payload is malformed")
    (n,) = struct.unpack_from(">I", body)
    try:
        head = json.loads(body[4:4 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError("the model file's description is malformed") from e
    model, dtype = _model_from(head)
    raw = body[4 + n:]
    if len(raw) != model.n_params * dtype.itemsize:
        raise ValueError("the model file's parameters do not match its description")
    return model, np.frombuffer(raw, dtype).copy()


def save_encrypted_model(path, model, params, key):
    """Write ``(model, params)`` (or a CompactModel, ``params=None``) encrypted under
    ``key`` to ``path`` (atomically: a partial write never replaces a good file).

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastmb
    >>> from fastmb.secure import ModelKey, load_encrypted_model, save_encrypted_model
    >>> m = fastmb.MLP([4, 8, 3]); key = ModelKey.generate()
    >>> path = os.path.join(tempfile.mkdtemp(), "model.fmbenc")
    >>> save_encrypted_model(path, m, m.init(), key)
    >>> m2, p2 = load_encrypted_model(path, key)
    >>> m2.sizes == m.sizes and bool((p2 == m.init()).all())
    True
    """
    data = encrypt_model(model, params, key)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_encrypted_model(path, keys):
    """:func:`decrypt_model` of the file ``path``."""
    with open(path, "rb") as f:
        return decrypt_model(f.read(), keys)


def rotate_model_key(path, old_keys, new_key):
    """Re-encrypt the model file ``path`` under ``new_key`` (it must open with
    ``old_keys`` first); the file is replaced atomically."""
    obj = load_encrypted_model(path, old_keys)
    if isinstance(obj, CompactModel):
        save_encrypted_model(path, obj, None, new_key)
    else:
        save_encrypted_model(path, obj[0], obj[1], new_key)
