"""Key management: the narrow interface the server needs from a KMS, whichever it is.

A KMS holds customer master keys (one account's, in one region) and wraps and unwraps data
keys with them; the key material never leaves it. `builtin.BuiltinKms` keeps keys in the
metadata store (sealed under the installation's root key); `kmip.KmipKms` uses an external
key manager over KMIP. Either way a key's owner, region and enabled flag are rows of
`table.KeyTable`, so `admin kms disable-key` works the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class KmsError(Exception):
    """The KMS refused or failed; the text says why, for the server log only."""


@dataclass(frozen=True)
class KmsKey:
    key_id: str
    app_id: str
    region: str
    enabled: bool


class Kms(Protocol):
    def create_key(self, app_id: str, region: str) -> KmsKey: ...

    def describe(self, key_id: str) -> KmsKey:
        """The key, or KmsError when there is none."""
        ...

    def set_enabled(self, key_id: str, enabled: bool) -> KmsKey: ...

    def list_keys(self, app_id: str | None = None) -> list[KmsKey]: ...

    def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        """Encrypt a data key under the key (KmsError if it is disabled or missing)."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...
