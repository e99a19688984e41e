"""PutCofferPolicy, GetCofferPolicy and DeleteCofferPolicy: the owner's root only.

A write holds the coffer's policy lock from before its body is read until it is stored, so
a concurrent policy write on the same coffer is refused with AlreadyLock instead of one of
the two being silently lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.responses import Response

from datacoffer.core.locks import Held
from datacoffer.core.policies import RECORD
from datacoffer.core.policy import MAX_DOCUMENT
from datacoffer.errors import CdcsError
from datacoffer.http.body import read_limited
from datacoffer.http.call import Call

#: What GetCofferPolicy answers for a coffer without a policy (api.md, byte for byte).
EMPTY = '{"Statement": [], "version": "2.0"}'


@asynccontextmanager
async def _policy_lock(call: Call) -> AsyncIterator[Held]:
    coffer = await call.coffer()
    locks = call.inst.policies.locks
    held = await anyio.to_thread.run_sync(locks.acquire, coffer, RECORD)
    try:
        yield held
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(locks.release, held)


async def put_policy(call: Call) -> Response:
    async with _policy_lock(call) as held:
        too_long = CdcsError("PolicyFormatCheckFailed",
                             f"The policy is not valid: it is over {MAX_DOCUMENT} bytes "
                             "(20 KiB).", resource=held.coffer.name)
        raw = await read_limited(call, MAX_DOCUMENT, too_long=too_long)
        policies = call.inst.policies
        # (parsing 20 KiB of JSON takes milliseconds: not on the event loop)
        parsed = await anyio.to_thread.run_sync(policies.parse, held.coffer, raw)
        await anyio.to_thread.run_sync(policies.put, held, parsed)
    return Response(b"")


async def get_policy(call: Call) -> Response:
    coffer = await call.coffer()
    # (the policy was read with the coffer)
    return Response(coffer.policy or EMPTY, media_type="application/json")


async def delete_policy(call: Call) -> Response:
    async with _policy_lock(call) as held:
        await anyio.to_thread.run_sync(call.inst.policies.delete, held)
    return Response(b"")
