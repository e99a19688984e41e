"""Which key protects a coffer's data, and the checks before it is used.

EncryptType 1 wraps each blob's data key with the installation's service master key;
EncryptType 2 with the owning account's customer key in the KMS, which needs the account's
service role grant (else AssumeRoleFailed) and a key of that account, in the coffer's
KeyRegion, enabled (else KMSFailed). The checks run before a write takes its key and before a
read sends its first byte, so a refusal is an error answer, never a half-written object or a
cut-off download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from datacoffer.core.coffers import Coffer
from datacoffer.core.roles import Roles
from datacoffer.crypto.envelope import (
    KEY_BYTES,
    WRAP_KMS,
    WRAP_MASTER,
    DecryptError,
    Header,
    Sealer,
)
from datacoffer.errors import CdcsError
from datacoffer.kms import Kms, KmsError
from datacoffer.rootkey import SealingKey

log = logging.getLogger("datacoffer.keyring")

#: Unwraps the data key of a stored blob's header.
KeyOpener = Callable[[Header], bytes]
_MASTER_CONTEXT = "data-key"


class Keyring:
    def __init__(self, master: SealingKey | None, kms: Kms, roles: Roles) -> None:
        self.master = master
        self.kms = kms
        self.roles = roles

    def check_customer_key(self, app_id: str, key_id: str, key_region: str,
                           resource: str) -> None:
        """AssumeRoleFailed or KMSFailed unless `app_id` may use `key_id` in `key_region`."""
        if not self.roles.granted(app_id):
            raise CdcsError("AssumeRoleFailed",
                            f"Account {app_id} has not granted the service role, so its KMS "
                            "keys cannot be used; ask the operator (`admin role grant`).",
                            resource=resource)
        try:
            key = self.kms.describe(key_id)
        except KmsError as exc:
            raise self._failed(resource, f"The KMS key {key_id} cannot be used.", exc) from None
        if key.app_id != app_id:  # someone else's key is as good as none: say nothing more
            raise self._failed(resource, f"The KMS key {key_id} cannot be used.",
                               f"key {key_id} belongs to account {key.app_id}")
        if key.region != key_region:
            raise self._failed(resource, f"The KMS key {key_id} is not in region {key_region}.",
                               f"key {key_id} is in {key.region}")
        if not key.enabled:
            raise self._failed(resource, f"The KMS key {key_id} is disabled.",
                               f"key {key_id} is disabled")

    @staticmethod
    def _failed(resource: str, message: str, detail: object) -> CdcsError:
        return CdcsError("KMSFailed", message, resource=resource, detail=str(detail))

    def check(self, coffer: Coffer) -> None:
        """The checks of a coffer's key, for operations that will need it."""
        if coffer.encrypt_type == 2:
            self.check_customer_key(coffer.app_id, coffer.key_id, coffer.key_region,
                                    coffer.name)
        elif coffer.encrypt_type == 1 and self.master is None:
            raise CdcsError("InternalError", detail="the service master key is not loaded")

    def sealer(self, coffer: Coffer) -> Sealer | None:
        """A fresh data key, wrapped for this coffer, ready to encrypt one blob (None for
        EncryptType 0)."""
        if coffer.encrypt_type == 0:
            return None
        self.check(coffer)
        data_key = os.urandom(KEY_BYTES)
        if coffer.encrypt_type == 1:
            assert self.master is not None
            header = Header(WRAP_MASTER, "", self.master.seal(data_key, _MASTER_CONTEXT))
        else:
            try:
                wrapped = self.kms.wrap(coffer.key_id, data_key)
            except KmsError as exc:
                raise self._failed(coffer.name, f"The KMS could not wrap a data key with "
                                   f"{coffer.key_id}.", exc) from None
            header = Header(WRAP_KMS, coffer.key_id, wrapped)
        return Sealer(data_key, header)

    def opener(self, coffer: Coffer) -> KeyOpener | None:
        """What unwraps the data keys of this coffer's blobs (None for EncryptType 0)."""
        if coffer.encrypt_type == 0:
            return None
        self.check(coffer)
        # one answer's blobs are opened once each: the first by `Objects.preflight` before a
        # streamed answer starts, again by the read itself (a KMIP round trip each, else)
        opened: dict[Header, bytes] = {}

        def open_key(header: Header) -> bytes:
            if header not in opened:
                opened[header] = unwrap(header)
            return opened[header]

        def unwrap(header: Header) -> bytes:
            if header.wrap_kind == WRAP_MASTER:
                assert self.master is not None
                try:
                    return self.master.open(header.wrapped_key, _MASTER_CONTEXT)
                except ValueError:  # (the master key is checked at start: the blob is bad)
                    raise DecryptError("its wrapped data key does not open") from None
            if header.key_id != coffer.key_id:  # (a coffer's key never changes)
                raise DecryptError("it names another KMS key than its coffer's")
            try:
                return self.kms.unwrap(header.key_id, header.wrapped_key)
            except KmsError as exc:
                # a refusal (a revoked key, an outage) or a damaged wrapped key: the KMS does
                # not say which; a reader that finds another copy that unwraps knows
                raise self._failed(coffer.name, f"The KMS could not unwrap a data key with "
                                   f"{header.key_id}.", exc) from None

        return open_key
