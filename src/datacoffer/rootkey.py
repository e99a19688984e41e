"""The installation's keys, kept outside the metadata database.

- the **root key** seals secrets in the database (API SecretKeys, the built-in KMS's key
  material): `<data-dir>/keys/root.key` or `DATACOFFER_ROOT_KEY`;
- the **service master key** wraps the data keys of EncryptType 1 coffers:
  `<data-dir>/keys/master.key` or `DATACOFFER_MASTER_KEY`.

Each is 32 random bytes, made at first start in a file of mode 0600 (base64), or given in the
environment variable (base64), which wins. A copy of the database alone therefore reveals no
secret and no plaintext.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: the environment variable of each installation key
ENV_VARS = {"root": "DATACOFFER_ROOT_KEY", "master": "DATACOFFER_MASTER_KEY"}
ENV_VAR = ENV_VARS["root"]
_VERSION = b"\x01"


class SealingKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("an installation key must be 32 bytes")
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
        return "SealingKey(<hidden>)"


def path_of(data_dir: Path, name: str = "root") -> Path:
    return data_dir / "keys" / f"{name}.key"


class KeyFileError(ValueError):
    """A key file or variable that does not hold a key; the text says which, never the key."""


def _decode(text: bytes | str, where: str) -> SealingKey:
    try:
        return SealingKey(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where} does not hold a key (the base64 of 32 bytes): restore it "
                           "from the backup") from None


def load(data_dir: Path, name: str = "root") -> SealingKey | None:
    """An installation key from the environment or its key file, or None when there is
    none; KeyFileError when the one found is malformed."""
    env = os.environ.get(ENV_VARS[name])
    if env:
        return _decode(env.strip(), ENV_VARS[name])
    path = path_of(data_dir, name)
    if path.exists():
        return _decode(path.read_bytes().strip(), str(path))
    return None


def create(data_dir: Path, name: str = "root") -> SealingKey:
    """Make a new key file (mode 0600); if another process just made one, use theirs."""
    path = path_of(data_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = os.urandom(32)
    tmp = path.with_name(f"{name}.key.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, base64.b64encode(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile
    except FileExistsError:
        return SealingKey(base64.b64decode(path.read_bytes()))
    finally:
        os.unlink(tmp)
    return SealingKey(key)
