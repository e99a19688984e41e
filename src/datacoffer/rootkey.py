"""The installation's root key: it seals secrets (API SecretKeys, later KMS key material).

The key lives outside the metadata database: in `<data-dir>/keys/root.key` (mode 0600, created
at first start) or, when set, in `DATACOFFER_ROOT_KEY` (base64 of 32 bytes). A copy of the
database alone therefore reveals no secret.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV_VAR = "DATACOFFER_ROOT_KEY"
_VERSION = b"\x01"


class RootKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the root key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """Encrypt `plaintext`, bound to `context` (e.g. the SecretId it belongs to)."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown sealed-secret format")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], context.encode())
        except InvalidTag:
            raise ValueError("sealed secret does not match the root key") from None

    def __repr__(self) -> str:
        return "RootKey(<hidden>)"


def load(data_dir: Path) -> RootKey | None:
    """The root key from the environment or the key file, or None when there is none."""
    env = os.environ.get(ENV_VAR)
    if env:
        return RootKey(base64.b64decode(env))
    path = data_dir / "keys" / "root.key"
    if path.exists():
        return RootKey(base64.b64decode(path.read_bytes()))
    return None


def create(data_dir: Path) -> RootKey:
    """Make a new root key file (mode 0600); if another process just made one, use theirs."""
    path = data_dir / "keys" / "root.key"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = os.urandom(32)
    tmp = path.with_name(f"root.key.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, base64.b64encode(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile
    except FileExistsError:
        return RootKey(base64.b64decode(path.read_bytes()))
    finally:
        os.unlink(tmp)
    return RootKey(key)
