"""Who sent a request: verify its q-sign signature (by a key or temporary credentials) and
the whitelist."""

from __future__ import annotations

import time

import anyio
from starlette.requests import Request

from datacoffer import signing
from datacoffer.core.identities import Identities, Identity
from datacoffer.core.tokens import TokenRefused, Tokens
from datacoffer.errors import CdcsError
from datacoffer.http.router import Endpoint

TOKEN_HEADER = "x-cdcs-security-token"


async def authenticate(identities: Identities, tokens: Tokens, request: Request,
                       endpoint: Endpoint, path: str, query: list[tuple[str, str]],
                       skew: int) -> Identity:
    """The verified identity of the request (a key's, or temporary credentials' with their
    inline policy), or AuthFailed / ServiceNotOpen."""
    resource = endpoint.resource

    def fail(message: str, detail: str) -> CdcsError:
        return CdcsError("AuthFailed", message, resource=resource, detail=detail)

    try:
        header = request.headers.get("authorization")
        sig = (signing.parse_authorization(header) if header
               else signing.parse_presigned(query))
    except signing.SignatureError as exc:
        raise fail(f"The signature is malformed: {exc}.", str(exc)) from None
    if sig is None:
        raise fail("The request is not signed: there is no anonymous access.", "unsigned")
    token = request.headers.get(TOKEN_HEADER) or next(
        (v for n, v in query if n.lower() == TOKEN_HEADER), None)
    if token is not None:
        try:
            key = await anyio.to_thread.run_sync(tokens.lookup, sig.secret_id, token)
        except TokenRefused as exc:
            raise fail("The temporary credentials are unknown, expired or revoked, or the "
                       "token is not theirs.", str(exc)) from None
    else:
        found = await anyio.to_thread.run_sync(identities.lookup_key, sig.secret_id)
        if found is None or not found.enabled:
            raise fail("The SecretId is unknown or its key is disabled.",
                       f"key {sig.secret_id}: {'unknown' if found is None else 'disabled'}")
        key = found
    headers = {name.decode("latin-1").lower(): value.decode("utf-8", "surrogateescape")
               for name, value in request.scope["headers"]}
    try:
        signing.verify(sig, key.secret_key, request.method, path, query, headers,
                       now=time.time(), skew=skew)
    except signing.SignatureError as exc:
        hint = ("check the client's clock" if "window" in str(exc)
                else "check the SecretKey and what was signed")
        raise fail(f"The signature does not verify ({exc}); {hint}.",
                   f"key {sig.secret_id}: {exc}") from None
    identity = key.identity
    if not identity.whitelisted:
        raise CdcsError("ServiceNotOpen",
                        f"The service is not open for the account with AppID {identity.app_id}; "
                        "ask the operator to add it to the whitelist.", resource=resource)
    return identity
