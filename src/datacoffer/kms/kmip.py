"""An external key manager over KMIP (PyKMIP's client): the key material never leaves it.

Data keys are wrapped and unwrapped with the key manager's own Encrypt and Decrypt
operations, AES-256-GCM with a fresh 12-byte nonce and the KeyId as associated data (KMIP 1.4
payloads: the high-level PyKMIP client drops GCM's tag). A revoked or destroyed key fails
there at once. The installation keeps, per key, its owner, region and enabled flag
(`KeyTable`). A PyKMIP client is not thread-safe, so each thread has its own connection,
opened on first use and dropped after any transport failure (a reused connection could
return a stale answer); a failure of a connection opened before, other than a timeout, is
tried once more on a new one (the key manager may have restarted since).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from datacoffer.kms import KmsError, KmsKey
from datacoffer.kms.table import KeyTable
from datacoffer.meta.db import Database

NONCE = 12
TAG = 16


@dataclass(frozen=True)
class KmipSettings:
    host: str
    port: int
    cert: str
    key: str
    ca: str
    timeout: int


def _pykmip() -> Any:
    """The PyKMIP modules, imported on first use (they warn about their own dependencies).
    PyKMIP's own log is silenced: each failure reaches our log once, as the KmsError's
    detail under the request's TraceId (and an admin command's one error line)."""
    logging.getLogger("kmip").setLevel(logging.CRITICAL + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from kmip import enums
        from kmip.core import attributes
        from kmip.core.messages import payloads
        from kmip.pie import client, exceptions
    return enums, attributes, payloads, client, exceptions


def _check_host_name(proxy: Any) -> None:
    """PyKMIP's client checks the key manager's certificate chain but not the name in it:
    wrap its socket the standard way instead (TLS 1.2 or newer, chain and host name checked
    against `kmip_ca`)."""

    def create_socket(sock: socket.socket) -> None:
        context = ssl.create_default_context(cafile=proxy.ca_certs)
        context.load_cert_chain(proxy.certfile, proxy.keyfile)
        proxy.socket = context.wrap_socket(sock, server_hostname=proxy.host)
        proxy.socket.settimeout(proxy.timeout)

    proxy._create_socket = create_socket


class KmipKms(KeyTable):
    def __init__(self, db: Database, settings: KmipSettings, config_file: str) -> None:
        super().__init__(db)
        self.settings = settings
        #: an empty client configuration, so PyKMIP reads no /etc/pykmip or ~/.pykmip file
        self.config_file = config_file
        self._local = threading.local()
        self._modules = _pykmip()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            enums, _, _, pie_client, _ = self._modules
            s = self.settings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                client = pie_client.ProxyKmipClient(
                    hostname=s.host, port=s.port, cert=s.cert, key=s.key, ca=s.ca,
                    config_file=self.config_file,
                    kmip_version=enums.KMIPVersion.KMIP_1_4)
                client.proxy.timeout = s.timeout
                _check_host_name(client.proxy)
                client.open()
            self._local.client = client
        return client

    def _call(self, what: str, operation: Any) -> Any:
        """Run `operation(client)`; a refusal of the key manager or a failed connection
        becomes KmsError (the connection is dropped after the latter)."""
        exceptions = self._modules[4]
        reused = getattr(self._local, "client", None) is not None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return operation(self._client())
        except exceptions.KmipOperationFailure as exc:
            raise KmsError(f"the KMIP server refused {what}: {exc.reason}: {exc.message}") \
                from None
        except Exception as exc:  # transport: EOF, TLS, timeout, refused connection
            self._drop()
            if reused and not isinstance(exc, TimeoutError):
                # a connection left from before the key manager restarted: once more, on a
                # new one (a timeout is not retried, so a hung server costs one timeout)
                return self._call(what, operation)
            raise KmsError(f"the KMIP server at {self.settings.host}:{self.settings.port} "
                           f"failed {what}: {type(exc).__name__}: {exc}") from None

    def _drop(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close too
                client.close()

    def create_key(self, app_id: str, region: str) -> KmsKey:
        enums = self._modules[0]

        def create(client: Any) -> str:
            uid = client.create(enums.CryptographicAlgorithm.AES, 256)
            client.activate(uid)
            return str(uid)

        return self.add(self._call("to create a key", create), app_id, region)

    def _params(self) -> Any:
        enums, attributes = self._modules[0], self._modules[1]
        return attributes.CryptographicParameters(
            cryptographic_algorithm=enums.CryptographicAlgorithm.AES,
            block_cipher_mode=enums.BlockCipherMode.GCM, tag_length=TAG)

    def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        self.enabled_row(key_id)
        enums, payloads, nonce = self._modules[0], self._modules[2], os.urandom(NONCE)

        def encrypt(client: Any) -> bytes:
            answer = client.proxy.send_request_payload(
                enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(
                    unique_identifier=key_id, data=plaintext,
                    cryptographic_parameters=self._params(), iv_counter_nonce=nonce,
                    auth_additional_data=key_id.encode()))
            if not answer.auth_tag or len(answer.auth_tag) != TAG:
                raise KmsError("the KMIP server returned no GCM tag (it needs KMIP 1.4)")
            return bytes(nonce + answer.data + answer.auth_tag)

        return self._call(f"to wrap a data key with {key_id}", encrypt)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self.enabled_row(key_id)
        enums, payloads = self._modules[0], self._modules[2]
        nonce, sealed, tag = wrapped[:NONCE], wrapped[NONCE:-TAG], wrapped[-TAG:]

        def decrypt(client: Any) -> bytes:
            answer = client.proxy.send_request_payload(
                enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
                    unique_identifier=key_id, data=sealed,
                    cryptographic_parameters=self._params(), iv_counter_nonce=nonce,
                    auth_additional_data=key_id.encode(), auth_tag=tag))
            return bytes(answer.data)

        return self._call(f"to unwrap a data key with {key_id}", decrypt)
