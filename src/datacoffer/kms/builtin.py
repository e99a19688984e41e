"""The built-in KMS: keys in the metadata store, their material sealed under the root key."""

from __future__ import annotations

import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from datacoffer.kms import KmsError, KmsKey
from datacoffer.kms.table import KeyTable
from datacoffer.meta.db import Database
from datacoffer.rootkey import SealingKey


class BuiltinKms(KeyTable):
    def __init__(self, db: Database, root_key: SealingKey) -> None:
        super().__init__(db)
        self.root_key = root_key

    def create_key(self, app_id: str, region: str) -> KmsKey:
        key_id = str(uuid.uuid4())
        return self.add(key_id, app_id, region,
                        self.root_key.seal(os.urandom(32), f"kms:{key_id}"))

    def _cipher(self, key_id: str) -> AESGCM:
        row = self.enabled_row(key_id)
        return AESGCM(self.root_key.open(row.sealed_material, f"kms:{key_id}"))

    def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._cipher(key_id).encrypt(nonce, plaintext, key_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return self._cipher(key_id).decrypt(wrapped[:12], wrapped[12:], key_id.encode())
        except InvalidTag:
            raise KmsError(f"a data key does not unwrap with key {key_id}") from None
